//! v1 `cpuacct`: CPU time used, in nanoseconds.

use std::path::Path;

use crate::error::Result;
use crate::file::read_u64;

pub fn usage_ns(dir: &Path) -> Result<u64> {
    read_u64(dir, "cpuacct.usage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpuacct.usage"), "1234567890\n").unwrap();
        assert_eq!(usage_ns(d.path()).unwrap(), 1_234_567_890);
    }
}
