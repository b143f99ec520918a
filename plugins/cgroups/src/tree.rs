//! The cgroup directory tree of one path across hierarchies: creating it level by level (remembering what this
//! call created, to undo exactly that), listing children, collecting pids, removing it leaves first.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{CgroupError, Result};
use crate::file::read_pids;

/// Creates `rel` (a relative path like `berth/pod1/ctr`) under `mount`, parents included. Returns the
/// directories created, outermost first. An error removes what was created.
pub fn create(mount: &Path, rel: &str) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut dir = mount.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                undo(&created);
                return Err(CgroupError::Create { path: dir, source: e });
            }
        }
    }
    Ok(created)
}

/// Removes directories `create` made, innermost first (they are empty: nothing joined them yet).
pub fn undo(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if let Err(e) = std::fs::remove_dir(d) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot remove a cgroup created by a failed call");
        }
    }
}

/// Names of the child cgroups of `dir` (empty when `dir` does not exist).
pub fn children(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CgroupError::read(dir.to_path_buf(), e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| CgroupError::read(dir.to_path_buf(), e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The pids in `dir` and every cgroup below it.
pub fn pids_recursive(dir: &Path) -> Result<Vec<i32>> {
    let mut pids = read_pids(dir)?;
    for c in children(dir)? {
        pids.extend(pids_recursive(&dir.join(c))?);
    }
    Ok(pids)
}

/// Removes `dir` and its child cgroups, leaves first. Missing is fine. A cgroup whose last process just died can
/// refuse `rmdir` with EBUSY for a moment: retried briefly.
pub fn remove(dir: &Path) -> Result<()> {
    for c in children(dir)? {
        remove(&dir.join(c))?;
    }
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_reports_only_new_levels_and_remove_is_recursive() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("berth")).unwrap();
        let made = create(d.path(), "berth/pod/ctr").unwrap();
        assert_eq!(made, vec![d.path().join("berth/pod"), d.path().join("berth/pod/ctr")]);
        assert_eq!(children(&d.path().join("berth")).unwrap(), vec!["pod".to_string()]);
        undo(&made);
        assert!(!d.path().join("berth/pod").exists());
        create(d.path(), "berth/pod/a").unwrap();
        create(d.path(), "berth/pod/b").unwrap();
        remove(&d.path().join("berth/pod")).unwrap();
        assert!(!d.path().join("berth/pod").exists());
        remove(&d.path().join("berth/pod")).unwrap();
    }
}
