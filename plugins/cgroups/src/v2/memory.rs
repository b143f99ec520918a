//! v2 `memory`: `memory.max`, `memory.swap.max` (swap only: the CRI's value is memory+swap), usage from
//! `memory.current` and `memory.stat`, OOM kills from `memory.events`.

use std::path::Path;

use berth_core::plugin::resources::{CgroupStats, LinuxResources};

use crate::convert;
use crate::error::Result;
use crate::file::{Tx, parse_limit, read_keyed, read_opt, read_u64};

pub fn apply(tx: &mut Tx, dir: &Path, r: &LinuxResources) -> Result<()> {
    let swap = convert::swap_max(r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes)?;
    // Without swap accounting (no memory.swap.max) "no swap beyond memory" is what we get anyway.
    let swap_file = dir.join("memory.swap.max").exists() || !dir.join("cgroup.procs").exists();
    if let (Some(swap), true) = (swap, swap_file) {
        // The swap limit is independent of memory.max on v2: no ordering constraint.
        tx.write(dir, "memory.swap.max", &convert::bytes_or_max(swap))?;
    }
    if r.memory_limit_in_bytes != 0 {
        tx.write(dir, "memory.max", &convert::bytes_or_max(r.memory_limit_in_bytes))?;
    }
    Ok(())
}

/// Memory figures as kubelet (cadvisor) reads them on v2: working set = `memory.current` − `inactive_file`,
/// RSS = `anon`.
pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<()> {
    let stat = read_keyed(dir, "memory.stat")?;
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    s.memory_usage = read_u64(dir, "memory.current")?;
    s.memory_working_set = s.memory_usage.saturating_sub(get("inactive_file"));
    s.memory_rss = get("anon");
    s.page_faults = get("pgfault");
    s.major_page_faults = get("pgmajfault");
    s.swap_usage = read_u64(dir, "memory.swap.current")?;
    if let Some(max) = read_opt(dir, "memory.max")? {
        s.memory_limit = parse_limit(&dir.join("memory.max"), &max)?.unwrap_or(0);
    }
    s.oom_kills = oom_kills(dir)?;
    Ok(())
}

/// `oom_kill` of `memory.events` (hierarchical: a pod cgroup counts its containers' kills).
pub fn oom_kills(dir: &Path) -> Result<u64> {
    Ok(read_keyed(dir, "memory.events")?.get("oom_kill").copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_swap() {
        let d = tempfile::tempdir().unwrap();
        let r = LinuxResources {
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 48 << 20,
            ..Default::default()
        };
        apply(&mut Tx::new(), d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), "memory.max").unwrap().unwrap(), "33554432");
        assert_eq!(read_opt(d.path(), "memory.swap.max").unwrap().unwrap(), "16777216");
        let r = LinuxResources {
            memory_limit_in_bytes: -1,
            ..Default::default()
        };
        apply(&mut Tx::new(), d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), "memory.max").unwrap().unwrap(), "max");
        assert_eq!(read_opt(d.path(), "memory.swap.max").unwrap().unwrap(), "max");
    }

    /// memory.stat of a real cgroup2 cgroup (Debian's 6.1 kernel in the test VM; `print_real_v2_samples`)
    /// whose process holds a 50 MiB buffer (transparent huge pages: few page faults).
    const STAT: &str = "anon 52518912\nfile 0\nkernel 327680\nkernel_stack 32768\npagetables 151552\nsec_pagetables 0\n\
percpu 0\nsock 0\nvmalloc 0\nshmem 0\nzswap 0\nzswapped 0\nfile_mapped 0\nfile_dirty 0\n\
file_writeback 0\nswapcached 0\nanon_thp 50331648\nfile_thp 0\nshmem_thp 0\ninactive_anon 52461568\n\
active_anon 4096\ninactive_file 0\nactive_file 0\nunevictable 0\nslab_reclaimable 1840\n\
slab_unreclaimable 32600\nslab 34440\nworkingset_refault_anon 0\nworkingset_refault_file 0\n\
workingset_activate_anon 0\nworkingset_activate_file 0\nworkingset_restore_anon 0\n\
workingset_restore_file 0\nworkingset_nodereclaim 0\npgscan 0\npgsteal 0\npgscan_kswapd 0\n\
pgscan_direct 0\npgsteal_kswapd 0\npgsteal_direct 0\npgfault 627\npgmajfault 0\npgrefill 0\n\
pgactivate 0\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\nzswpin 0\nzswpout 0\nthp_fault_alloc 24\n\
thp_collapse_alloc 0\n";

    #[test]
    fn stats_follow_kubelet() {
        let d = tempfile::tempdir().unwrap();
        // The real sample, with 2 MiB of inactive page cache added (to see it subtracted) and 3 major faults.
        let stat = STAT
            .replace("inactive_file 0", "inactive_file 2101248")
            .replace("pgmajfault 0", "pgmajfault 3");
        std::fs::write(d.path().join("memory.stat"), stat).unwrap();
        std::fs::write(d.path().join("memory.current"), "55222272\n").unwrap();
        std::fs::write(d.path().join("memory.swap.current"), "0\n").unwrap();
        std::fs::write(d.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(
            d.path().join("memory.events"),
            "low 0\nhigh 0\nmax 103\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let mut s = CgroupStats::default();
        stats(d.path(), &mut s).unwrap();
        assert_eq!(s.memory_usage, 55_222_272);
        assert_eq!(s.memory_working_set, 55_222_272 - 2_101_248);
        assert_eq!(s.memory_rss, 52_518_912);
        assert_eq!(s.page_faults, 627);
        assert_eq!(s.major_page_faults, 3);
        assert_eq!(s.memory_limit, 0);
        assert_eq!(s.oom_kills, 1);
    }
}
