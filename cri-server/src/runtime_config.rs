//! RuntimeConfig: the cgroup driver kubelet must match.

use berth_core::registry::Plugins;

use crate::api::{CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse};

pub fn handle(_req: RuntimeConfigRequest, plugins: &Plugins) -> RuntimeConfigResponse {
    let driver = match plugins.resources.driver() {
        "systemd" => CgroupDriver::Systemd,
        _ => CgroupDriver::Cgroupfs,
    };
    RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}
