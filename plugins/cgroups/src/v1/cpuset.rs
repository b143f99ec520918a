//! v1 `cpuset`: a new cgroup starts with empty `cpus` and `mems` (no process may join it), so each level berth
//! creates inherits its parent's first, as runc and kubelet do.

use std::path::Path;

use berth_core::plugin::resources::LinuxResources;

use crate::error::Result;
use crate::file::{Tx, read_opt, write};

pub fn apply(tx: &mut Tx, dir: &Path, r: &LinuxResources) -> Result<()> {
    if !r.cpuset_cpus.is_empty() {
        tx.write(dir, "cpuset.cpus", &r.cpuset_cpus)?;
    }
    if !r.cpuset_mems.is_empty() {
        tx.write(dir, "cpuset.mems", &r.cpuset_mems)?;
    }
    Ok(())
}

/// Copies `cpus` and `mems` from `parent` into `dir` where `dir`'s are empty.
pub fn inherit(parent: &Path, dir: &Path) -> Result<()> {
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let mine = read_opt(dir, name)?.unwrap_or_default();
        if mine.is_empty()
            && let Some(theirs) = read_opt(parent, name)?.filter(|v| !v.is_empty())
        {
            write(dir, name, &theirs)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherits_from_the_parent_then_applies() {
        let d = tempfile::tempdir().unwrap();
        let child = d.path().join("c");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(d.path().join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(d.path().join("cpuset.mems"), "0\n").unwrap();
        std::fs::write(child.join("cpuset.cpus"), "\n").unwrap();
        inherit(d.path(), &child).unwrap();
        assert_eq!(read_opt(&child, "cpuset.cpus").unwrap().unwrap(), "0-3");
        assert_eq!(read_opt(&child, "cpuset.mems").unwrap().unwrap(), "0");
        let r = LinuxResources {
            cpuset_cpus: "1".into(),
            ..Default::default()
        };
        apply(&mut Tx::new(), &child, &r).unwrap();
        assert_eq!(read_opt(&child, "cpuset.cpus").unwrap().unwrap(), "1");
        assert_eq!(read_opt(&child, "cpuset.mems").unwrap().unwrap(), "0");
    }
}
