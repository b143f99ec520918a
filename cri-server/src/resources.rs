//! CRI LinuxContainerResources ⇄ the resources plugin's LinuxResources, with the checks every runtime makes.

use berth_core::plugin::resources::LinuxResources;

use crate::api::LinuxContainerResources;
use crate::error::{CriError, CriResult};

/// Translates and validates; `field` prefixes error messages (`linux.resources`).
pub fn from_cri(r: &LinuxContainerResources, field: &str) -> CriResult<LinuxResources> {
    for (name, v) in [
        ("cpu_period", r.cpu_period),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        if v < 0 {
            return Err(CriError::InvalidArgument(format!(
                "{field}.{name} must not be negative, got {v}"
            )));
        }
    }
    // -1 means "no quota" (cgroup v1's convention); anything lower is nonsense.
    if r.cpu_quota < -1 {
        return Err(CriError::InvalidArgument(format!(
            "{field}.cpu_quota must be -1 or more, got {}",
            r.cpu_quota
        )));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(CriError::InvalidArgument(format!(
            "{field}.oom_score_adj must be within -1000..=1000, got {}",
            r.oom_score_adj
        )));
    }
    Ok(LinuxResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        pids_limit: None,
        devices: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_values_name_the_field() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: -5,
            ..Default::default()
        };
        let e = from_cri(&r, "linux.resources").unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory_limit_in_bytes"), "{e}");
        let r = LinuxContainerResources {
            cpu_quota: -1,
            cpu_shares: 512,
            ..Default::default()
        };
        assert_eq!(from_cri(&r, "r").unwrap().cpu_shares, 512);
    }
}
