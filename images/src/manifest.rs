//! The registry documents berth reads: image indexes (OCI index, Docker manifest list), image manifests
//! (OCI, Docker schema 2) and image configs. Lenient serde structs: unknown fields are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The manifest media types a pull accepts.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index or a manifest: which one is told by `manifests` vs `layers` (and the media type).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Document {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

impl Document {
    pub fn parse(bytes: &[u8], digest: &str, reference: &str) -> Result<Parsed> {
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| ImageError::BadDocument {
            what: "manifest",
            digest: digest.to_string(),
            message: e.to_string(),
        })?;
        if doc.schema_version == 1 || doc.media_type == DOCKER_SCHEMA1 {
            return Err(ImageError::Unsupported {
                reference: reference.to_string(),
                what: "Docker schema 1 manifest".into(),
            });
        }
        if let Some(m) = doc.manifests {
            return Ok(Parsed::Index(m));
        }
        match doc.config {
            Some(config) => Ok(Parsed::Manifest {
                config,
                layers: doc.layers,
            }),
            None => Err(ImageError::BadDocument {
                what: "manifest",
                digest: digest.to_string(),
                message: "neither `manifests` nor `config`".into(),
            }),
        }
    }
}

/// The host platform's manifest of an index: linux/amd64 (attestations, marked `unknown/unknown`, never
/// match). A `variant` is ignored for amd64.
pub fn select_platform<'a>(entries: &'a [Descriptor], reference: &str) -> Result<&'a Descriptor> {
    let want_os = "linux";
    let want_arch = host_arch();
    entries
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want_os && p.architecture == want_arch)
        })
        .ok_or_else(|| ImageError::NoPlatform {
            reference: reference.to_string(),
            available: entries
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or("(no platform)".to_string(), |p| format!("{}/{}", p.os, p.architecture))
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The GOARCH spelling of this host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The image config (OCI image spec `config.json`), the fields berth uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// What CreateContainer takes from the image: the `config` object of the image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(rename = "Env", default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(rename = "ExposedPorts", default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Volumes", default, deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "StopSignal", default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(rename = "Labels", default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl RuntimeConfig {
    /// CRI's view of `User`: a numeric uid, or a user name (the group part is dropped), as containerd does.
    pub fn uid_or_username(&self) -> (Option<i64>, String) {
        let user = self.user.split(':').next().unwrap_or("");
        if user.is_empty() {
            return (None, String::new());
        }
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_string()),
        }
    }
}

impl ImageConfigFile {
    /// Refuses an image built for another platform (a single manifest says so only in its config).
    /// An empty os or architecture is taken as fitting.
    pub fn check_platform(&self, reference: &str) -> Result<()> {
        let os_ok = self.os.is_empty() || self.os == "linux";
        let arch_ok = self.architecture.is_empty() || self.architecture == host_arch();
        if os_ok && arch_ok {
            return Ok(());
        }
        Err(ImageError::WrongPlatform {
            reference: reference.to_string(),
            platform: format!("{}/{}", self.os, self.architecture),
            host: host_arch(),
        })
    }

    pub fn parse(bytes: &[u8], digest: &str) -> Result<ImageConfigFile> {
        serde_json::from_slice(bytes).map_err(|e| ImageError::BadDocument {
            what: "image config",
            digest: digest.to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_reads_docker_style_json() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"User":"www-data:1004","Env":["PATH=/bin"],
            "Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/w","ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}},
            "StopSignal":"SIGQUIT","Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let c = ImageConfigFile::parse(json, "sha256:x").unwrap();
        let rc = c.config.unwrap();
        assert_eq!(rc.cmd, ["sh"]);
        assert!(rc.entrypoint.is_empty());
        assert_eq!(rc.uid_or_username(), (None, "www-data".to_string()));
        assert_eq!(rc.exposed_ports.keys().collect::<Vec<_>>(), ["80/tcp"]);
        assert_eq!(rc.stop_signal, "SIGQUIT");
        assert_eq!(c.rootfs.diff_ids, ["sha256:aa"]);
        let numeric = RuntimeConfig {
            user: "1003:1004".into(),
            ..Default::default()
        };
        assert_eq!(numeric.uid_or_username(), (Some(1003), String::new()));
    }

    #[test]
    fn platform_selection_names_what_there_is() {
        let d = |os: &str, arch: &str| Descriptor {
            digest: format!("sha256:{arch}"),
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            ..Default::default()
        };
        let entries = [d("unknown", "unknown"), d("linux", "arm64"), d("linux", host_arch())];
        assert_eq!(select_platform(&entries, "r").unwrap().digest, entries[2].digest);
        let err = select_platform(&entries[..2], "r").err().unwrap();
        assert!(err.to_string().contains("linux/arm64"), "{err}");
    }
}
