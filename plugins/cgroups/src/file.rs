//! Reading and writing cgroup interface files, and [`Tx`]: a series of writes that can be undone, so a refused
//! value leaves the old limits in force.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{CgroupError, Result};

/// The file's content without the trailing newline; `None` when it does not exist.
pub fn read_opt(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim_end().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::read(path, e)),
    }
}

/// A single number; `max` (and v1's "unlimited" values of 2^63 rounded down to a page) read as `None`.
pub fn parse_limit(path: &Path, s: &str) -> Result<Option<u64>> {
    if s == "max" {
        return Ok(None);
    }
    let v: u64 = s.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        message: format!("{s:?} is not a number"),
    })?;
    Ok(if v >= V1_UNLIMITED_FLOOR { None } else { Some(v) })
}

/// v1 reports "no limit" as `PAGE_COUNTER_MAX * PAGE_SIZE` (9223372036854771712 with 4 KiB pages).
pub const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// A number file, 0 when absent (a controller not enabled here).
pub fn read_u64(dir: &Path, name: &str) -> Result<u64> {
    match read_opt(dir, name)? {
        None => Ok(0),
        Some(s) => s.trim().parse().map_err(|_| CgroupError::Parse {
            path: dir.join(name),
            message: format!("{s:?} is not a number"),
        }),
    }
}

/// A flat-keyed file (`memory.stat`, `cpu.stat`, `memory.events`, v1 `memory.oom_control`): `key value` lines.
/// Empty when the file is absent.
pub fn read_keyed(dir: &Path, name: &str) -> Result<BTreeMap<String, u64>> {
    Ok(read_opt(dir, name)?.map(|s| parse_keyed(&s)).unwrap_or_default())
}

pub fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Pids listed in a `cgroup.procs` file (empty when the cgroup is gone).
pub fn read_pids(dir: &Path) -> Result<Vec<i32>> {
    Ok(read_opt(dir, "cgroup.procs")?
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default())
}

/// Writes one value in one `write(2)` (cgroup files take a value per write).
pub fn write(dir: &Path, name: &str, value: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, value).map_err(|e| CgroupError::write(path, value, e))
}

/// Writes that remember the values they replaced. On failure the caller calls [`Tx::rollback`]; on success it
/// drops the transaction. Write-only files (v1 `devices.allow`) cannot be restored and are not recorded.
#[derive(Debug, Default)]
pub struct Tx {
    undo: Vec<(PathBuf, String)>,
}

impl Tx {
    pub fn new() -> Self {
        Tx::default()
    }

    pub fn write(&mut self, dir: &Path, name: &str, value: &str) -> Result<()> {
        let path = dir.join(name);
        let old = std::fs::read_to_string(&path).ok().map(|s| s.trim_end().to_string());
        std::fs::write(&path, value).map_err(|e| CgroupError::write(path.clone(), value, e))?;
        if let Some(old) = old.filter(|o| o != value && !o.is_empty()) {
            self.undo.push((path, old));
        }
        Ok(())
    }

    /// Restores the old values, newest first. Failures are logged: the first error is what the caller reports.
    pub fn rollback(self) {
        for (path, old) in self.undo.into_iter().rev() {
            if let Err(e) = std::fs::write(&path, &old) {
                tracing::warn!(path = %path.display(), old = %old, error = %e, "cannot restore a cgroup value");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let m = parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        assert_eq!(m["oom_kill"], 3);
        assert_eq!(m["under_oom"], 0);
    }

    #[test]
    fn limits_parse() {
        let p = Path::new("x");
        assert_eq!(parse_limit(p, "max").unwrap(), None);
        assert_eq!(parse_limit(p, "9223372036854771712").unwrap(), None);
        assert_eq!(parse_limit(p, "33554432").unwrap(), Some(32 << 20));
        assert!(parse_limit(p, "lots").is_err());
    }

    #[test]
    fn rollback_restores_in_reverse() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1\n").unwrap();
        std::fs::write(d.path().join("b"), "max\n").unwrap();
        let mut tx = Tx::new();
        tx.write(d.path(), "a", "2").unwrap();
        tx.write(d.path(), "b", "5").unwrap();
        tx.write(d.path(), "a", "3").unwrap();
        assert_eq!(read_opt(d.path(), "a").unwrap().unwrap(), "3");
        tx.rollback();
        assert_eq!(read_opt(d.path(), "a").unwrap().unwrap(), "1");
        assert_eq!(read_opt(d.path(), "b").unwrap().unwrap(), "max");
    }
}
