//! The cgroupfs resources plugin: cgroup v1 and v2 managers, stats and OOM events.
//!
//! Layout: [`detect`] finds the mounted hierarchies; [`manager::Cgroupfs`] creates, limits, samples and removes
//! cgroups through the v1 or v2 backend ([`v1`], [`v2`]: one controller per file, each taking the directory it
//! works on, so every one is tested on temp-dir fixtures); [`plugin`] puts it behind the async `Resources` trait;
//! [`register`] is the registration.
//!
//! Unsafe inventory: only [`v2::devices::bpf`] (the bpf(2) calls that load and attach the v2 device program),
//! each block with a `// SAFETY:` line.
//!
//! Cgroup paths follow kubelet's cgroupfs driver: absolute from the root of every hierarchy. On hosts where
//! berthd itself sits in a nested cgroup of one controller only (this build machine: memory at
//! `/process_api/<hash>`, the others at `/`), containers are not nested under it: each controller's directory is
//! `<mount>/<path>`, the same path in every hierarchy, as kubelet and runc do for absolute paths.

pub mod convert;
pub mod detect;
pub mod devices;
pub mod error;
pub mod file;
pub mod hugetlb;
mod kill;
pub mod limits;
pub mod manager;
pub mod path;
pub mod plugin;
pub mod report;
pub mod tree;
pub mod v1;
pub mod v2;

use std::sync::Arc;

use berth_core::config::CgroupsConfig;
use berth_core::plugin::{PluginError, Resources};
use berth_core::registry::{Registry, RegistryError};

pub use detect::Layout;
pub use error::CgroupError;
pub use manager::Cgroupfs;
pub use plugin::CgroupfsPlugin;

/// The plugin's name in config (`plugins.resources`).
pub const NAME: &str = "cgroupfs";

/// Registers the `cgroupfs` resources plugin.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_resources(NAME, |ctx| {
        Ok(Arc::new(CgroupfsPlugin::new(build(&ctx.config.cgroups)?)) as Arc<dyn Resources>)
    })
}

/// Detects the hierarchies under the configured mount point and builds the manager. The `systemd` driver is
/// refused until it exists.
pub fn build(config: &CgroupsConfig) -> Result<Cgroupfs, PluginError> {
    match config.driver.as_str() {
        "cgroupfs" | "" => {}
        "systemd" => {
            let running = std::path::Path::new("/run/systemd/system").exists();
            return Err(PluginError::Unsupported(format!(
                "cgroups.driver = \"systemd\" is not supported yet{}; use driver = \"cgroupfs\" (and kubelet's \
                 cgroupDriver: cgroupfs)",
                if running {
                    ""
                } else {
                    " (and systemd is not running on this host)"
                }
            )));
        }
        other => {
            return Err(PluginError::InvalidArgument(format!(
                "cgroups.driver {other:?} is unknown; available: cgroupfs"
            )));
        }
    }
    let layout = Layout::detect(&config.mountpoint)?;
    Ok(Cgroupfs::new(layout, &config.default_parent, config.pids_limit)?)
}

/// Detection report lines for `berthd check`, without building the plugin: the failure is a line too.
pub fn check(config: &CgroupsConfig) -> Vec<String> {
    match build(config) {
        Ok(m) => m.check_lines(),
        Err(e) => vec![format!("error: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_driver_is_refused_clearly() {
        let config = CgroupsConfig {
            driver: "systemd".into(),
            ..Default::default()
        };
        let e = build(&config).err().unwrap().to_string();
        assert!(e.contains("systemd") && e.contains("not supported"), "{e}");
        let config = CgroupsConfig {
            driver: "cgroupsfs".into(),
            ..Default::default()
        };
        assert!(build(&config).err().unwrap().to_string().contains("unknown"));
    }
}
