//! v2 `hugetlb`: `hugetlb.<size>.max` (also hybrid hosts whose hugetlb lives on the cgroup2 hierarchy).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CgroupError, Result};
use crate::file::Tx;

pub fn apply(tx: &mut Tx, dir: &Path, limits: &BTreeMap<String, u64>) -> Result<()> {
    for (size, limit) in limits {
        let name = format!("hugetlb.{size}.max");
        if !dir.join(&name).exists() && dir.join("cgroup.procs").exists() {
            return Err(CgroupError::invalid(
                "hugepage_limits",
                format!("no {size} huge pages on this node"),
            ));
        }
        tx.write(dir, &name, &limit.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_opt;

    #[test]
    fn writes_each_size() {
        let d = tempfile::tempdir().unwrap();
        apply(
            &mut Tx::new(),
            d.path(),
            &BTreeMap::from([("2MB".to_string(), 2u64 << 21)]),
        )
        .unwrap();
        assert_eq!(read_opt(d.path(), "hugetlb.2MB.max").unwrap().unwrap(), "4194304");
    }
}
