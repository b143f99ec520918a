//! v1 `pids` (the same files as v2's): the process-count limit.

use std::path::Path;

use crate::error::Result;
use crate::file::{Tx, read_u64};

/// `None`: leave as is; `Some(n)` with n ≤ 0: no limit.
pub fn apply(tx: &mut Tx, dir: &Path, limit: Option<i64>) -> Result<()> {
    match limit {
        None => Ok(()),
        Some(n) if n <= 0 => tx.write(dir, "pids.max", "max"),
        Some(n) => tx.write(dir, "pids.max", &n.to_string()),
    }
}

pub fn current(dir: &Path) -> Result<u64> {
    read_u64(dir, "pids.current")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_opt;

    #[test]
    fn limit_and_unlimited() {
        let d = tempfile::tempdir().unwrap();
        apply(&mut Tx::new(), d.path(), Some(20)).unwrap();
        assert_eq!(read_opt(d.path(), "pids.max").unwrap().unwrap(), "20");
        apply(&mut Tx::new(), d.path(), Some(-1)).unwrap();
        assert_eq!(read_opt(d.path(), "pids.max").unwrap().unwrap(), "max");
        std::fs::write(d.path().join("pids.current"), "7\n").unwrap();
        assert_eq!(current(d.path()).unwrap(), 7);
    }
}
