//! The snapshotter conformance suite: every snapshotter runs the same cases (feature `testsuite`).
//!
//! Use from a snapshotter crate's tests:
//! ```ignore
//! berth_images::snapshotter_conformance!(|root: &std::path::Path| {
//!     std::sync::Arc::new(MySnapshotter::open(root).unwrap()) as std::sync::Arc<dyn Snapshotter>
//! });
//! ```
//! The cases mount what the snapshotter returns (as root), check real file contents, modes, owners,
//! xattrs, links and the mount table, and unmount on drop. [`LayerBuilder`] and [`mount_all`] are
//! public for other tests (image pulls) too.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::model::ChainId;
use berth_core::plugin::PluginError;
use berth_core::plugin::snapshot::{Mount, SnapshotKind, Snapshotter, UnpackLimits};
use nix::mount::{MntFlags, MsFlags};

/// Builds an uncompressed layer tar, entry by entry, with explicit owners, modes and xattrs.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder::new()
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32, owner: (u64, u64)) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_mtime(1_600_000_000);
    h
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, 0, mode, (0, 0));
        self.tar.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, (0, 0))
    }

    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, owner: (u64, u64)) -> Self {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, mode, owner);
        self.tar.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A regular file carrying extended attributes (PAX `SCHILY.xattr.*` records, as Docker writes them).
    pub fn file_xattrs(mut self, path: &str, data: &[u8], mode: u32, xattrs: &[(&str, &[u8])]) -> Self {
        let mut pax = Vec::new();
        for (k, v) in xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let h = header(tar::EntryType::XHeader, pax.len() as u64, 0o644, (0, 0));
        let mut h = h;
        h.set_path("PaxHeader").unwrap();
        h.set_cksum();
        self.tar.append(&h, pax.as_slice()).unwrap();
        self.file(path, data, mode)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0, 0o777, (0, 0));
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0, 0o644, (0, 0));
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    /// `.wh.<name>` next to `path`'s name: hides `path` from the layers below.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o644)
    }

    /// `<dir>/.wh..wh..opq`: hides everything below `dir` in the layers below.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// A regular file whose header holds `path` verbatim (`..`, absolute…): tar's own builder refuses those.
    pub fn raw_file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644, (0, 0));
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
        self
    }

    /// A symlink or hard link whose target is written verbatim.
    pub fn raw_link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = header(kind, 0, 0o777, (0, 0));
        h.set_path(path).unwrap();
        let link = &mut h.as_old_mut().linkname;
        link.fill(0);
        link[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.tar.append(&h, io::empty()).unwrap();
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.tar.into_inner().unwrap()
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n", where <len> counts itself.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + rest.to_string().len();
    if len.to_string().len() + rest != len {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// The diff id of an uncompressed layer.
pub fn diff_id(tar: &[u8]) -> String {
    berth_core::model::sha256_digest(tar)
}

/// The mounts of a snapshot, mounted at `target` until dropped (then detached).
pub struct MountGuard {
    target: PathBuf,
    mounted: usize,
}

impl MountGuard {
    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..self.mounted {
            if let Err(e) = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH) {
                eprintln!("cannot unmount {}: {e}", self.target.display());
            }
        }
    }
}

/// Mounts `mounts` at the absolute directory `target` as a mounter should: on a thread of its own whose
/// working directory is unshared, after `chdir` when a mount asks for it (short relative overlay paths).
pub fn mount_all(mounts: &[Mount], target: &Path) -> io::Result<MountGuard> {
    let mounts = mounts.to_vec();
    let tgt = target.to_path_buf();
    let mounted = std::thread::spawn(move || -> io::Result<usize> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        let mut n = 0;
        for m in &mounts {
            if let Some(dir) = &m.chdir {
                std::env::set_current_dir(dir)?;
            }
            let mut flags = MsFlags::empty();
            let mut data = Vec::new();
            for o in &m.options {
                match o.as_str() {
                    "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                    "bind" => flags |= MsFlags::MS_BIND,
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "rw" => {}
                    other => data.push(other.to_string()),
                }
            }
            let data = data.join(",");
            if flags.contains(MsFlags::MS_BIND) {
                let bind = flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
                nix::mount::mount(Some(m.source.as_str()), &tgt, None::<&str>, bind, None::<&str>)?;
                n += 1;
                if flags.contains(MsFlags::MS_RDONLY) {
                    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                    nix::mount::mount(None::<&str>, &tgt, None::<&str>, ro, None::<&str>)?;
                }
            } else {
                nix::mount::mount(
                    Some(m.source.as_str()),
                    &tgt,
                    Some(m.fstype.as_str()),
                    flags,
                    Some(data.as_str()),
                )?;
                n += 1;
            }
        }
        Ok(n)
    })
    .join()
    .map_err(|_| io::Error::other("the mount thread panicked"))??;
    Ok(MountGuard {
        target: target.to_path_buf(),
        mounted,
    })
}

/// True when `/proc/self/mountinfo` lists a mount point at `target`.
pub fn is_mounted(target: &Path) -> bool {
    let t = target.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(t.as_str()))
}

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Creates a snapshotter rooted at the given directory.
pub type Factory = dyn Fn(&Path) -> Arc<dyn Snapshotter> + Send + Sync;

/// A snapshotter in a fresh temp dir, with its layers applied from tars.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub snap: Arc<dyn Snapshotter>,
}

impl Fixture {
    pub fn new(new: &Factory) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let snap = new(&dir.path().join("root"));
        Fixture { dir, snap }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Applies the layers bottom first; returns their chain ids.
    pub async fn apply(&self, layers: &[Vec<u8>]) -> Vec<ChainId> {
        let diffs: Vec<String> = layers.iter().map(|l| diff_id(l)).collect();
        let chain = ChainId::from_diff_ids(&diffs);
        for (i, l) in layers.iter().enumerate() {
            let parent = if i == 0 { None } else { Some(&chain[i - 1]) };
            self.snap
                .apply_layer(
                    &chain[i],
                    parent,
                    Box::new(io::Cursor::new(l.clone())),
                    UnpackLimits::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("apply layer {i}: {e}"));
        }
        chain
    }
}

/// A layer with files of several modes and owners, xattrs, links, and things the next one hides.
pub fn base_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
        .hardlink("bin/tool2", "bin/tool")
        .dir("home", 0o755)
        .dir("home/user", 0o700)
        .file_owned("home/user/data", b"secret", 0o600, (1000, 1001))
        .file_xattrs(
            "xattr-file",
            b"x",
            0o640,
            &[("user.berth", b"yes"), ("security.berth", b"sec")],
        )
        .symlink("link", "etc/passwd")
        .symlink("abs-link", "/etc/passwd")
        .dir("opq", 0o755)
        .file("opq/a", b"a", 0o644)
        .dir("opq/sub", 0o755)
        .file("opq/sub/b", b"b", 0o644)
        .file("gone", b"gone", 0o644)
        .dir("gonedir", 0o755)
        .file("gonedir/x", b"x", 0o644)
        .build()
}

/// Whiteouts, an opaque directory and changes over [`base_layer`]; [`check_rootfs`] checks the result.
pub fn second_layer() -> Vec<u8> {
    LayerBuilder::new()
        .whiteout("gone")
        .whiteout("gonedir")
        .dir("opq", 0o750)
        .opaque("opq")
        .file("opq/new", b"new", 0o644)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/ash\n", 0o644)
        .file("l2file", b"layer two", 0o600)
        .build()
}

/// Checks the merged root of `base_layer` + `second_layer`.
pub fn check_rootfs(root: &Path) {
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let md = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("etc/passwd"), b"root:x:0:0:root:/root:/bin/ash\n");
    assert_eq!(md("etc/passwd").permissions().mode() & 0o7777, 0o644);
    assert_eq!(
        md("bin/tool").permissions().mode() & 0o7777,
        0o4755,
        "setuid bit survives chown"
    );
    assert_eq!(md("bin/tool").ino(), md("bin/tool2").ino(), "hard link");
    assert_eq!(md("bin/tool").nlink(), 2);
    let data = md("home/user/data");
    assert_eq!((data.uid(), data.gid(), data.mode() & 0o7777), (1000, 1001, 0o600));
    assert_eq!(md("home/user").mode() & 0o7777, 0o700);
    assert_eq!(md("etc/passwd").mtime(), 1_600_000_000);
    assert_eq!(
        get_xattr(&root.join("xattr-file"), "user.berth").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        get_xattr(&root.join("xattr-file"), "security.berth").as_deref(),
        Some(&b"sec"[..])
    );
    assert!(md("link").file_type().is_symlink());
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), Path::new("etc/passwd"));
    assert_eq!(
        std::fs::read_link(root.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(!root.join("gone").exists(), "whiteout hides a file");
    assert!(!root.join("gonedir").exists(), "whiteout hides a directory");
    assert!(!root.join("opq/a").exists(), "opaque dir hides lower files");
    assert!(!root.join("opq/sub").exists(), "opaque dir hides lower dirs");
    assert_eq!(read("opq/new"), b"new");
    assert_eq!(md("opq").mode() & 0o7777, 0o750);
    assert_eq!(read("l2file"), b"layer two");
    let names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".wh.")),
        "no whiteout file leaks: {names:?}"
    );
}

/// Two layers, a container snapshot over them: the mounted rootfs is the image; writes stay in the
/// container's snapshot.
pub async fn rootfs_matches_layers(new: &Factory) {
    let fx = Fixture::new(new);
    let chain = fx.apply(&[base_layer(), second_layer()]).await;
    assert!(fx.snap.has_layer(&chain[1]).await.unwrap());
    let mounts = fx.snap.prepare("c1", Some(&chain[1])).await.unwrap();
    assert_eq!(fx.snap.mounts("c1").await.unwrap(), mounts);
    {
        let m = mount_all(&mounts, &fx.mnt()).unwrap();
        assert!(is_mounted(m.target()));
        check_rootfs(m.target());
        std::fs::write(m.target().join("written-by-c1"), b"c1").unwrap();
        std::fs::remove_file(m.target().join("etc/passwd")).unwrap();
    }
    assert!(!is_mounted(&fx.mnt()));
    assert!(fx.snap.usage("c1").await.unwrap().inodes >= 1);

    // Another container over the same layers sees none of c1's changes.
    let mounts2 = fx.snap.prepare("c2", Some(&chain[1])).await.unwrap();
    {
        let m = mount_all(&mounts2, &fx.mnt()).unwrap();
        check_rootfs(m.target());
        assert!(!m.target().join("written-by-c1").exists());
    }
    // c1 keeps its own changes across mounts.
    {
        let m = mount_all(&fx.snap.mounts("c1").await.unwrap(), &fx.mnt()).unwrap();
        assert_eq!(std::fs::read(m.target().join("written-by-c1")).unwrap(), b"c1");
        assert!(!m.target().join("etc/passwd").exists());
    }
    fx.snap.remove("c1").await.unwrap();
    fx.snap.remove("c2").await.unwrap();
}

/// A view is read-only; a snapshot with no parent is an empty writable directory.
pub async fn views_and_empty_snapshots(new: &Factory) {
    let fx = Fixture::new(new);
    let chain = fx.apply(&[base_layer(), second_layer()]).await;
    let mounts = fx.snap.view("v1", &chain[1]).await.unwrap();
    {
        let m = mount_all(&mounts, &fx.mnt()).unwrap();
        check_rootfs(m.target());
        let err = std::fs::write(m.target().join("nope"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    }
    let base_view = fx.snap.view("v0", &chain[0]).await.unwrap();
    {
        let m = mount_all(&base_view, &fx.mnt()).unwrap();
        assert!(m.target().join("gone").exists());
        assert!(std::fs::write(m.target().join("nope"), b"x").is_err());
    }
    let empty = fx.snap.prepare("scratch", None).await.unwrap();
    {
        let m = mount_all(&empty, &fx.mnt()).unwrap();
        assert_eq!(std::fs::read_dir(m.target()).unwrap().count(), 0);
        std::fs::write(m.target().join("f"), b"x").unwrap();
    }
    for k in ["v1", "v0", "scratch"] {
        fx.snap.remove(k).await.unwrap();
    }
}

/// 128 layers, each adding a file and overwriting one: the container sees all of them, the top one wins.
/// The overlay option string of absolute paths would exceed a page.
pub async fn many_layers(new: &Factory) {
    const N: usize = 128;
    let fx = Fixture::new(new);
    let layers: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            LayerBuilder::new()
                .file(&format!("f{i:03}"), format!("{i}").as_bytes(), 0o644)
                .file("top", format!("{i}").as_bytes(), 0o644)
                .build()
        })
        .collect();
    let chain = fx.apply(&layers).await;
    let mounts = fx.snap.prepare("c", Some(&chain[N - 1])).await.unwrap();
    let absolute_len: usize = N * (fx.root().display().to_string().len() + 80);
    assert!(absolute_len > 4096, "the case must be one that needs short paths");
    for m in &mounts {
        assert!(m.options.join(",").len() < 4096, "mount options fit in a page");
    }
    let m = mount_all(&mounts, &fx.mnt()).unwrap();
    for i in 0..N {
        assert_eq!(
            std::fs::read(m.target().join(format!("f{i:03}"))).unwrap(),
            format!("{i}").as_bytes()
        );
    }
    assert_eq!(
        std::fs::read(m.target().join("top")).unwrap(),
        format!("{}", N - 1).as_bytes()
    );
}

/// walk, usage, removal rules, idempotent apply, duplicate keys, fs_info.
pub async fn bookkeeping(new: &Factory) {
    let fx = Fixture::new(new);
    let chain = fx.apply(&[base_layer(), second_layer()]).await;
    // Applying again is a no-op that does not even need the stream.
    let failing: Box<dyn Read + Send> = Box::new(FailingReader);
    fx.snap
        .apply_layer(&chain[1], Some(&chain[0]), failing, UnpackLimits::default())
        .await
        .unwrap();
    fx.snap.prepare("c", Some(&chain[1])).await.unwrap();
    let dup = fx.snap.prepare("c", Some(&chain[1])).await.unwrap_err();
    assert!(matches!(dup, PluginError::AlreadyExists(_)), "{dup}");
    let missing = fx
        .snap
        .prepare("d", Some(&ChainId("sha256:00".into())))
        .await
        .unwrap_err();
    assert!(matches!(missing, PluginError::NotFound(_)), "{missing}");
    let mut walked = fx.snap.walk().await.unwrap();
    walked.sort_by(|a, b| a.key.cmp(&b.key));
    let kinds: Vec<(String, SnapshotKind, Option<ChainId>)> =
        walked.into_iter().map(|i| (i.key, i.kind, i.parent)).collect();
    let mut expected = vec![
        ("c".to_string(), SnapshotKind::Active, Some(chain[1].clone())),
        (chain[0].0.clone(), SnapshotKind::Committed, None),
        (chain[1].0.clone(), SnapshotKind::Committed, Some(chain[0].clone())),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(kinds, expected);
    let u = fx.snap.usage(chain[0].as_str()).await.unwrap();
    assert!(u.bytes > 0 && u.inodes >= 10, "{u:?}");
    let info = fx.snap.fs_info().await.unwrap();
    assert!(info.mountpoint.starts_with(fx.root()));
    assert!(
        info.layers.bytes >= u.bytes && info.layers.inodes >= u.inodes,
        "{info:?}"
    );
    assert!(
        info.snapshots.inodes >= 1,
        "the active snapshot counts as a container snapshot: {info:?}"
    );
    // A layer under a snapshot cannot go; the snapshot first, then top-down.
    let busy = fx.snap.remove(chain[1].as_str()).await.unwrap_err();
    assert!(matches!(busy, PluginError::FailedPrecondition(_)), "{busy}");
    fx.snap.remove("c").await.unwrap();
    fx.snap.remove("c").await.unwrap();
    assert!(fx.snap.remove(chain[0].as_str()).await.is_err());
    fx.snap.remove(chain[1].as_str()).await.unwrap();
    fx.snap.remove(chain[0].as_str()).await.unwrap();
    assert!(fx.snap.walk().await.unwrap().is_empty());
    assert!(!fx.snap.has_layer(&chain[0]).await.unwrap());
    assert_eq!(
        count_files(&fx.root()),
        count_files_of_empty(new),
        "removal leaves nothing behind"
    );
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        n += 1;
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        }
    }
    n
}

fn count_files_of_empty(new: &Factory) -> usize {
    let fx = Fixture::new(new);
    count_files(&fx.root())
}

struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("this stream must not be read"))
    }
}

/// A stream that breaks off (or fails its digest check) at the end: nothing is committed.
struct BreaksAtEnd(io::Cursor<Vec<u8>>);

impl Read for BreaksAtEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "digest mismatch"));
        }
        Ok(n)
    }
}

/// Malicious layers are refused with an error naming the entry; nothing outside the store changes and no
/// partial layer is left.
pub async fn refuses_escapes(new: &Factory) {
    let fx = Fixture::new(new);
    let canary = fx.dir.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), b"keep").unwrap();
    let canary_s = canary.display().to_string();
    let before = count_files(&fx.root());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            LayerBuilder::new().raw_file("../../../canary/pwned", b"x").build(),
            "../../../canary/pwned",
        ),
        (
            "absolute",
            LayerBuilder::new().raw_file(&format!("{canary_s}/pwned"), b"x").build(),
            "absolute",
        ),
        (
            "symlink then write through",
            LayerBuilder::new()
                .symlink("evil", &canary_s)
                .file("evil/pwned", b"x", 0o644)
                .build(),
            "evil/pwned",
        ),
        (
            "relative symlink then write through",
            LayerBuilder::new()
                .symlink("evil", "../../../../../../../../..")
                .raw_file(&format!("evil{canary_s}/pwned"), b"x")
                .build(),
            "evil",
        ),
        (
            "hard link to outside",
            LayerBuilder::new()
                .raw_link(tar::EntryType::Link, "h", &format!("{canary_s}/keep"))
                .build(),
            "\"h\"",
        ),
        (
            "hard link with ..",
            LayerBuilder::new()
                .raw_link(tar::EntryType::Link, "h", "../../../canary/keep")
                .build(),
            "\"h\"",
        ),
        (
            "whiteout with ..",
            LayerBuilder::new().file("d/.wh...", b"", 0o644).build(),
            ".wh...",
        ),
    ];
    for (what, tar, named) in cases {
        let chain = ChainId(diff_id(&tar));
        let err = fx
            .snap
            .apply_layer(&chain, None, Box::new(io::Cursor::new(tar)), UnpackLimits::default())
            .await
            .expect_err(what);
        assert!(
            err.to_string().contains(named),
            "{what}: the error names the entry: {err}"
        );
        assert!(!fx.snap.has_layer(&chain).await.unwrap(), "{what}");
    }
    let names: Vec<_> = std::fs::read_dir(&canary)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keep")], "the canary is untouched");
    assert_eq!(std::fs::read(canary.join("keep")).unwrap(), b"keep");
    assert_eq!(std::fs::metadata(canary.join("keep")).unwrap().nlink(), 1);
    assert_eq!(count_files(&fx.root()), before, "no partial layer is left");

    // A stream failing at its very end (as a digest mismatch does) commits nothing either.
    let good = base_layer();
    let chain = ChainId(diff_id(&good));
    let err = fx
        .snap
        .apply_layer(
            &chain,
            None,
            Box::new(BreaksAtEnd(io::Cursor::new(good))),
            UnpackLimits::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!fx.snap.has_layer(&chain).await.unwrap());
    assert_eq!(count_files(&fx.root()), before);

    // A decompression bomb stops at the limit.
    let bomb = LayerBuilder::new().file("big", &vec![0u8; 1 << 20], 0o644).build();
    let limits = UnpackLimits {
        max_bytes: 1 << 19,
        max_entries: 10,
    };
    let chain = ChainId(diff_id(&bomb));
    let err = fx
        .snap
        .apply_layer(&chain, None, Box::new(io::Cursor::new(bomb)), limits)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(count_files(&fx.root()), before);
}

/// A reopened snapshotter knows its layers and snapshots.
pub async fn survives_reopen(new: &Factory) {
    let fx = Fixture::new(new);
    let chain = fx.apply(&[base_layer(), second_layer()]).await;
    let mounts = fx.snap.prepare("c", Some(&chain[1])).await.unwrap();
    let again = new(&fx.root());
    assert!(again.has_layer(&chain[0]).await.unwrap());
    assert!(again.has_layer(&chain[1]).await.unwrap());
    assert_eq!(again.mounts("c").await.unwrap(), mounts);
    let m = mount_all(&mounts, &fx.mnt()).unwrap();
    check_rootfs(m.target());
}

/// A snapshotter whose layers unpack independently takes a layer before its parent: the child waits for
/// the parent's commit and the chain mounts as usual. Others are not asked to.
pub async fn layers_out_of_order(new: &Factory) {
    let fx = Fixture::new(new);
    if !fx.snap.unpacks_independently() {
        return;
    }
    let layers = [base_layer(), second_layer()];
    let diffs: Vec<String> = layers.iter().map(|l| diff_id(l)).collect();
    let chain = ChainId::from_diff_ids(&diffs);
    let child = {
        let (snap, chain, tar) = (fx.snap.clone(), chain.clone(), layers[1].clone());
        tokio::spawn(async move {
            snap.apply_layer(
                &chain[1],
                Some(&chain[0]),
                Box::new(io::Cursor::new(tar)),
                UnpackLimits::default(),
            )
            .await
        })
    };
    // The child is unpacked but waits: nothing of it is visible before its parent.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!fx.snap.has_layer(&chain[1]).await.unwrap());
    assert!(!child.is_finished());
    fx.snap
        .apply_layer(
            &chain[0],
            None,
            Box::new(io::Cursor::new(layers[0].clone())),
            UnpackLimits::default(),
        )
        .await
        .unwrap();
    child.await.unwrap().unwrap();
    let mounts = fx.snap.prepare("c", Some(&chain[1])).await.unwrap();
    let m = mount_all(&mounts, &fx.mnt()).unwrap();
    check_rootfs(m.target());
    drop(m);
    fx.snap.remove("c").await.unwrap();
}

/// Whether a path is an overlay whiteout (a 0:0 character device).
pub fn is_whiteout(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Expands to one `#[tokio::test]` per conformance case for the snapshotter made by `$factory`
/// (an expression of type `impl Fn(&Path) -> Arc<dyn Snapshotter>`).
#[macro_export]
macro_rules! snapshotter_conformance {
    ($factory:expr) => {
        $crate::snapshotter_conformance!(@cases $factory;
            rootfs_matches_layers, views_and_empty_snapshots, many_layers, bookkeeping, refuses_escapes,
            survives_reopen, layers_out_of_order);
    };
    (@cases $factory:expr; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::snapshot_testsuite::$case(&$factory).await;
            }
        )*
    };
}
