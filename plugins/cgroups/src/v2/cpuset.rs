//! v2 `cpuset`: an empty `cpuset.cpus` means "the parent's" on v2, so nothing needs inheriting.

use std::path::Path;

use berth_core::plugin::resources::LinuxResources;

use crate::error::Result;
use crate::file::Tx;

pub fn apply(tx: &mut Tx, dir: &Path, r: &LinuxResources) -> Result<()> {
    if !r.cpuset_cpus.is_empty() {
        tx.write(dir, "cpuset.cpus", &r.cpuset_cpus)?;
    }
    if !r.cpuset_mems.is_empty() {
        tx.write(dir, "cpuset.mems", &r.cpuset_mems)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_opt;

    #[test]
    fn cpus_and_mems() {
        let d = tempfile::tempdir().unwrap();
        let r = LinuxResources {
            cpuset_cpus: "1".into(),
            cpuset_mems: "0".into(),
            ..Default::default()
        };
        apply(&mut Tx::new(), d.path(), &r).unwrap();
        assert_eq!(read_opt(d.path(), "cpuset.cpus").unwrap().unwrap(), "1");
        assert_eq!(read_opt(d.path(), "cpuset.mems").unwrap().unwrap(), "0");
    }
}
