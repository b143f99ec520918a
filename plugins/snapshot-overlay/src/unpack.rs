//! Safe layer unpacking: one uncompressed tar stream into one directory, entry by entry.
//!
//! Every file-system call is made relative to a directory fd that was reached from the layer root one
//! component at a time with `O_NOFOLLOW`, so no entry can create or change anything outside the layer:
//! - `..` components and absolute paths are refused, naming the entry;
//! - a path whose parent goes through a symlink (symlink-then-write-through) is refused;
//! - a hard link must name a file inside the layer by a clean path, and is made with `linkat` (no follow);
//! - an existing name is unlinked before it is replaced, so writing never goes through an old link;
//! - device nodes are neutralised (skipped with a warning): a container gets its `/dev` elsewhere;
//! - the bytes written and the entry count are bounded ([`UnpackLimits`]), against decompression bombs;
//! - sparse files (GNU and PAX encodings) keep their holes ([`crate::sparse`]); their real size counts.
//!
//! OCI whiteouts are turned into overlay whiteouts ([`Whiteouts::Overlay`]: `.wh.name` → a 0:0 character
//! device, `.wh..wh..opq` → `trusted.overlay.opaque=y`) or applied by deleting the lower content from a
//! full copy ([`Whiteouts::Delete`], for the native snapshotter).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use berth_core::plugin::PluginError;
use berth_core::plugin::snapshot::{UnpackLimits, Usage};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::sparse::{PaxSparse, SparseError, copy_with_holes};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to make a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How OCI whiteout entries are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// Into overlayfs whiteouts inside the layer's own directory.
    Overlay,
    /// By deleting what they hide from the directory, which holds a full copy of the lower layers.
    Delete,
}

/// Why a layer could not be unpacked. Every variant names the offending tar entry where there is one.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?}: a path with a `..` component is refused")]
    DotDot { entry: String },
    #[error("layer entry {entry:?}: an absolute path is refused")]
    Absolute { entry: String },
    #[error("layer entry {entry:?}: its path goes through the symlink {component:?}, which is refused")]
    ThroughSymlink { entry: String, component: String },
    #[error("layer entry {entry:?}: {component:?} is not a directory")]
    NotADirectory { entry: String, component: String },
    #[error("layer entry {entry:?}: hard link to {target:?}: {reason}")]
    HardLink {
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error("layer entry {entry:?}: invalid whiteout")]
    BadWhiteout { entry: String },
    #[error("layer unpacks to more than the limit of {limit} bytes (entry {entry:?})")]
    TooManyBytes { entry: String, limit: u64 },
    #[error("layer has more than the limit of {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("layer entry {entry:?}: sparse file: {source}")]
    Sparse {
        entry: String,
        #[source]
        source: SparseError,
    },
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer stream: {0}")]
    Read(#[source] io::Error),
}

impl UnpackError {
    /// True when the layer itself is at fault (refused content), false for I/O trouble.
    pub fn is_refusal(&self) -> bool {
        match self {
            UnpackError::Io { .. } | UnpackError::Read(_) => false,
            UnpackError::Sparse { source, .. } => source.is_refusal(),
            _ => true,
        }
    }
}

impl From<UnpackError> for PluginError {
    fn from(e: UnpackError) -> Self {
        match e {
            UnpackError::Read(source) => PluginError::io("reading the layer stream", source),
            refused if refused.is_refusal() => PluginError::InvalidArgument(refused.to_string()),
            io => PluginError::Internal(io.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, UnpackError>;

/// Unpacks `tar` into the existing directory `root`. Reads the stream to its end (so a verifying reader
/// can report a digest mismatch), and returns what was written.
pub fn unpack(tar: impl Read, root: &Path, mode: Whiteouts, limits: UnpackLimits) -> Result<Usage> {
    let root_fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        entry: root.display().to_string(),
        op: "open the layer directory",
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root: root_fd,
        mode,
        limits,
        bytes: 0,
        entries: 0,
        created: HashSet::new(),
        opaque: Vec::new(),
        dir_times: Vec::new(),
        cache: None,
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let entry = entry.map_err(UnpackError::Read)?;
        u.entry(entry)?;
    }
    // Drain the padding and whatever follows the end-of-archive blocks: the stream's own checks run at EOF.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(UnpackError::Read)?;
    u.finish()?;
    Ok(Usage {
        bytes: u.bytes,
        inodes: u.entries,
    })
}

/// A clean relative path: its normal components only.
type Rel = Vec<OsString>;

fn clean(raw: &Path, entry: &str) -> Result<Rel> {
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::DotDot { entry: entry.into() }),
            Component::RootDir | Component::Prefix(_) => return Err(UnpackError::Absolute { entry: entry.into() }),
        }
    }
    Ok(out)
}

fn rel_string(rel: &[OsString]) -> String {
    rel.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        op,
        source: e.into(),
    }
}

struct Unpacker {
    root: OwnedFd,
    mode: Whiteouts,
    limits: UnpackLimits,
    bytes: u64,
    entries: u64,
    /// Paths this layer created (for opaque directories in `Delete` mode).
    created: HashSet<Rel>,
    /// Directories marked opaque (`Delete` mode), applied once every entry is in.
    opaque: Vec<Rel>,
    /// Directory mtimes, set last since adding children changes them.
    dir_times: Vec<(Rel, i64)>,
    /// The last parent directory opened, by path.
    cache: Option<(Rel, OwnedFd)>,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = rfs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker {
    /// Opens the directory `rel` below the root one component at a time without following symlinks,
    /// creating missing components (mode 0755) when `create` is set.
    fn open_dir(&mut self, rel: &[OsString], entry: &str, create: bool) -> Result<OwnedFd> {
        if let Some((path, fd)) = &self.cache
            && path.as_slice() == rel
        {
            return fd.try_clone().map_err(|e| UnpackError::Io {
                entry: entry.into(),
                op: "dup a directory fd",
                source: e,
            });
        }
        let mut cur = self.root.try_clone().map_err(|e| UnpackError::Io {
            entry: entry.into(),
            op: "dup the layer root fd",
            source: e,
        })?;
        for (i, comp) in rel.iter().enumerate() {
            let next = match rfs::openat(&cur, comp.as_os_str(), dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&cur, comp.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err(entry, "create a parent directory")(e)),
                    }
                    self.created.insert(rel[..=i].to_vec());
                    rfs::openat(&cur, comp.as_os_str(), dir_flags(), Mode::empty())
                        .map_err(io_err(entry, "open a parent directory"))?
                }
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let component = rel_string(&rel[..=i]);
                    let st = rfs::statat(&cur, comp.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io_err(entry, "stat a parent directory"))?;
                    return Err(if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                        UnpackError::ThroughSymlink {
                            entry: entry.into(),
                            component,
                        }
                    } else {
                        UnpackError::NotADirectory {
                            entry: entry.into(),
                            component,
                        }
                    });
                }
                Err(e) => return Err(io_err(entry, "open a parent directory")(e)),
            };
            cur = next;
        }
        let keep = cur.try_clone().map_err(|e| UnpackError::Io {
            entry: entry.into(),
            op: "dup a directory fd",
            source: e,
        })?;
        self.cache = Some((rel.to_vec(), keep));
        Ok(cur)
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let kind = e.header().entry_type();
        let pax = pax_records(&mut e)?;
        let sparse = match kind.is_file() {
            true => PaxSparse::from_records(&pax).map_err(|source| UnpackError::Sparse {
                entry: e.path_bytes().escape_ascii().to_string(),
                source,
            })?,
            false => None,
        };
        // A PAX sparse file's header names a `GNUSparseFile.<pid>/` path; its real one is a record (checked
        // below like any other path).
        let raw = match sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => e.path().map_err(UnpackError::Read)?.into_owned(),
        };
        let entry = raw.display().to_string();
        let rel = clean(&raw, &entry)?;
        let Some((name, parent)) = rel.split_last() else {
            // The layer root itself (`./`): its metadata belongs to the snapshot root, leave it.
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent, name, &entry);
        }
        if kind.is_character_special() || kind.is_block_special() {
            tracing::warn!(entry = %entry, "device node in a layer skipped");
            return Ok(());
        }
        // The real size of a sparse file (the tar crate's `size` of a GNU one), holes included.
        let size = match &sparse {
            Some(s) => s.real_size,
            None => e.header().size().map_err(UnpackError::Read)?,
        };
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(UnpackError::TooManyBytes {
                entry,
                limit: self.limits.max_bytes,
            });
        }
        let dir = self.open_dir(parent, &entry, true)?;
        let is_dir = kind.is_dir();
        self.clear_name(&dir, name, is_dir, &entry)?;
        self.created.insert(rel.clone());

        let header = e.header().clone();
        let mode = Mode::from_raw_mode(header.mode().map_err(UnpackError::Read)? & 0o7777);
        let uid = header.uid().map_err(UnpackError::Read)? as u32;
        let gid = header.gid().map_err(UnpackError::Read)? as u32;
        let mtime = header.mtime().map_err(UnpackError::Read)? as i64;
        let owner = (Some(rfs::Uid::from_raw(uid)), Some(rfs::Gid::from_raw(gid)));
        let xattrs = xattrs_of(&pax);

        if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
            let fd = rfs::openat(
                &dir,
                name.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io_err(&entry, "create the file"))?;
            let mut file = std::fs::File::from(fd);
            self.bytes += self.file_content(&mut e, &mut file, sparse.as_ref(), kind, &entry)?;
            rfs::fchown(&file, owner.0, owner.1).map_err(io_err(&entry, "chown"))?;
            rfs::fchmod(&file, mode).map_err(io_err(&entry, "chmod"))?;
            set_xattrs(&file, &xattrs, &entry)?;
            rfs::futimens(&file, &timestamps(mtime)).map_err(io_err(&entry, "set times"))?;
        } else if is_dir {
            match rfs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(err) => return Err(io_err(&entry, "mkdir")(err)),
            }
            let fd = rfs::openat(&dir, name.as_os_str(), dir_flags(), Mode::empty())
                .map_err(io_err(&entry, "open the directory"))?;
            rfs::fchown(&fd, owner.0, owner.1).map_err(io_err(&entry, "chown"))?;
            rfs::fchmod(&fd, mode).map_err(io_err(&entry, "chmod"))?;
            set_xattrs(&fd, &xattrs, &entry)?;
            self.dir_times.push((rel, mtime));
        } else if kind.is_symlink() {
            let target = e
                .link_name()
                .map_err(UnpackError::Read)?
                .ok_or_else(|| UnpackError::Io {
                    entry: entry.clone(),
                    op: "read the symlink target",
                    source: io::Error::new(io::ErrorKind::InvalidData, "no link name"),
                })?
                .into_owned();
            // The target is data: it is never followed here, and only resolved inside the container.
            rfs::symlinkat(target.as_os_str(), &dir, name.as_os_str()).map_err(io_err(&entry, "symlink"))?;
            rfs::chownat(&dir, name.as_os_str(), owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err(&entry, "chown the symlink"))?;
            rfs::utimensat(&dir, name.as_os_str(), &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err(&entry, "set the symlink's times"))?;
        } else if kind.is_hard_link() {
            self.hard_link(&mut e, &dir, name, &entry)?;
        } else if kind.is_fifo() {
            rfs::mknodat(&dir, name.as_os_str(), FileType::Fifo, mode, 0).map_err(io_err(&entry, "mkfifo"))?;
            rfs::chownat(&dir, name.as_os_str(), owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err(&entry, "chown"))?;
            rfs::chmodat(&dir, name.as_os_str(), mode, AtFlags::empty()).map_err(io_err(&entry, "chmod"))?;
        } else {
            tracing::warn!(entry = %entry, kind = ?kind, "tar entry of an unsupported type skipped");
        }
        Ok(())
    }

    /// Writes a regular entry's content into `file` (a sparse one with its holes), at most the room left
    /// under the byte limit; returns the file's size.
    fn file_content(
        &self,
        e: &mut impl Read,
        file: &mut std::fs::File,
        sparse: Option<&PaxSparse>,
        kind: tar::EntryType,
        entry: &str,
    ) -> Result<u64> {
        if let Some(s) = sparse {
            // Its real size was checked against the limit, and its blocks against its real size.
            s.write(e, file).map_err(|source| UnpackError::Sparse {
                entry: entry.into(),
                source,
            })?;
            return Ok(s.real_size);
        }
        let room = self.limits.max_bytes - self.bytes;
        let copied = match kind.is_gnu_sparse() {
            true => copy_with_holes(e, file, room),
            false => copy_bounded(e, file, room),
        };
        copied
            .map_err(|source| UnpackError::Io {
                entry: entry.into(),
                op: "write the file",
                source,
            })?
            .ok_or_else(|| UnpackError::TooManyBytes {
                entry: entry.into(),
                limit: self.limits.max_bytes,
            })
    }

    fn hard_link<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &OsStr,
        entry: &str,
    ) -> Result<()> {
        let target = e
            .link_name()
            .map_err(UnpackError::Read)?
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target_str = target.display().to_string();
        let refuse = |reason| UnpackError::HardLink {
            entry: entry.into(),
            target: target_str.clone(),
            reason,
        };
        let mut rel = Vec::new();
        for c in target.components() {
            match c {
                Component::Normal(n) => rel.push(n.to_os_string()),
                Component::CurDir => {}
                Component::ParentDir => return Err(refuse("a `..` component is refused")),
                Component::RootDir | Component::Prefix(_) => return Err(refuse("an absolute target is refused")),
            }
        }
        let Some((tname, tparent)) = rel.split_last() else {
            return Err(refuse("empty target"));
        };
        let tdir = self.open_dir(tparent, entry, false).map_err(|err| match err {
            UnpackError::Io { .. } => refuse("the target is not in the layer"),
            other => other,
        })?;
        let st = rfs::statat(&tdir, tname.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|_| refuse("the target is not in the layer"))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(refuse("the target is a directory"));
        }
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, never what it points to.
        rfs::linkat(&tdir, tname.as_os_str(), dir, name, AtFlags::empty()).map_err(io_err(entry, "link"))?;
        Ok(())
    }

    /// Makes room for a new entry `name` in `dir`: an existing directory stays when the new entry is one
    /// too (tar semantics: metadata is updated); anything else is removed first, so no write ever goes
    /// through an existing symlink or hard link.
    fn clear_name(&mut self, dir: &OwnedFd, name: &OsStr, new_is_dir: bool, entry: &str) -> Result<()> {
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io_err(entry, "stat")(e)),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && new_is_dir {
            return Ok(());
        }
        if is_dir {
            self.cache = None;
        }
        remove_at(dir, name).map_err(|e| UnpackError::Io {
            entry: entry.into(),
            op: "remove the existing entry",
            source: e,
        })
    }

    fn whiteout(&mut self, parent: &[OsString], name: &OsStr, entry: &str) -> Result<()> {
        let dir = self.open_dir(parent, entry, true)?;
        if name == OPAQUE_MARKER {
            match self.mode {
                Whiteouts::Overlay => rfs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(io_err(entry, "mark the directory opaque"))?,
                Whiteouts::Delete => self.opaque.push(parent.to_vec()),
            }
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&name.as_bytes()[WHITEOUT_PREFIX.len()..]);
        if hidden.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..wh.*` other than the opaque marker: aufs metadata, meaningless here.
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/') {
            return Err(UnpackError::BadWhiteout { entry: entry.into() });
        }
        self.clear_name(&dir, hidden, false, entry)?;
        if self.mode == Whiteouts::Overlay {
            rfs::mknodat(
                &dir,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rfs::makedev(0, 0),
            )
            .map_err(io_err(entry, "create the overlay whiteout"))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for dir in std::mem::take(&mut self.opaque) {
            let entry = format!("{}/{OPAQUE_MARKER}", rel_string(&dir));
            let fd = self.open_dir(&dir, &entry, false)?;
            let mut prefix = dir.clone();
            remove_lower(&fd, &mut prefix, &self.created).map_err(|source| UnpackError::Io {
                entry,
                op: "apply the opaque whiteout",
                source,
            })?;
        }
        self.cache = None;
        for (dir, mtime) in std::mem::take(&mut self.dir_times) {
            let entry = rel_string(&dir);
            if let Ok(fd) = self.open_dir(&dir, &entry, false) {
                rfs::futimens(&fd, &timestamps(mtime)).map_err(io_err(&entry, "set the directory's times"))?;
            }
        }
        Ok(())
    }
}

/// Deletes from the directory `fd` (at `path`) everything this layer did not create, keeping and
/// recursing into directories it did.
fn remove_lower(fd: &OwnedFd, path: &mut Rel, created: &HashSet<Rel>) -> io::Result<()> {
    for name in list_dir(fd)? {
        path.push(name.clone());
        if created.contains(path) {
            let st = rfs::statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let sub = rfs::openat(fd, name.as_os_str(), dir_flags(), Mode::empty())?;
                remove_lower(&sub, path, created)?;
            }
        } else {
            remove_at(fd, &name)?;
        }
        path.pop();
    }
    Ok(())
}

fn list_dir(fd: &impl AsFd) -> io::Result<Vec<OsString>> {
    let dup = rfs::openat(fd, ".", dir_flags(), Mode::empty())?;
    let mut names = Vec::new();
    for item in rfs::Dir::read_from(&dup)? {
        let item = item?;
        let n = item.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` from `dir`, recursively for a directory, never following a symlink.
pub fn remove_at(dir: &impl AsFd, name: &OsStr) -> io::Result<()> {
    let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rfs::openat(dir, name, dir_flags(), Mode::empty())?;
        for child in list_dir(&sub)? {
            remove_at(&sub, &child)?;
        }
        rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rfs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

/// Copies at most `room` bytes; `None` when the source holds more.
fn copy_bounded(src: &mut impl Read, dst: &mut impl Write, room: u64) -> io::Result<Option<u64>> {
    let mut limited = src.take(room.saturating_add(1));
    let n = io::copy(&mut limited, dst)?;
    Ok(if n > room { None } else { Some(n) })
}

/// The entry's PAX records, in archive order (keys that are not UTF-8 are skipped).
fn pax_records<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(UnpackError::Read)? {
        for ext in exts {
            let ext = ext.map_err(UnpackError::Read)?;
            if let Ok(key) = ext.key() {
                out.push((key.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// `SCHILY.xattr.*` PAX records (how GNU tar, Docker and BuildKit carry extended attributes).
fn xattrs_of(records: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    records
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_string(), v.clone())))
        .collect()
}

fn set_xattrs(fd: &impl AsFd, xattrs: &[(String, Vec<u8>)], entry: &str) -> Result<()> {
    for (name, value) in xattrs {
        if name.starts_with("trusted.overlay.") {
            // A layer must not forge overlay metadata (opaque, redirect, metacopy).
            tracing::warn!(entry = %entry, xattr = %name, "overlay xattr in a layer ignored");
            continue;
        }
        rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()).map_err(io_err(entry, "set an xattr"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = header(kind, 0, 0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    /// Writes a raw path (bypassing tar's own `..` check) into a header.
    fn raw_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn dot_dot_is_refused_and_nothing_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let tar = layer(|b| raw_file(b, "a/../../escaped", b"x"));
        let err = unpack(tar.as_slice(), &root, Whiteouts::Overlay, UnpackLimits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::DotDot { .. }), "{err}");
        assert!(err.to_string().contains("a/../../escaped"), "{err}");
        assert!(!tmp.path().join("escaped").exists());
    }

    #[test]
    fn symlink_then_write_through_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let tar = layer(|b| {
            link(b, tar::EntryType::Symlink, "evil", outside.to_str().unwrap());
            file(b, "evil/pwned", b"x", 0o644);
        });
        let err = unpack(tar.as_slice(), &root, Whiteouts::Overlay, UnpackLimits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::ThroughSymlink { .. }), "{err}");
        assert!(!outside.join("pwned").exists());
    }

    #[test]
    fn hard_link_to_outside_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        for target in [secret.to_str().unwrap(), "../secret"] {
            let tar = layer(|b| link(b, tar::EntryType::Link, "x", target));
            let err = unpack(tar.as_slice(), &root, Whiteouts::Overlay, UnpackLimits::default()).unwrap_err();
            assert!(matches!(err, UnpackError::HardLink { .. }), "{err}");
        }
        assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    }

    #[test]
    fn replacing_a_symlink_does_not_write_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"original").unwrap();
        let tar = layer(|b| {
            link(b, tar::EntryType::Symlink, "f", victim.to_str().unwrap());
            file(b, "f", b"new", 0o644);
        });
        unpack(tar.as_slice(), &root, Whiteouts::Overlay, UnpackLimits::default()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"original");
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"new");
    }

    #[test]
    fn the_byte_limit_stops_a_bomb() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = layer(|b| {
            file(b, "a", &[0u8; 4096], 0o644);
            file(b, "b", &[0u8; 4096], 0o644);
        });
        let limits = UnpackLimits {
            max_bytes: 6000,
            max_entries: 100,
        };
        let err = unpack(tar.as_slice(), tmp.path(), Whiteouts::Overlay, limits).unwrap_err();
        assert!(matches!(err, UnpackError::TooManyBytes { .. }), "{err}");
        assert!(!tmp.path().join("b").exists());
    }

    /// Where the sparse test file holds data (4 KiB of its text repeated), in its 1 GiB.
    const SPARSE_BLOCKS: [(u64, &[u8; 4]); 3] = [(0, b"HEAD"), (512 << 20, b"MIDL"), ((1 << 30) - 4096, b"TAIL")];

    /// `d/big`, a 1 GiB file holding [`SPARSE_BLOCKS`], archived by GNU tar `--sparse` in `format` (`gnu`,
    /// or `posix` with a sparse version); and an empty layer directory, both in `dir`.
    fn gnu_tar_sparse(dir: &Path, format: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        let f = std::fs::File::create(src.join("d/big")).unwrap();
        f.set_len(1 << 30).unwrap();
        for (at, text) in SPARSE_BLOCKS {
            std::os::unix::fs::FileExt::write_all_at(&f, &text.repeat(1024), at).unwrap();
        }
        let out = std::process::Command::new("tar")
            .args(["--sparse", "--numeric-owner", "-C"])
            .arg(&src)
            .args(format)
            .args(["-cf", "-", "d/big"])
            .output()
            .expect("GNU tar");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.len() < 64 << 10, "GNU tar wrote the holes");
        let root = dir.join("layer");
        std::fs::create_dir(&root).unwrap();
        (out.stdout, root)
    }

    const SPARSE_FORMATS: [&[&str]; 4] = [
        &["--format=gnu"],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ];

    #[test]
    fn sparse_files_keep_their_holes_in_every_gnu_tar_format() {
        for format in SPARSE_FORMATS {
            let tmp = tempfile::tempdir().unwrap();
            let (tar, root) = gnu_tar_sparse(tmp.path(), format);
            let usage = unpack(tar.as_slice(), &root, Whiteouts::Overlay, UnpackLimits::default()).unwrap();
            assert_eq!(usage.bytes, 1 << 30, "{format:?}: the real size counts");
            // Under its real name (no `GNUSparseFile.<pid>/` directory), the blocks where they were.
            let names: Vec<_> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["d"], "{format:?}");
            let big = std::fs::File::open(root.join("d/big")).unwrap();
            let md = big.metadata().unwrap();
            assert_eq!(md.len(), 1 << 30, "{format:?}");
            assert!(
                md.blocks() * 512 < 1 << 20,
                "{format:?}: {} bytes allocated",
                md.blocks() * 512
            );
            let mut block = vec![0u8; 4096];
            for (at, text) in SPARSE_BLOCKS {
                std::os::unix::fs::FileExt::read_exact_at(&big, &mut block, at).unwrap();
                assert_eq!(block, text.repeat(1024), "{format:?} at {at}");
            }
            std::os::unix::fs::FileExt::read_exact_at(&big, &mut block, 256 << 20).unwrap();
            assert!(block.iter().all(|b| *b == 0), "{format:?}: a hole reads as zeros");
        }
    }

    #[test]
    fn the_byte_limit_counts_a_sparse_files_real_size() {
        for format in SPARSE_FORMATS {
            let tmp = tempfile::tempdir().unwrap();
            let (tar, root) = gnu_tar_sparse(tmp.path(), format);
            let limits = UnpackLimits {
                max_bytes: 64 << 20,
                max_entries: 100,
            };
            let err = unpack(tar.as_slice(), &root, Whiteouts::Overlay, limits).unwrap_err();
            assert!(matches!(err, UnpackError::TooManyBytes { .. }), "{format:?}: {err}");
            assert!(!root.join("d/big").exists(), "{format:?}");
        }
    }

    #[test]
    fn a_pax_sparse_name_with_dot_dot_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let tar = layer(|b| {
            let records = [
                ("GNU.sparse.size", b"10".as_slice()),
                ("GNU.sparse.name", b"../escaped"),
                ("GNU.sparse.map", b"0,1"),
            ];
            let mut data = Vec::new();
            for (key, value) in records {
                // "<length> <key>=<value>\n", the length counting itself.
                let rest = key.len() + value.len() + 3;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut h = header(tar::EntryType::XHeader, data.len() as u64, 0o644);
            b.append_data(&mut h, "PaxHeaders/x", data.as_slice()).unwrap();
            file(b, "GNUSparseFile.1/escaped", b"x", 0o644);
        });
        let err = unpack(tar.as_slice(), &root, Whiteouts::Overlay, UnpackLimits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::DotDot { .. }), "{err}");
        assert!(!tmp.path().join("escaped").exists());
    }

    #[test]
    fn opaque_in_delete_mode_keeps_this_layers_entries() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/sub")).unwrap();
        std::fs::write(tmp.path().join("d/lower"), b"l").unwrap();
        std::fs::write(tmp.path().join("d/sub/lower"), b"l").unwrap();
        std::fs::write(tmp.path().join("gone"), b"l").unwrap();
        let tar = layer(|b| {
            file(b, "d/new", b"n", 0o644);
            file(b, "d/.wh..wh..opq", b"", 0o644);
            file(b, ".wh.gone", b"", 0o644);
        });
        unpack(tar.as_slice(), tmp.path(), Whiteouts::Delete, UnpackLimits::default()).unwrap();
        assert!(tmp.path().join("d/new").exists());
        assert!(!tmp.path().join("d/lower").exists());
        assert!(!tmp.path().join("d/sub").exists());
        assert!(!tmp.path().join("gone").exists());
    }
}
