//! What detection found, for `berthd check` (lines) and `Status` verbose info (JSON).

use std::path::Path;

use berth_core::plugin::resources::{CgroupMode, CgroupPath};
use serde_json::json;

use crate::detect::{Layout, own_cgroups};

pub fn mode_name(mode: CgroupMode) -> &'static str {
    match mode {
        CgroupMode::V1 => "v1",
        CgroupMode::Hybrid => "hybrid (v1 controllers, plus a cgroup2 hierarchy)",
        CgroupMode::V2 => "v2 (unified)",
    }
}

pub fn lines(layout: &Layout, default_parent: &CgroupPath) -> Vec<String> {
    let mut out = vec![format!("cgroup mode: {}", mode_name(layout.mode))];
    for h in &layout.v1 {
        let note = if h.mount_root == "/" {
            String::new()
        } else {
            format!(" (mount root {})", h.mount_root)
        };
        out.push(format!(
            "cgroup v1 {} at {}{note}",
            h.controllers.join(","),
            h.mount.display()
        ));
    }
    if let Some(u) = &layout.unified {
        let c = if layout.unified_controllers.is_empty() {
            "no controllers".to_string()
        } else {
            layout.unified_controllers.join(" ")
        };
        out.push(format!("cgroup2 at {}: {c}", u.display()));
    }
    for missing in ["cpu", "cpuset", "memory", "pids"] {
        if layout.mount_of(missing).is_none() {
            out.push(format!("warning: no {missing} controller: its limits are not applied"));
        }
    }
    if let Some(m) = layout.mount_of("memory") {
        let swap = if layout.on_unified("memory") {
            "memory.swap.max"
        } else {
            "memory.memsw.limit_in_bytes"
        };
        let has = Path::new(m).join(swap).exists() || layout.on_unified("memory") && m.join("cgroup.procs").exists();
        out.push(format!(
            "swap accounting: {}",
            if has { "yes" } else { "no (swap limits ignored)" }
        ));
    }
    out.push(format!(
        "cgroup driver: cgroupfs; pod cgroups without a parent go under {}; paths are absolute from each \
         hierarchy's root (kubelet's cgroupfs semantics)",
        default_parent.as_str()
    ));
    for (controllers, path) in own_cgroups() {
        if path != "/" && !controllers.is_empty() {
            out.push(format!(
                "note: berthd's own {controllers} cgroup is {path}; container cgroups are still placed from the \
                 hierarchy root, outside it"
            ));
        }
    }
    if layout.mode == CgroupMode::V2 {
        out.push("devices: an eBPF device program (BPF_CGROUP_DEVICE) per container cgroup".into());
    } else if layout.mount_of("devices").is_none() {
        out.push("warning: no devices controller: device access is not restricted by cgroups".into());
    }
    out
}

pub fn info(layout: &Layout, default_parent: &CgroupPath) -> serde_json::Value {
    json!({
        "driver": "cgroupfs",
        "mode": layout.mode,
        "defaultParent": default_parent.as_str(),
        "v1": layout.v1,
        "unified": layout.unified,
        "unifiedControllers": layout.unified_controllers,
        "controllers": layout.controllers(),
        "deviceProgram": layout.mode == CgroupMode::V2 || layout.mount_of("devices").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_report_names_the_device_program() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::v2(d.path().to_path_buf(), &["cpu", "memory", "pids", "cpuset"]);
        let l = lines(&layout, &CgroupPath("/berth".into()));
        assert!(l[0].contains("v2"), "{l:?}");
        assert!(l.iter().any(|x| x.contains("eBPF") && !x.contains("warning")), "{l:?}");
        assert!(l.iter().any(|x| x.contains("/berth")), "{l:?}");
    }
}
