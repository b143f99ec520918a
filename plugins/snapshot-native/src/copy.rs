//! A faithful directory copy: modes, owners, xattrs, times, symlinks, hard links, special files, and the
//! holes of sparse files. Both sides are the snapshotter's own directories, so plain paths are safe;
//! symlinks are never followed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek};
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
            copy_file(&from, &to)?;
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

/// Copies a regular file's data ranges only (`SEEK_DATA`/`SEEK_HOLE`), so a layer's sparse file (10 GiB of
/// holes, say) costs its data blocks in every copy, not its size: `std::fs::copy` goes through
/// `copy_file_range`, which writes holes out as zeros. A file system without hole support reports the
/// whole file as data.
fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    let src = File::open(from)?;
    let dst = File::create_new(to)?;
    let len = src.metadata()?.len();
    let mut pos = 0;
    while pos < len {
        let data = match rfs::seek(&src, rfs::SeekFrom::Data(pos)) {
            Ok(data) => data,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rfs::seek(&src, rfs::SeekFrom::Hole(data))?;
        (&src).seek(io::SeekFrom::Start(data))?;
        (&dst).seek(io::SeekFrom::Start(data))?;
        io::copy(&mut (&src).take(hole - data), &mut &dst)?;
        pos = hole;
    }
    dst.set_len(len)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn a_sparse_file_is_copied_with_its_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let f = File::create(src.join("big")).unwrap();
        f.set_len(1 << 30).unwrap();
        let blocks = [(4096, b"HEAD"), (512 << 20, b"MIDL")];
        for (at, text) in blocks {
            f.write_all_at(&text.repeat(1024), at).unwrap();
        }
        std::fs::write(src.join("small"), b"dense").unwrap();
        copy_tree(&src, &dst).unwrap();
        let copy = File::open(dst.join("big")).unwrap();
        let md = copy.metadata().unwrap();
        assert_eq!(md.len(), 1 << 30);
        assert!(md.blocks() * 512 < 1 << 20, "{} bytes allocated", md.blocks() * 512);
        let mut block = vec![0u8; 4096];
        for (at, text) in blocks {
            copy.read_exact_at(&mut block, at).unwrap();
            assert_eq!(block, text.repeat(1024), "at {at}");
        }
        copy.read_exact_at(&mut block, 0).unwrap();
        assert!(block.iter().all(|b| *b == 0), "a hole reads as zeros");
        assert_eq!(std::fs::read(dst.join("small")).unwrap(), b"dense");
    }
}
