//! v2 `unified`: the CRI's free-form cgroup v2 settings, written verbatim (keys checked in `limits`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CgroupError, Result};
use crate::file::Tx;

pub fn apply(tx: &mut Tx, dir: &Path, unified: &BTreeMap<String, String>) -> Result<()> {
    for (key, value) in unified {
        // A missing file is a controller not enabled (or not existing): say so rather than "not found".
        if !dir.join(key).exists() && dir.join("cgroup.procs").exists() {
            return Err(CgroupError::invalid(
                "unified",
                format!("{key}: no such cgroup v2 file (controller not available here?)"),
            ));
        }
        tx.write(dir, key, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_opt;

    #[test]
    fn verbatim() {
        let d = tempfile::tempdir().unwrap();
        let u = BTreeMap::from([("memory.high".to_string(), "50000000".to_string())]);
        apply(&mut Tx::new(), d.path(), &u).unwrap();
        assert_eq!(read_opt(d.path(), "memory.high").unwrap().unwrap(), "50000000");
    }
}
