//! Cgroup paths as kubelet's cgroupfs driver spells them: absolute, `/`-separated, relative to the root of every
//! hierarchy (`/kubepods/burstable/pod<uid>`), never to the daemon's own cgroup.

use std::path::{Path, PathBuf};

use berth_core::plugin::resources::CgroupPath;

use crate::error::{CgroupError, Result};

/// Checks a path given by a caller (kubelet's `cgroup_parent`, the config's default parent) and normalises it:
/// leading `/`, no trailing `/`, no empty, `.` or `..` components.
pub fn parse(what: &str, s: &str) -> Result<CgroupPath> {
    if s.ends_with(".slice") && !s.contains('/') {
        return Err(CgroupError::invalid(
            what,
            format!(
                "{s:?} is a systemd slice name, but the cgroup driver is cgroupfs (set kubelet's cgroupDriver to cgroupfs)"
            ),
        ));
    }
    if !s.starts_with('/') {
        return Err(CgroupError::invalid(
            what,
            format!("{s:?} must be an absolute cgroup path"),
        ));
    }
    let mut out = String::new();
    for part in s.split('/').filter(|p| !p.is_empty()) {
        check_name(what, part)?;
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        return Err(CgroupError::invalid(what, "the root cgroup cannot be used"));
    }
    Ok(CgroupPath(out))
}

/// One path component: a pod or container id, or one level of a parent.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(CgroupError::invalid(
            what,
            format!("{name:?} is not a valid cgroup name"),
        ));
    }
    if name.len() > 255 {
        return Err(CgroupError::invalid(what, format!("{name:?} is longer than 255 bytes")));
    }
    Ok(())
}

pub fn child(parent: &CgroupPath, name: &str) -> Result<CgroupPath> {
    check_name("cgroup name", name)?;
    Ok(CgroupPath(format!("{}/{name}", parent.as_str().trim_end_matches('/'))))
}

/// The directory of `path` in a hierarchy mounted at `mount` (the hierarchy's root).
pub fn dir_in(mount: &Path, path: &CgroupPath) -> PathBuf {
    mount.join(path.as_str().trim_start_matches('/'))
}

/// `/a/b/c` → `/a/b`; `None` for a top-level path.
pub fn parent(path: &CgroupPath) -> Option<CgroupPath> {
    let s = path.as_str();
    match s.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(CgroupPath(s[..i].to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_parents_are_kept_as_given() {
        assert_eq!(
            parse("p", "/kubepods/burstable/pod123").unwrap().as_str(),
            "/kubepods/burstable/pod123"
        );
        assert_eq!(parse("p", "//berth//x/").unwrap().as_str(), "/berth/x");
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["", "/", "berth", "/a/../b", "/a/./b", "kubepods-burstable-pod1.slice"] {
            assert!(matches!(parse("p", bad), Err(CgroupError::Invalid { .. })), "{bad}");
        }
        assert!(child(&CgroupPath("/a".into()), "x/y").is_err());
    }

    #[test]
    fn dirs_and_parents() {
        let p = CgroupPath("/berth/pod/ctr".into());
        assert_eq!(
            dir_in(Path::new("/sys/fs/cgroup/memory"), &p),
            PathBuf::from("/sys/fs/cgroup/memory/berth/pod/ctr")
        );
        assert_eq!(parent(&p).unwrap().as_str(), "/berth/pod");
        assert_eq!(parent(&CgroupPath("/berth".into())), None);
    }
}
