//! CRI `LinuxContainerResources` → OCI `linux.resources` (containerd's `WithResources`), and the checks the
//! cgroup files need that the shared [`crate::resources::from_cri`] does not make.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResources, LinuxResourcesBuilder,
};

use crate::api::LinuxContainerResources;
use crate::error::{CriError, CriResult};

fn invalid(msg: String) -> CriError {
    CriError::InvalidArgument(msg)
}

fn cpuset_ok(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit() || c == ',' || c == '-')
}

/// Checks what [`crate::resources::from_cri`] leaves alone: cpuset lists, hugepage sizes, and `unified` keys
/// (written as file names under the cgroup: no `/`, no `..`).
pub fn validate(r: &LinuxContainerResources, field: &str) -> CriResult<()> {
    crate::resources::from_cri(r, field)?;
    for (name, v) in [("cpuset_cpus", &r.cpuset_cpus), ("cpuset_mems", &r.cpuset_mems)] {
        if !cpuset_ok(v) {
            return Err(invalid(format!("{field}.{name} {v:?} is not a list like 0-3,7")));
        }
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        let size_ok = h
            .page_size
            .strip_suffix('B')
            .and_then(|s| s.strip_suffix(['K', 'M', 'G', 'T', 'P']))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !size_ok {
            return Err(invalid(format!(
                "{field}.hugepage_limits[{i}].page_size {:?} is not like 2MB or 1GB",
                h.page_size
            )));
        }
        if i64::try_from(h.limit).is_err() {
            return Err(invalid(format!(
                "{field}.hugepage_limits[{i}].limit {} is too large",
                h.limit
            )));
        }
    }
    for key in r.unified.keys() {
        let ok = key.split_once('.').is_some_and(|(c, f)| !c.is_empty() && !f.is_empty())
            && !key.contains('/')
            && !key.contains('\0')
            && !key.contains("..");
        if !ok {
            return Err(invalid(format!(
                "{field}.unified key {key:?} is not a cgroup v2 file name"
            )));
        }
    }
    Ok(())
}

/// The OCI section: zero / empty CRI values stay unset; `pids_limit` > 0 and the device rules are added.
pub fn oci(
    r: Option<&LinuxContainerResources>,
    pids_limit: Option<i64>,
    devices: Vec<LinuxDeviceCgroup>,
) -> CriResult<LinuxResources> {
    let build = |what: &str, e: oci_spec::OciSpecError| CriError::Internal(format!("building {what}: {e}"));
    let mut b = LinuxResourcesBuilder::default().devices(devices);
    if let Some(limit) = pids_limit.filter(|l| *l > 0) {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(|e| build("pids", e))?,
        );
    }
    let Some(r) = r else {
        return b.build().map_err(|e| build("resources", e));
    };
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    let mut mem = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes > 0 {
        mem = mem.limit(r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes != 0 {
        mem = mem.swap(r.memory_swap_limit_in_bytes);
    }
    b = b
        .cpu(cpu.build().map_err(|e| build("cpu", e))?)
        .memory(mem.build().map_err(|e| build("memory", e))?);
    if !r.hugepage_limits.is_empty() {
        let pages = r
            .hugepage_limits
            .iter()
            .map(|h| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                    .build()
                    .map_err(|e| build("hugepage limit", e))
            })
            .collect::<CriResult<Vec<_>>>()?;
        b = b.hugepage_limits(pages);
    }
    if !r.unified.is_empty() {
        b = b.unified(r.unified.clone());
    }
    b.build().map_err(|e| build("resources", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HugepageLimit;

    #[test]
    fn translation_table() {
        let r = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            memory_swap_limit_in_bytes: 256 << 20,
            oom_score_adj: 900,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "200M".to_string())].into(),
        };
        let o = oci(Some(&r), Some(1024), vec![]).unwrap();
        let cpu = o.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0-1"), Some("0")));
        let mem = o.memory().as_ref().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(256 << 20), Some(256 << 20)));
        assert_eq!(o.pids().as_ref().unwrap().limit(), 1024);
        assert_eq!(o.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
        assert_eq!(o.unified().as_ref().unwrap()["memory.high"], "200M");
    }

    #[test]
    fn zeros_stay_unset() {
        let o = oci(Some(&LinuxContainerResources::default()), None, vec![]).unwrap();
        let cpu = o.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period(), cpu.cpus().clone()),
            (None, None, None, None)
        );
        assert_eq!(o.memory().as_ref().unwrap().limit(), None);
        assert!(o.pids().is_none() && o.hugepage_limits().is_none() && o.unified().is_none());
        let o = oci(None, Some(0), vec![]).unwrap();
        assert!(o.pids().is_none() && o.cpu().is_none());
        let q = oci(
            Some(&LinuxContainerResources {
                cpu_quota: -1,
                ..Default::default()
            }),
            None,
            vec![],
        )
        .unwrap();
        assert_eq!(q.cpu().as_ref().unwrap().quota(), Some(-1));
    }

    #[test]
    fn validation_table() {
        let f = "linux.resources";
        let e = |r: LinuxContainerResources| validate(&r, f).map_err(|e| e.to_string());
        assert!(e(LinuxContainerResources::default()).is_ok());
        assert_eq!(
            e(LinuxContainerResources {
                cpu_shares: -2,
                ..Default::default()
            })
            .unwrap_err(),
            "linux.resources.cpu_shares must not be negative, got -2"
        );
        assert!(
            e(LinuxContainerResources {
                cpuset_cpus: "0-3,7".into(),
                ..Default::default()
            })
            .is_ok()
        );
        assert_eq!(
            e(LinuxContainerResources {
                cpuset_cpus: "all".into(),
                ..Default::default()
            })
            .unwrap_err(),
            "linux.resources.cpuset_cpus \"all\" is not a list like 0-3,7"
        );
        let huge = |s: &str, limit: u64| LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit {
                page_size: s.into(),
                limit,
            }],
            ..Default::default()
        };
        assert!(e(huge("1GB", 1 << 30)).is_ok());
        assert!(e(huge("2Mi", 1)).unwrap_err().contains("page_size \"2Mi\""));
        assert!(e(huge("MB", 1)).is_err());
        assert!(e(huge("2MB", u64::MAX)).unwrap_err().contains("too large"));
        let unified = |k: &str| LinuxContainerResources {
            unified: [(k.to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(e(unified("memory.max")).is_ok());
        for bad in ["../../etc/passwd", "memory/max", "nodot", ".max", "memory.", "a..b"] {
            assert!(
                e(unified(bad)).unwrap_err().contains("is not a cgroup v2 file name"),
                "{bad}"
            );
        }
    }
}
