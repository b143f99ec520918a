//! berthd's configuration: TOML in sections, every field optional with a built-in default, unknown keys
//! rejected with the key named. `validate` is pure; creating directories is the daemon's job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: metadata store, content, snapshots.
    pub root: PathBuf,
    /// Runtime state (tmpfs): socket, pinned namespaces, shim sockets.
    pub state: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    pub grpc: GrpcConfig,
    pub plugins: PluginsConfig,
    pub registry: RegistryConfig,
    pub images: ImagesConfig,
    pub bridge: BridgeConfig,
    pub cni: CniConfig,
    pub cgroups: CgroupsConfig,
    pub isolation: IsolationConfig,
    pub streaming: StreamingConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// The CRI socket; empty means `<state>/berth.sock`.
    pub socket: PathBuf,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    pub snapshotter: String,
    pub network: String,
    pub isolation: String,
    pub resources: String,
    /// Paths of dynamic plugins (`cdylib` `.so` files) loaded at start.
    pub load: Vec<PathBuf>,
    /// Free-form configuration of dynamic plugins, by plugin name; handed to the plugin as JSON.
    pub config: BTreeMap<String, toml::Table>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd's `hosts.toml` directory layout: `<config_path>/<host>/hosts.toml`.
    pub config_path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// Most bytes one layer may unpack to (decompression-bomb bound); a sparse file counts at its real size,
    /// holes included, though its holes are not written.
    pub max_layer_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    pub bridge: String,
    /// IPv4 pod CIDR; the gateway is its first address. Empty: the kubelet's pod CIDR (UpdateRuntimeConfig),
    /// kept once taken; the network is not ready until it comes.
    pub cidr: String,
    /// Optional IPv6 pod CIDR for dual stack.
    pub cidr_v6: String,
    pub mtu: u32,
    /// Masquerade traffic leaving the pod CIDR.
    pub masquerade: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupsConfig {
    /// `cgroupfs` (systemd is refused until supported).
    pub driver: String,
    /// Parent of pod cgroups when the pod names none.
    pub default_parent: String,
    /// Default pids limit per container; 0 means none.
    pub pids_limit: i64,
    /// Mount point of the cgroup hierarchies.
    pub mountpoint: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolationConfig {
    /// The pod shim binary; empty means `berth-shim` next to berthd's own executable.
    pub shim_path: PathBuf,
    /// Clamp oom_score_adj to the shim's own value when lowering it is not permitted:
    /// `auto` (when CAP_SYS_RESOURCE is missing), `always` or `never`.
    pub restrict_oom_score_adj: String,
    /// Default seconds a container gets between its stop signal and SIGKILL when the caller gives none.
    pub default_stop_timeout_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    pub address: String,
    /// 0 picks a free port.
    pub port: u16,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub token_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            log_level: "info".into(),
            log_format: "text".into(),
            grpc: GrpcConfig::default(),
            plugins: PluginsConfig::default(),
            registry: RegistryConfig::default(),
            images: ImagesConfig::default(),
            bridge: BridgeConfig::default(),
            cni: CniConfig::default(),
            cgroups: CgroupsConfig::default(),
            isolation: IsolationConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            socket: PathBuf::new(),
            max_message_bytes: 16 << 20,
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            snapshotter: "overlayfs".into(),
            network: "bridge".into(),
            isolation: "linux".into(),
            resources: "cgroupfs".into(),
            load: Vec::new(),
            config: BTreeMap::new(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: PathBuf::from("/etc/berth/certs.d"),
        }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            max_concurrent_downloads: 3,
            max_layer_bytes: 64 << 30,
        }
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            bridge: "berth0".into(),
            cidr: "10.88.0.0/16".into(),
            cidr_v6: String::new(),
            mtu: 1500,
            masquerade: true,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        CgroupsConfig {
            driver: "cgroupfs".into(),
            default_parent: "/berth".into(),
            pids_limit: 0,
            mountpoint: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            shim_path: PathBuf::new(),
            restrict_oom_score_adj: "auto".into(),
            default_stop_timeout_secs: 10,
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            token_ttl_secs: 60,
        }
    }
}

/// Command-line values that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub log_level: Option<String>,
}

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Loads `path`; a missing file is an error only when the path was given explicitly.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn apply(&mut self, o: &Overrides) {
        if let Some(s) = &o.socket {
            self.grpc.socket = s.clone();
        }
        if let Some(r) = &o.root {
            self.root = r.clone();
        }
        if let Some(s) = &o.state {
            self.state = s.clone();
        }
        if let Some(l) = &o.log_level {
            self.log_level = l.clone();
        }
    }

    /// Pure checks of values that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        if !self.root.is_absolute() {
            return invalid("root", format!("must be an absolute path, not {:?}", self.root));
        }
        if !self.state.is_absolute() {
            return invalid("state", format!("must be an absolute path, not {:?}", self.state));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid(
                "log_format",
                format!("must be \"text\" or \"json\", not {:?}", self.log_format),
            );
        }
        for (field, name) in [
            ("plugins.snapshotter", &self.plugins.snapshotter),
            ("plugins.network", &self.plugins.network),
            ("plugins.isolation", &self.plugins.isolation),
            ("plugins.resources", &self.plugins.resources),
        ] {
            if name.is_empty() {
                return invalid(field, "must name a plugin".into());
            }
        }
        if !matches!(
            self.isolation.restrict_oom_score_adj.as_str(),
            "auto" | "always" | "never"
        ) {
            return invalid(
                "isolation.restrict_oom_score_adj",
                format!(
                    "must be \"auto\", \"always\" or \"never\", not {:?}",
                    self.isolation.restrict_oom_score_adj
                ),
            );
        }
        if !self.cgroups.default_parent.starts_with('/') {
            return invalid("cgroups.default_parent", "must start with /".into());
        }
        if self.images.max_concurrent_downloads == 0 {
            return invalid("images.max_concurrent_downloads", "must be at least 1".into());
        }
        Ok(())
    }

    /// The full default config as TOML (`berthd config default`).
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("the default config serializes")
    }

    pub fn socket_path(&self) -> PathBuf {
        if self.grpc.socket.as_os_str().is_empty() {
            self.state.join("berth.sock")
        } else {
            self.grpc.socket.clone()
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket_path(), PathBuf::from("/run/berth/berth.sock"));
        assert_eq!(c.store_path(), PathBuf::from("/var/lib/berth/meta.redb"));
        assert_eq!(c.plugins.snapshotter, "overlayfs");
        assert_eq!(c.plugins.network, "bridge");
        assert_eq!(c.plugins.isolation, "linux");
        assert_eq!(c.plugins.resources, "cgroupfs");
        c.validate().unwrap();
    }

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml();
        assert!(text.contains("[plugins]"));
        assert_eq!(Config::parse(&text, Path::new("d.toml")).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse(
            "[plugins]\nsnapshoter = \"native\"\n",
            Path::new("/etc/berth/config.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("snapshoter"), "{err}");
        assert!(err.contains("/etc/berth/config.toml"), "{err}");
        let err = Config::parse("bogus = 1\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::parse("[plugins]\nsnapshotter = \"native\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.plugins.snapshotter, "native");
        assert_eq!(c.plugins.network, "bridge");
    }

    #[test]
    fn flags_override_the_file_and_move_the_socket() {
        let mut c = Config::parse("root = \"/a\"\n", Path::new("c.toml")).unwrap();
        c.apply(&Overrides {
            root: Some("/b".into()),
            state: Some("/tmp/s".into()),
            ..Default::default()
        });
        assert_eq!(c.root, PathBuf::from("/b"));
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/s/berth.sock"));
    }

    #[test]
    fn validate_names_the_field() {
        let c = Config {
            log_format: "xml".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("log_format"));
        let c = Config {
            root: "relative".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("root"));
    }

    #[test]
    fn an_explicit_missing_file_is_an_error_the_default_one_is_not() {
        assert!(Config::load(Some(Path::new("/nonexistent/berth.toml"))).is_err());
    }
}
