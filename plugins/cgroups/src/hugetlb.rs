//! `hugetlb`: per page size limits, the same on both versions but for the file name: v1
//! `hugetlb.<size>.limit_in_bytes`, v2 (and hybrid hosts whose hugetlb lives on the cgroup2 hierarchy)
//! `hugetlb.<size>.max`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CgroupError, Result};
use crate::file::Tx;

/// The limit file of one page size: `hugetlb.<size>.<LIMIT>`.
pub const V1_LIMIT: &str = "limit_in_bytes";
pub const V2_LIMIT: &str = "max";

/// Writes each page size's limit to `hugetlb.<size>.<limit_file>` (`limit_file`: [`V1_LIMIT`] or [`V2_LIMIT`]).
pub fn apply(tx: &mut Tx, dir: &Path, limits: &BTreeMap<String, u64>, limit_file: &str) -> Result<()> {
    for (size, limit) in limits {
        let name = format!("hugetlb.{size}.{limit_file}");
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
    fn writes_each_size_under_the_version_s_name() {
        let d = tempfile::tempdir().unwrap();
        let limits = BTreeMap::from([("2MB".to_string(), 4u64 << 21), ("1GB".to_string(), 0)]);
        apply(&mut Tx::new(), d.path(), &limits, V1_LIMIT).unwrap();
        assert_eq!(
            read_opt(d.path(), "hugetlb.2MB.limit_in_bytes").unwrap().unwrap(),
            "8388608"
        );
        assert_eq!(read_opt(d.path(), "hugetlb.1GB.limit_in_bytes").unwrap().unwrap(), "0");
        apply(&mut Tx::new(), d.path(), &limits, V2_LIMIT).unwrap();
        assert_eq!(read_opt(d.path(), "hugetlb.2MB.max").unwrap().unwrap(), "8388608");
    }

    #[test]
    fn an_unknown_page_size_is_invalid_in_a_real_cgroup() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "").unwrap();
        let limits = BTreeMap::from([("3MB".to_string(), 1u64)]);
        let e = apply(&mut Tx::new(), d.path(), &limits, V2_LIMIT).unwrap_err();
        assert!(matches!(e, CgroupError::Invalid { .. }), "{e}");
    }
}
