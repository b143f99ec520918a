//! The real [`Host`]: mount sources and device nodes read from the filesystem; seccomp profiles from a
//! function the daemon provides (the isolation plugin builds them).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;

use super::{Host, HostDevice, SeccompProfile};

/// Builds a seccomp profile for a process whose bounding set is the given capability mask.
pub type SeccompBuilder = fn(&SeccompProfile, u64) -> Result<LinuxSeccomp, String>;

/// [`Host`] over the real filesystem.
pub struct FsHost {
    pub seccomp: SeccompBuilder,
}

/// Directories under /dev that hold no devices a container should get (containerd's and runc's list).
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Major and minor of a `dev_t` (glibc's encoding).
pub fn major_minor(rdev: u64) -> (i64, i64) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x00ff);
    (major as i64, minor as i64)
}

fn device_of(path: &Path, meta: &std::fs::Metadata) -> Option<HostDevice> {
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return None;
    };
    let (major, minor) = major_minor(meta.rdev());
    Some(HostDevice {
        path: path.to_path_buf(),
        kind,
        major,
        minor,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

fn walk(dir: &Path, out: &mut Vec<HostDevice>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let name = e.file_name();
        if meta.is_dir() {
            if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                walk(&path, out)?;
            }
        } else if name != "console"
            && let Some(d) = device_of(&path, &meta)
        {
            out.push(d);
        }
    }
    Ok(())
}

impl Host for FsHost {
    fn resolve(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        match std::fs::canonicalize(path) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            let mut out = Vec::new();
            walk(path, &mut out)?;
            return Ok(out);
        }
        device_of(path, &meta)
            .map(|d| vec![d])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a device node"))
    }

    fn seccomp(&self, profile: &SeccompProfile, bounding: u64) -> Result<LinuxSeccomp, String> {
        (self.seccomp)(profile, bounding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> FsHost {
        FsHost {
            seccomp: |_, _| Err("none".into()),
        }
    }

    #[test]
    fn dev_t_decodes() {
        assert_eq!(major_minor(0x0103), (1, 3));
        assert_eq!(major_minor(0x0a_e5), (10, 229));
        // glibc's makedev(259, 65536) and makedev(4096, 1): the split encoding.
        assert_eq!(major_minor(0x1001_0300), (259, 65536));
        assert_eq!(major_minor(0x1000_0000_0001), (4096, 1));
    }

    #[test]
    fn real_null_device() {
        let d = host().devices(Path::new("/dev/null")).unwrap();
        assert_eq!((d[0].kind, d[0].major, d[0].minor), ('c', 1, 3));
        assert!(host().devices(Path::new("/etc/hostname")).is_err() || !Path::new("/etc/hostname").exists());
    }

    #[test]
    fn resolve_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(host().resolve(&missing).unwrap(), None);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert_eq!(host().resolve(&link).unwrap(), Some(dir.path().canonicalize().unwrap()));
    }

    #[test]
    fn walking_skips_links_and_non_devices() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("null-link")).unwrap();
        assert!(host().devices(dir.path()).unwrap().is_empty());
    }
}
