//! Reads small files (/etc/passwd, /etc/group) of an image's root filesystem straight from a snapshot's
//! mount spec, without mounting: the first overlay layer (upper, then lowers top-down) that has the path wins,
//! and an overlay whiteout (a 0:0 character device) means the file was deleted. Symlinks are not followed:
//! a link could point outside the layer.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_core::plugin::snapshot::Mount;

/// The directories of the mount, top-most first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        let base = m.chdir.clone().unwrap_or_default();
        match m.fstype.as_str() {
            "overlay" => {
                let mut upper = None;
                let mut lowers = Vec::new();
                for o in &m.options {
                    if let Some(u) = o.strip_prefix("upperdir=") {
                        upper = Some(base.join(u));
                    } else if let Some(l) = o.strip_prefix("lowerdir=") {
                        lowers.extend(l.split(':').map(|p| base.join(p)));
                    }
                }
                dirs.extend(upper);
                dirs.extend(lowers);
            }
            "bind" | "rbind" | "none" => dirs.push(base.join(&m.source)),
            _ => {}
        }
    }
    dirs
}

/// The file at `path` (absolute inside the rootfs) as the container would see it, at most `limit` bytes.
pub fn read(mounts: &[Mount], path: &str, limit: u64) -> Option<Vec<u8>> {
    let rel = Path::new(path.trim_start_matches('/'));
    for dir in layer_dirs(mounts) {
        let p = dir.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            return None; // whiteout
        }
        if !ft.is_file() || meta.len() > limit {
            return None;
        }
        return std::fs::read(&p).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_layer_wins() {
        let d = tempfile::tempdir().unwrap();
        for (layer, text) in [("l1", "root:x:0:0::/root:/bin/sh\n"), ("l2", "new:x:5:5::/:/bin/sh\n")] {
            std::fs::create_dir_all(d.path().join(layer).join("etc")).unwrap();
            std::fs::write(d.path().join(layer).join("etc/passwd"), text).unwrap();
        }
        let m = Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=l2:l1".into()],
            chdir: Some(d.path().to_path_buf()),
        };
        assert_eq!(read(&[m], "/etc/passwd", 1 << 20).unwrap(), b"new:x:5:5::/:/bin/sh\n");
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
        let m = Mount {
            fstype: "bind".into(),
            source: d.path().display().to_string(),
            options: vec!["rbind".into()],
            chdir: None,
        };
        assert_eq!(read(&[m], "/etc/passwd", 1 << 20), None);
    }
}
