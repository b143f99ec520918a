//! v2 `cpu`: `cpu.weight` from shares, `cpu.max` from quota and period, usage from `cpu.stat`.

use std::path::Path;

use berth_core::plugin::resources::LinuxResources;

use crate::convert;
use crate::error::Result;
use crate::file::{Tx, read_keyed};

pub fn apply(tx: &mut Tx, dir: &Path, r: &LinuxResources) -> Result<()> {
    if r.cpu_shares > 0 {
        tx.write(
            dir,
            "cpu.weight",
            &convert::shares_to_weight(r.cpu_shares as u64).to_string(),
        )?;
    }
    if let Some(max) = convert::cpu_max(r.cpu_quota, r.cpu_period) {
        tx.write(dir, "cpu.max", &max)?;
    }
    Ok(())
}

/// `usage_usec` of `cpu.stat`, in nanoseconds.
pub fn usage_ns(dir: &Path) -> Result<u64> {
    Ok(read_keyed(dir, "cpu.stat")?.get("usage_usec").copied().unwrap_or(0) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_opt;

    #[test]
    fn weight_and_max() {
        let d = tempfile::tempdir().unwrap();
        let r = LinuxResources {
            cpu_shares: 1024,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        apply(&mut Tx::new(), d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), "cpu.weight").unwrap().unwrap(), "100");
        assert_eq!(read_opt(d.path(), "cpu.max").unwrap().unwrap(), "20000 100000");
    }

    /// cpu.stat of a real cgroup2 cgroup (Debian's 6.1 kernel in the test VM; `print_real_v2_samples`).
    const CPU_STAT: &str = "usage_usec 786704\nuser_usec 4655\nsystem_usec 782049\nnr_periods 0\nnr_throttled 0\n\
throttled_usec 0\nnr_bursts 0\nburst_usec 0\n";

    #[test]
    fn usage_from_cpu_stat() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpu.stat"), CPU_STAT).unwrap();
        assert_eq!(usage_ns(d.path()).unwrap(), 786704 * 1000);
    }
}
