//! v1 `cpu`: shares and CFS bandwidth.

use std::path::Path;

use berth_core::plugin::resources::LinuxResources;

use crate::error::Result;
use crate::file::Tx;

pub fn apply(tx: &mut Tx, dir: &Path, r: &LinuxResources) -> Result<()> {
    if r.cpu_shares > 0 {
        tx.write(dir, "cpu.shares", &r.cpu_shares.to_string())?;
    }
    // The period first: a quota is checked against the period in force (runc's order). A period refused because
    // of the current quota is retried after it.
    let period_first = r.cpu_period > 0 && tx.write(dir, "cpu.cfs_period_us", &r.cpu_period.to_string()).is_ok();
    if r.cpu_quota != 0 {
        tx.write(dir, "cpu.cfs_quota_us", &r.cpu_quota.to_string())?;
    }
    if r.cpu_period > 0 && !period_first {
        tx.write(dir, "cpu.cfs_period_us", &r.cpu_period.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_opt;

    #[test]
    fn writes_shares_quota_and_period() {
        let d = tempfile::tempdir().unwrap();
        let r = LinuxResources {
            cpu_shares: 204,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        apply(&mut Tx::new(), d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), "cpu.shares").unwrap().unwrap(), "204");
        assert_eq!(read_opt(d.path(), "cpu.cfs_quota_us").unwrap().unwrap(), "20000");
        assert_eq!(read_opt(d.path(), "cpu.cfs_period_us").unwrap().unwrap(), "100000");
    }

    #[test]
    fn unset_values_are_not_written() {
        let d = tempfile::tempdir().unwrap();
        apply(&mut Tx::new(), d.path(), &LinuxResources::default()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
