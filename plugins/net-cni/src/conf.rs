//! Network configuration lists: the first valid file of the conf dir (`.conflist`, or a single-plugin
//! `.conf` / `.json`, in lexical order of file name, as libcni and containerd pick them).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("cannot read the CNI conf dir {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no CNI network config in {dir} (.conflist, .conf or .json){skipped}")]
    None { dir: PathBuf, skipped: String },
}

/// One network: its name, CNI version and plugin configs in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<Map<String, Value>>,
    pub source: PathBuf,
}

impl ConfList {
    /// Parses a `.conflist` (`plugins` array) or a single plugin `.conf`.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<ConfList, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let name = obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            return Err("no \"name\"".into());
        }
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_string();
        let plugins: Vec<Map<String, Value>> = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| p.as_object().cloned().ok_or("a plugin is not an object"))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"plugins\" is not an array".into()),
            None => vec![obj.clone()],
        };
        if plugins.is_empty() {
            return Err("no plugins".into());
        }
        for p in &plugins {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
            if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
                return Err(format!("plugin type {ty:?} is not a plain binary name"));
            }
        }
        let disable_check = match obj.get("disableCheck") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        Ok(ConfList {
            name,
            cni_version,
            disable_check,
            plugins,
            source: source.to_path_buf(),
        })
    }

    /// The first valid config of `dir`; the invalid ones before it are named in the error when none is.
    pub fn load_first(dir: &Path) -> Result<ConfList, ConfError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ConfError::ReadDir {
            path: dir.to_path_buf(),
            source,
        });
        let mut files: Vec<PathBuf> = match entries {
            Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(ConfError::ReadDir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        files.retain(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        });
        files.sort();
        let mut skipped = Vec::new();
        for f in files {
            match std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| ConfList::parse(&b, &f))
            {
                Ok(list) => return Ok(list),
                Err(why) => skipped.push(format!("{}: {why}", f.display())),
            }
        }
        Err(ConfError::None {
            dir: dir.to_path_buf(),
            skipped: if skipped.is_empty() {
                String::new()
            } else {
                format!("; invalid: {}", skipped.join("; "))
            },
        })
    }

    pub fn has_plugin(&self, ty: &str) -> bool {
        self.plugins
            .iter()
            .any(|p| p.get("type").and_then(Value::as_str) == Some(ty))
    }

    /// The list as JSON, as kept in the pod's record so teardown uses what setup used.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "cniVersion": self.cni_version,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
            "source": self.source,
        })
    }

    pub fn from_value(v: &Value) -> Option<ConfList> {
        let mut list = ConfList::parse(v.to_string().as_bytes(), Path::new("")).ok()?;
        list.source = v
            .get("source")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_default();
        Some(list)
    }
}

/// Whether `version` (`major.minor.patch`) is at least `min`.
pub fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_valid_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(matches!(ConfList::load_first(d), Err(ConfError::None { .. })));
        assert!(matches!(
            ConfList::load_first(&d.join("missing")),
            Err(ConfError::None { .. })
        ));
        std::fs::write(d.join("05-broken.conflist"), "{").unwrap();
        std::fs::write(d.join("README"), "not a config").unwrap();
        std::fs::write(
            d.join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(d.join("10-a.conf"), r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#).unwrap();
        let list = ConfList::load_first(d).unwrap();
        assert_eq!(list.name, "a");
        assert_eq!(list.plugins.len(), 1);
        assert!(list.has_plugin("ptp"));
        std::fs::remove_file(d.join("10-a.conf")).unwrap();
        let list = ConfList::load_first(d).unwrap();
        assert_eq!((list.name.as_str(), list.plugins.len()), ("b", 2));
        assert_eq!(ConfList::from_value(&list.to_value()), Some(list));
        std::fs::remove_file(d.join("20-b.conflist")).unwrap();
        let err = ConfList::load_first(d).unwrap_err().to_string();
        assert!(err.contains("05-broken.conflist"), "{err}");
    }

    #[test]
    fn refuses_paths_as_plugin_types() {
        let r = ConfList::parse(br#"{"name":"x","plugins":[{"type":"../../bin/sh"}]}"#, Path::new("x"));
        assert!(r.is_err());
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
    }
}
