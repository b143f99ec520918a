//! v1 `hugetlb`: per page size limits (`hugetlb.2MB.limit_in_bytes`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CgroupError, Result};
use crate::file::Tx;

pub fn apply(tx: &mut Tx, dir: &Path, limits: &BTreeMap<String, u64>) -> Result<()> {
    for (size, limit) in limits {
        let name = format!("hugetlb.{size}.limit_in_bytes");
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
        let limits = BTreeMap::from([("2MB".to_string(), 4u64 << 21), ("1GB".to_string(), 0)]);
        apply(&mut Tx::new(), d.path(), &limits).unwrap();
        assert_eq!(
            read_opt(d.path(), "hugetlb.2MB.limit_in_bytes").unwrap().unwrap(),
            "8388608"
        );
        assert_eq!(read_opt(d.path(), "hugetlb.1GB.limit_in_bytes").unwrap().unwrap(), "0");
    }
}
