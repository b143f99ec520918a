//! Registry hosts in containerd's `hosts.toml` layout, so `/etc/containerd/certs.d` works as it is:
//! `<config_path>/<registry host>/hosts.toml`, else `<config_path>/_default/hosts.toml`, else the registry
//! itself over https. Mirrors (`[host."…"]`, in file order) are tried first, then `server`.
//!
//! ```toml
//! server = "https://registry-1.docker.io"
//! [host."http://127.0.0.1:5000"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = false
//!   ca = "/etc/berth/certs.d/docker.io/ca.crt"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ImageError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHost {
    /// `host[:port]` as used in URLs.
    pub host: String,
    /// Plain http (an `http://` host).
    pub plain_http: bool,
    /// May serve manifests and blobs by digest.
    pub pull: bool,
    /// May resolve tags to manifests.
    pub resolve: bool,
    pub skip_verify: bool,
    /// CA certificate files (PEM) trusted for this host in addition to the system's.
    pub ca: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn paths(&self, base: &Path) -> Vec<PathBuf> {
        let v = match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        v.into_iter().map(|p| base.join(p)).collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    #[serde(default)]
    override_path: bool,
}

/// The default upstream for a registry host: Docker Hub's API lives elsewhere than its name, and a
/// registry on the loopback interface is plain http (as containerd's CRI plugin treats localhost).
fn default_server(registry: &str) -> String {
    let bare = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    match registry {
        "docker.io" => "https://registry-1.docker.io".into(),
        _ if bare == "localhost" || bare.starts_with("127.") || bare == "[::1]" => format!("http://{registry}"),
        other => format!("https://{other}"),
    }
}

/// Splits `http://host:port[/v2]` into the host and whether it is plain http.
fn parse_url(url: &str, file: &Path) -> Result<(String, bool)> {
    let bad = |message: String| ImageError::HostsConfig {
        path: file.to_path_buf(),
        message,
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("https", url),
    };
    let plain_http = match scheme {
        "http" => true,
        "https" => false,
        other => return Err(bad(format!("host {url:?}: unsupported scheme {other:?}"))),
    };
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = path.trim_end_matches('/');
    if !path.is_empty() && path != "v2" {
        return Err(bad(format!(
            "host {url:?}: a path prefix ({path:?}) is not supported; use the bare host"
        )));
    }
    if host.is_empty() {
        return Err(bad(format!("host {url:?}: no host")));
    }
    Ok((host.to_string(), plain_http))
}

fn caps(list: &Option<Vec<String>>) -> (bool, bool) {
    match list {
        None => (true, true),
        Some(l) => (l.iter().any(|c| c == "pull"), l.iter().any(|c| c == "resolve")),
    }
}

/// The hosts to try for `registry`, in order.
pub fn hosts_for(config_path: &Path, registry: &str) -> Result<Vec<RegistryHost>> {
    let mut file = None;
    for dir in [registry, "_default"] {
        let candidate = config_path.join(dir).join("hosts.toml");
        if candidate.is_file() {
            file = Some(candidate);
            break;
        }
    }
    let Some(file) = file else {
        return Ok(vec![server_host(
            &default_server(registry),
            &HostsFile::default(),
            config_path,
        )?]);
    };
    let text = std::fs::read_to_string(&file).map_err(|e| ImageError::HostsConfig {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let parsed: HostsFile = toml::from_str(&text).map_err(|e| ImageError::HostsConfig {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let base = file.parent().unwrap_or(config_path).to_path_buf();
    let mut out = Vec::new();
    for (url, value) in &parsed.host {
        let entry: HostEntry = value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ImageError::HostsConfig {
                path: file.clone(),
                message: format!("host {url:?}: {e}"),
            })?;
        if entry.override_path {
            return Err(ImageError::HostsConfig {
                path: file.clone(),
                message: format!("host {url:?}: override_path is not supported"),
            });
        }
        let (host, plain_http) = parse_url(url, &file)?;
        let (pull, resolve) = caps(&entry.capabilities);
        out.push(RegistryHost {
            host,
            plain_http,
            pull,
            resolve,
            skip_verify: entry.skip_verify.unwrap_or(false),
            ca: entry.ca.as_ref().map(|c| c.paths(&base)).unwrap_or_default(),
        });
    }
    // The `_default` file's server applies to whatever registry is asked for.
    let server = match &parsed.server {
        Some(s) => s.clone(),
        None => default_server(registry),
    };
    out.push(server_host(&server, &parsed, &base)?);
    Ok(out)
}

fn server_host(url: &str, file: &HostsFile, base: &Path) -> Result<RegistryHost> {
    let (host, plain_http) = parse_url(url, &base.join("hosts.toml"))?;
    let (pull, resolve) = caps(&file.capabilities);
    Ok(RegistryHost {
        host,
        plain_http,
        pull,
        resolve,
        skip_verify: file.skip_verify.unwrap_or(false),
        ca: file.ca.as_ref().map(|c| c.paths(base)).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        std::fs::create_dir_all(dir.join(host)).unwrap();
        std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "docker.io",
            r#"
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://a.example:8443"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.crt"
"#,
        );
        let hosts = hosts_for(tmp.path(), "docker.io").unwrap();
        let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:5000", "a.example:8443", "registry-1.docker.io"]);
        assert!(hosts[0].plain_http && hosts[0].resolve && hosts[0].pull);
        assert!(!hosts[1].plain_http && !hosts[1].resolve && hosts[1].skip_verify);
        assert_eq!(hosts[1].ca, [tmp.path().join("docker.io/ca.crt")]);
        assert!(!hosts[2].plain_http && hosts[2].resolve);
    }

    #[test]
    fn default_dir_and_no_config() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(hosts_for(tmp.path(), "quay.io").unwrap()[0].host, "quay.io");
        assert_eq!(
            hosts_for(tmp.path(), "docker.io").unwrap()[0].host,
            "registry-1.docker.io"
        );
        let local = &hosts_for(tmp.path(), "127.0.0.1:5000").unwrap()[0];
        assert!(local.plain_http && local.host == "127.0.0.1:5000");
        write(tmp.path(), "_default", "[host.\"http://127.0.0.1:5000\"]\n");
        let hosts = hosts_for(tmp.path(), "quay.io").unwrap();
        assert_eq!(hosts[0].host, "127.0.0.1:5000");
        assert_eq!(hosts[1].host, "quay.io");
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.io", "[host.\"https://m.io/v2/proxy\"]\n");
        let err = hosts_for(tmp.path(), "a.io").unwrap_err();
        assert!(err.to_string().contains("path prefix"), "{err}");
        write(tmp.path(), "b.io", "[host.\"https://m.io\"]\noverride_path = true\n");
        assert!(hosts_for(tmp.path(), "b.io").is_err());
        write(tmp.path(), "c.io", "server = ");
        assert!(hosts_for(tmp.path(), "c.io").is_err());
    }
}
