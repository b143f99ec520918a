//! A faithful directory copy: modes, owners, xattrs, times, symlinks, hard links, special files.
//! Both sides are the snapshotter's own directories, so plain paths are safe; symlinks are never followed.

use std::collections::HashMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// Copies the content of directory `src` into the existing directory `dst` (and `src`'s own metadata
/// onto `dst`).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mut links = HashMap::new();
    copy_dir_content(src, dst, &mut links)?;
    copy_meta(src, dst, &std::fs::symlink_metadata(src)?)
}

fn copy_dir_content(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for item in std::fs::read_dir(src)? {
        let item = item?;
        let from = item.path();
        let to = dst.join(item.file_name());
        let md = std::fs::symlink_metadata(&from)?;
        let ft = md.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
            copy_dir_content(&from, &to, links)?;
            copy_meta(&from, &to, &md)?;
            continue;
        }
        if md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                std::fs::hard_link(first, &to)?;
                continue;
            }
            links.insert((md.dev(), md.ino()), to.clone());
        }
        if ft.is_file() {
            std::fs::copy(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else {
            let kind = FileType::from_raw_mode(md.mode());
            let dev = md.rdev();
            rfs::mknodat(CWD, &to, kind, Mode::from_raw_mode(md.mode() & 0o7777), dev)?;
        }
        copy_meta(&from, &to, &md)?;
    }
    Ok(())
}

fn copy_meta(from: &Path, to: &Path, md: &std::fs::Metadata) -> io::Result<()> {
    let symlink = md.file_type().is_symlink();
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    if !symlink {
        // After chown, which clears set-id bits.
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    copy_xattrs(from, to, symlink)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    };
    rfs::utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn copy_xattrs(from: &Path, to: &Path, symlink: bool) -> io::Result<()> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rfs::llistxattr(from, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; 64 * 1024];
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let len = rfs::lgetxattr(from, name, &mut value[..])?;
        match rfs::lsetxattr(to, name, &value[..len], XattrFlags::empty()) {
            Ok(()) => {}
            // Some namespaces (user.*) cannot be set on symlinks; nothing to carry then.
            Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP) if symlink => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
