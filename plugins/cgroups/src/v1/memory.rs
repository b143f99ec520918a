//! v1 `memory`: limit, memory+swap limit, usage, and OOM kills.
//!
//! `memory.memsw.limit_in_bytes` must never be below `memory.limit_in_bytes`, so the order of the two writes
//! depends on whether the new total grows or shrinks (runc's rule).

use std::path::Path;

use berth_core::plugin::resources::{CgroupStats, LinuxResources};

use crate::error::Result;
use crate::file::{Tx, parse_limit, read_keyed, read_opt, read_u64};

const LIMIT: &str = "memory.limit_in_bytes";
const MEMSW: &str = "memory.memsw.limit_in_bytes";

pub fn apply(tx: &mut Tx, dir: &Path, r: &LinuxResources) -> Result<()> {
    let (mem, swap) = (r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes);
    if mem == 0 && swap == 0 {
        return Ok(());
    }
    let has_memsw = dir.join(MEMSW).exists();
    if swap == 0 || !has_memsw {
        if swap > mem && !has_memsw {
            tracing::warn!(dir = %dir.display(), "no swap accounting (memory.memsw.*): the swap limit is ignored");
        }
        return tx.write(dir, LIMIT, &mem.to_string());
    }
    let current_memsw = read_opt(dir, MEMSW)?.and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
    let grows = swap == -1 || (current_memsw != -1 && swap > current_memsw);
    if grows {
        tx.write(dir, MEMSW, &swap.to_string())?;
        if mem != 0 {
            tx.write(dir, LIMIT, &mem.to_string())?;
        }
    } else {
        if mem != 0 {
            tx.write(dir, LIMIT, &mem.to_string())?;
        }
        tx.write(dir, MEMSW, &swap.to_string())?;
    }
    Ok(())
}

/// Memory figures as kubelet (cadvisor) reads them on v1: `total_*` counters of memory.stat (hierarchical).
pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<()> {
    let stat = read_keyed(dir, "memory.stat")?;
    let get = |k: &str| {
        stat.get(&format!("total_{k}"))
            .or_else(|| stat.get(k))
            .copied()
            .unwrap_or(0)
    };
    s.memory_usage = read_u64(dir, "memory.usage_in_bytes")?;
    s.memory_working_set = s.memory_usage.saturating_sub(get("inactive_file"));
    s.memory_rss = get("rss");
    s.page_faults = get("pgfault");
    s.major_page_faults = get("pgmajfault");
    if let Some(memsw) = read_opt(dir, "memory.memsw.usage_in_bytes")? {
        s.swap_usage = memsw.parse::<u64>().unwrap_or(0).saturating_sub(s.memory_usage);
    }
    if let Some(limit) = read_opt(dir, LIMIT)? {
        s.memory_limit = parse_limit(&dir.join(LIMIT), &limit)?.unwrap_or(0);
    }
    s.oom_kills = oom_kills(dir)?;
    Ok(())
}

/// OOM kills in this cgroup: `oom_kill` of `memory.oom_control` (Linux ≥ 4.13). Older kernels have no counter:
/// `under_oom` (while it lasts) or a non-zero `memory.failcnt` count as one, so an exit by SIGKILL can be
/// attributed to the OOM killer.
pub fn oom_kills(dir: &Path) -> Result<u64> {
    let control = read_keyed(dir, "memory.oom_control")?;
    if let Some(n) = control.get("oom_kill") {
        return Ok(*n);
    }
    let hit = control.get("under_oom").copied().unwrap_or(0) > 0 || read_u64(dir, "memory.failcnt")? > 0;
    Ok(u64::from(hit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(limit: &str, memsw: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LIMIT), limit).unwrap();
        if let Some(m) = memsw {
            std::fs::write(d.path().join(MEMSW), m).unwrap();
        }
        d
    }

    #[test]
    fn limit_only() {
        let d = fixture("9223372036854771712\n", None);
        let r = LinuxResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        };
        apply(&mut Tx::new(), d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), LIMIT).unwrap().unwrap(), "33554432");
    }

    #[test]
    fn memsw_written_in_a_valid_order() {
        // Lowering: limit first, then the total. Raising: the total first.
        let d = fixture("67108864", Some("67108864"));
        let r = LinuxResources {
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 32 << 20,
            ..Default::default()
        };
        let mut tx = Tx::new();
        apply(&mut tx, d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), MEMSW).unwrap().unwrap(), "33554432");
        // The undo log restores the limit before the total when rolling back a lowering.
        tx.rollback();
        assert_eq!(read_opt(d.path(), LIMIT).unwrap().unwrap(), "67108864");
        assert_eq!(read_opt(d.path(), MEMSW).unwrap().unwrap(), "67108864");
    }

    /// memory.stat of a real v1 cgroup on the build host (kernel 6.18) whose process holds a 50 MiB buffer.
    const STAT: &str = "cache 0\nrss 52686848\nrss_huge 0\nshmem 0\nmapped_file 0\ndirty 0\nwriteback 0\n\
workingset_refault_anon 0\nworkingset_refault_file 0\nswap 0\nswapcached 0\npgpgin 12879\npgpgout 16\n\
pgfault 13010\npgmajfault 0\ninactive_anon 52678656\nactive_anon 8192\ninactive_file 0\nactive_file 0\n\
unevictable 0\nhierarchical_memory_limit 9223372036854771712\nhierarchical_memsw_limit 9223372036854771712\n\
total_cache 0\ntotal_rss 52686848\ntotal_rss_huge 0\ntotal_shmem 0\ntotal_mapped_file 0\ntotal_dirty 0\n\
total_writeback 0\ntotal_workingset_refault_anon 0\ntotal_workingset_refault_file 0\ntotal_swap 0\n\
total_swapcached 0\ntotal_pgpgin 12879\ntotal_pgpgout 16\ntotal_pgfault 13010\ntotal_pgmajfault 0\n\
total_inactive_anon 52678656\ntotal_active_anon 8192\ntotal_inactive_file 0\ntotal_active_file 0\n\
total_unevictable 0\n";

    #[test]
    fn stats_follow_kubelet() {
        let d = fixture("33554432\n", None);
        // The real sample, with 1 MiB of inactive page cache added (to see it subtracted) and a major fault.
        let stat = STAT
            .replace("total_inactive_file 0", "total_inactive_file 1048576")
            .replace("total_pgmajfault 0", "total_pgmajfault 2");
        std::fs::write(d.path().join("memory.stat"), stat).unwrap();
        std::fs::write(d.path().join("memory.usage_in_bytes"), "54456320\n").unwrap();
        std::fs::write(d.path().join("memory.memsw.usage_in_bytes"), "54456320\n").unwrap();
        std::fs::write(
            d.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let mut s = CgroupStats::default();
        stats(d.path(), &mut s).unwrap();
        assert_eq!(s.memory_usage, 54_456_320);
        assert_eq!(s.memory_working_set, 54_456_320 - 1_048_576);
        assert_eq!(s.memory_rss, 52_686_848);
        assert_eq!(s.page_faults, 13_010);
        assert_eq!(s.swap_usage, 0);
        assert_eq!(s.major_page_faults, 2);
        assert_eq!(s.memory_limit, 32 << 20);
        assert_eq!(s.oom_kills, 2);
    }

    #[test]
    fn oom_without_a_counter_falls_back_to_failcnt() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\n").unwrap();
        std::fs::write(d.path().join("memory.failcnt"), "0\n").unwrap();
        assert_eq!(oom_kills(d.path()).unwrap(), 0);
        std::fs::write(d.path().join("memory.failcnt"), "12\n").unwrap();
        assert_eq!(oom_kills(d.path()).unwrap(), 1);
    }
}
