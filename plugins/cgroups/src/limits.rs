//! Pure checks of [`LinuxResources`] before anything is written: a value refused here never reaches a cgroup
//! file. What only the kernel can judge (a cpuset outside the parent's, a memory limit below usage) is caught
//! when written, and the transaction is rolled back.

use berth_core::plugin::resources::{CgroupMode, LinuxResources};

use crate::convert;
use crate::error::{CgroupError, Result};

/// Files `unified` may never name: they move processes or reshape the tree, which is ours to do.
const UNIFIED_FORBIDDEN: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.kill",
    "cgroup.type",
];

pub fn validate(r: &LinuxResources, mode: CgroupMode) -> Result<()> {
    let invalid = |what: &str, m: String| Err(CgroupError::invalid(what, m));
    if r.cpu_shares < 0 {
        return invalid("cpu_shares", format!("{} is negative", r.cpu_shares));
    }
    if r.cpu_quota < -1 || (r.cpu_quota > 0 && r.cpu_quota < 1000) {
        return invalid(
            "cpu_quota",
            format!("{} µs: must be -1, 0 (unset) or at least 1000", r.cpu_quota),
        );
    }
    if r.cpu_period < 0 || (r.cpu_period > 0 && !(1000..=1_000_000).contains(&r.cpu_period)) {
        return invalid(
            "cpu_period",
            format!("{} µs: must be between 1000 and 1000000", r.cpu_period),
        );
    }
    if r.memory_limit_in_bytes < -1 {
        return invalid(
            "memory_limit_in_bytes",
            format!("{} is negative", r.memory_limit_in_bytes),
        );
    }
    // The same rules as v2's conversion, on v1 too: memory+swap below memory is refused by both.
    convert::swap_max(r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes)?;
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return invalid("oom_score_adj", format!("{} is outside -1000..1000", r.oom_score_adj));
    }
    check_list("cpuset_cpus", &r.cpuset_cpus)?;
    check_list("cpuset_mems", &r.cpuset_mems)?;
    for size in r.hugepage_limits.keys() {
        convert::check_hugepage_size(size)?;
    }
    if !r.unified.is_empty() && mode != CgroupMode::V2 {
        return invalid(
            "unified",
            format!(
                "cgroup v2 settings ({}) need a cgroup v2 node; this one runs cgroup v1",
                r.unified.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    for key in r.unified.keys() {
        let shape_ok = key.split_once('.').is_some_and(|(c, f)| {
            !c.is_empty()
                && !f.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        });
        if !shape_ok || UNIFIED_FORBIDDEN.contains(&key.as_str()) {
            return invalid("unified", format!("{key:?} is not a cgroup v2 setting berth writes"));
        }
    }
    for d in &r.devices {
        if !matches!(d.kind, 'a' | 'b' | 'c') {
            return invalid("devices", format!("type {:?} is not a, b or c", d.kind));
        }
        let number_ok = |n: Option<i64>| n.is_none_or(|n| (0..=i64::from(i32::MAX)).contains(&n));
        if !number_ok(d.major) || !number_ok(d.minor) {
            return invalid(
                "devices",
                format!("device number {:?}:{:?} is out of range", d.major, d.minor),
            );
        }
        if d.access.is_empty() || !d.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return invalid(
                "devices",
                format!("access {:?} is not a combination of r, w, m", d.access),
            );
        }
    }
    Ok(())
}

/// A kernel cpu/mem list: `0-3,6,8-9`; empty means unset.
fn check_list(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let num = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    for part in s.split(',') {
        let ok = match part.split_once('-') {
            Some((a, b)) => num(a) && num(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
            None => num(part),
        };
        if !ok {
            return Err(CgroupError::invalid(what, format!("{s:?} is not a list like 0-3,6")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(r: LinuxResources) -> bool {
        validate(&r, CgroupMode::V2).is_ok()
    }

    #[test]
    fn accepts_what_kubelet_sends() {
        assert!(ok(LinuxResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 204,
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 32 << 20,
            oom_score_adj: 1000,
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            ..Default::default()
        }));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(!ok(LinuxResources {
            cpu_quota: 10,
            ..Default::default()
        }));
        assert!(!ok(LinuxResources {
            cpu_period: 10,
            ..Default::default()
        }));
        assert!(!ok(LinuxResources {
            cpu_shares: -5,
            ..Default::default()
        }));
        assert!(!ok(LinuxResources {
            memory_limit_in_bytes: -2,
            ..Default::default()
        }));
        assert!(!ok(LinuxResources {
            cpuset_cpus: "0-".into(),
            ..Default::default()
        }));
        assert!(!ok(LinuxResources {
            cpuset_cpus: "3-1".into(),
            ..Default::default()
        }));
        assert!(!ok(LinuxResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 50,
            ..Default::default()
        }));
        let mut r = LinuxResources::default();
        r.unified.insert("cgroup.procs".into(), "1".into());
        assert!(!ok(r));
        let mut r = LinuxResources::default();
        r.unified.insert("../memory.max".into(), "1".into());
        assert!(!ok(r));
    }

    #[test]
    fn unified_is_v2_only() {
        let mut r = LinuxResources::default();
        r.unified.insert("memory.high".into(), "1000000".into());
        assert!(validate(&r, CgroupMode::V2).is_ok());
        let e = validate(&r, CgroupMode::Hybrid).unwrap_err();
        assert!(matches!(e, CgroupError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("memory.high"));
        assert!(validate(&r, CgroupMode::V1).is_err());
    }
}
