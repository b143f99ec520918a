//! The on-disk bookkeeping of a snapshotter, shared by `overlayfs` and `native`.
//!
//! Layout under the snapshotter root:
//! ```text
//! snapshots/<n>/info.json   the record: key (chain id or caller key), kind, parent chain id
//! snapshots/<n>/fs          the layer's content, or the snapshot's upper directory
//! snapshots/<n>/work        overlay's work directory (active overlay snapshots only)
//! snapshots/<n>.tmp         being built: invisible, removed at start
//! snapshots/<n>.rm          being removed: invisible, removed at start
//! ```
//! Snapshots are numbered so that overlay `lowerdir` paths stay short (`12/fs`): 120+ layers then fit in
//! one page of mount options. A snapshot becomes visible only by the rename of its complete `<n>.tmp`
//! directory (record written and synced inside), and disappears by a rename too: a crash leaves either
//! the whole snapshot or none of it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_core::model::ChainId;
use berth_core::plugin::snapshot::{FsInfo, SnapshotInfo, SnapshotKind, Usage};
use berth_core::plugin::{PluginError, PluginResult};
use serde::{Deserialize, Serialize};

const INFO: &str = "info.json";

/// One snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    /// The chain id of a committed layer, the caller's key otherwise.
    pub key: String,
    pub kind: SnapshotKind,
    pub parent: Option<ChainId>,
}

/// A snapshot directory being built (`<n>.tmp`); removed on drop unless committed.
pub struct Pending {
    pub id: u64,
    pub dir: PathBuf,
    committed: bool,
}

impl Pending {
    /// The content (or upper) directory.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove an unfinished snapshot");
        }
    }
}

/// What `commit` did.
#[derive(Debug)]
pub enum Committed {
    New(Record),
    /// The key existed already (a concurrent unpack of the same layer won): the pending one was dropped.
    Existing(Record),
}

struct Index {
    next: u64,
    records: BTreeMap<String, Record>,
}

pub struct SnapshotStore {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Bumped at every commit, for [`SnapshotStore::wait_for_layer`].
    commits: tokio::sync::watch::Sender<u64>,
}

/// Runs blocking file-system work off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> PluginResult<T> + Send + 'static) -> PluginResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PluginError::Internal(format!("snapshotter task failed: {e}")))?
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PluginError {
    let context = context.into();
    move |e| PluginError::io(context, e)
}

impl SnapshotStore {
    /// Opens the store under `root` (creating it), dropping what a crash left half-built or half-removed.
    pub fn open(root: &Path) -> PluginResult<SnapshotStore> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let mut records = BTreeMap::new();
        let mut next = 1;
        for item in std::fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))? {
            let item = item.map_err(io(format!("read {}", dir.display())))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let (num, suffix) = name
                .split_once('.')
                .map_or((name.as_str(), None), |(n, s)| (n, Some(s)));
            let Ok(id) = num.parse::<u64>() else {
                tracing::warn!(path = %item.path().display(), "unexpected entry in the snapshot store");
                continue;
            };
            next = next.max(id + 1);
            let record = match suffix {
                None => std::fs::read(item.path().join(INFO))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                    .filter(|r| r.id == id),
                Some(_) => None,
            };
            match record {
                Some(r) => {
                    records.insert(r.key.clone(), r);
                }
                None => {
                    tracing::info!(path = %item.path().display(), "removing an unfinished snapshot");
                    std::fs::remove_dir_all(item.path()).map_err(io(format!("remove {}", item.path().display())))?;
                }
            }
        }
        Ok(SnapshotStore {
            dir,
            index: Mutex::new(Index { next, records }),
            commits: tokio::sync::watch::Sender::new(0),
        })
    }

    /// `<root>/snapshots`: the directory overlay mounts chdir to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<root>/snapshots/<n>`.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// `<root>/snapshots/<n>/fs`.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.path(id).join("fs")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Record> {
        self.lock().records.get(key).cloned()
    }

    /// True when the committed layer `chain` exists.
    pub fn has_layer(&self, chain: &ChainId) -> bool {
        self.get(chain.as_str())
            .is_some_and(|r| r.kind == SnapshotKind::Committed)
    }

    /// Waits until the committed layer `chain` exists (another task is committing it).
    pub async fn wait_for_layer(&self, chain: &ChainId) {
        // Subscribed before the check: a commit between the check and the wait still wakes us.
        let mut commits = self.commits.subscribe();
        while !self.has_layer(chain) {
            // The sender lives as long as `self`: `changed` cannot fail here.
            let _ = commits.changed().await;
        }
    }

    /// Starts a new snapshot directory `<n>.tmp` with an empty `fs` (mode 0755).
    pub fn begin(&self) -> PluginResult<Pending> {
        let id = {
            let mut idx = self.lock();
            let id = idx.next;
            idx.next += 1;
            id
        };
        let dir = self.dir.join(format!("{id}.tmp"));
        let pending = Pending {
            id,
            dir,
            committed: false,
        };
        std::fs::create_dir(&pending.dir).map_err(io(format!("create {}", pending.dir.display())))?;
        std::fs::create_dir(pending.fs()).map_err(io(format!("create {}", pending.fs().display())))?;
        Ok(pending)
    }

    /// Makes a pending snapshot visible under `key`. For a committed layer an existing key wins (the
    /// pending copy is dropped); for an active snapshot or view an existing key is an error. The parent
    /// must still exist.
    pub fn commit(
        &self,
        mut pending: Pending,
        key: &str,
        kind: SnapshotKind,
        parent: Option<&ChainId>,
    ) -> PluginResult<Committed> {
        let record = Record {
            id: pending.id,
            key: key.to_string(),
            kind,
            parent: parent.cloned(),
        };
        let info = pending.dir.join(INFO);
        let mut f = std::fs::File::create(&info).map_err(io(format!("create {}", info.display())))?;
        let json = serde_json::to_vec(&record).map_err(|e| PluginError::Internal(e.to_string()))?;
        f.write_all(&json).map_err(io(format!("write {}", info.display())))?;
        f.sync_all().map_err(io(format!("sync {}", info.display())))?;
        let mut idx = self.lock();
        if let Some(existing) = idx.records.get(key) {
            if kind == SnapshotKind::Committed {
                return Ok(Committed::Existing(existing.clone()));
            }
            return Err(PluginError::AlreadyExists(format!("snapshot {key:?} already exists")));
        }
        if let Some(p) = parent
            && !idx.records.contains_key(p.as_str())
        {
            return Err(PluginError::NotFound(format!("parent layer {p} not found")));
        }
        let target = self.path(pending.id);
        std::fs::rename(&pending.dir, &target).map_err(io(format!("rename to {}", target.display())))?;
        pending.committed = true;
        sync_dir(&self.dir);
        idx.records.insert(key.to_string(), record.clone());
        drop(idx);
        self.commits.send_modify(|n| *n += 1);
        Ok(Committed::New(record))
    }

    /// The committed chain from `top` down to the base layer, `top` first.
    pub fn chain(&self, top: &ChainId) -> PluginResult<Vec<Record>> {
        let idx = self.lock();
        let mut out = Vec::new();
        let mut cur = Some(top.clone());
        while let Some(c) = cur {
            let r = idx
                .records
                .get(c.as_str())
                .filter(|r| r.kind == SnapshotKind::Committed)
                .ok_or_else(|| PluginError::NotFound(format!("layer {c} not found")))?;
            cur = r.parent.clone();
            out.push(r.clone());
            if out.len() > 10_000 {
                return Err(PluginError::Internal(format!("layer chain of {top} loops")));
            }
        }
        Ok(out)
    }

    /// Forgets `key` and deletes its directory; refuses a layer that is another snapshot's parent.
    /// A missing key is not an error.
    pub fn remove(&self, key: &str) -> PluginResult<()> {
        let doomed = {
            let mut idx = self.lock();
            let Some(r) = idx.records.get(key).cloned() else {
                return Ok(());
            };
            if let Some(child) = idx
                .records
                .values()
                .find(|c| c.parent.as_ref().is_some_and(|p| p.0 == key))
            {
                return Err(PluginError::FailedPrecondition(format!(
                    "layer {key} is the parent of snapshot {}",
                    child.key
                )));
            }
            let from = self.path(r.id);
            let to = self.dir.join(format!("{}.rm", r.id));
            std::fs::rename(&from, &to).map_err(io(format!("rename {} to {}", from.display(), to.display())))?;
            idx.records.remove(key);
            to
        };
        sync_dir(&self.dir);
        std::fs::remove_dir_all(&doomed).map_err(io(format!("remove {}", doomed.display())))
    }

    pub fn walk(&self) -> Vec<SnapshotInfo> {
        self.lock()
            .records
            .values()
            .map(|r| SnapshotInfo {
                key: r.key.clone(),
                parent: r.parent.clone(),
                kind: r.kind,
            })
            .collect()
    }

    /// Disk use of one snapshot's own content.
    pub fn usage(&self, key: &str) -> PluginResult<Usage> {
        let r = self
            .get(key)
            .ok_or_else(|| PluginError::NotFound(format!("snapshot {key:?} not found")))?;
        let fs = self.fs(r.id);
        disk_usage(&fs).map_err(io(format!("measure {}", fs.display())))
    }
}

/// The `Snapshotter` methods both snapshotters answer the same way, off the async threads.
impl SnapshotStore {
    pub async fn remove_blocking(self: &Arc<Self>, key: &str) -> PluginResult<()> {
        let (store, key) = (self.clone(), key.to_string());
        blocking(move || store.remove(&key)).await
    }

    pub async fn usage_blocking(self: &Arc<Self>, key: &str) -> PluginResult<Usage> {
        let (store, key) = (self.clone(), key.to_string());
        blocking(move || store.usage(&key)).await
    }

    /// The store root (the directory above `snapshots`) and the use of its layers and its snapshots.
    pub async fn fs_info(self: &Arc<Self>) -> PluginResult<FsInfo> {
        let store = self.clone();
        blocking(move || {
            let records: Vec<Record> = store.lock().records.values().cloned().collect();
            let mut info = FsInfo {
                mountpoint: store.dir.parent().unwrap_or(&store.dir).to_path_buf(),
                layers: Usage::default(),
                snapshots: Usage::default(),
            };
            for r in records {
                let dir = store.path(r.id);
                let used = match disk_usage(&dir) {
                    Ok(u) => u,
                    // Removed since the records were read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(PluginError::io(format!("measure {}", dir.display()), e)),
                };
                match r.kind {
                    SnapshotKind::Committed => info.layers = info.layers + used,
                    SnapshotKind::Active | SnapshotKind::View => info.snapshots = info.snapshots + used,
                }
            }
            Ok(info)
        })
        .await
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Bytes (allocated blocks) and inodes below `path`, each hard-linked inode counted once, symlinks not
/// followed.
pub fn disk_usage(path: &Path) -> std::io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.bytes += md.blocks() * 512;
        }
        if md.is_dir() {
            for item in std::fs::read_dir(&p)? {
                stack.push(item?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_snapshots_vanish_on_open_and_records_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        let p = store.begin().unwrap();
        let id = p.id;
        store.commit(p, "sha256:aa", SnapshotKind::Committed, None).unwrap();
        let half = store.begin().unwrap();
        let half_dir = half.dir.clone();
        std::mem::forget(half); // as if the daemon died mid-unpack
        assert!(half_dir.exists());
        drop(store);
        let store = SnapshotStore::open(tmp.path()).unwrap();
        assert!(!half_dir.exists());
        assert_eq!(store.get("sha256:aa").unwrap().id, id);
        assert!(store.begin().unwrap().id > id);
    }

    #[test]
    fn a_parent_cannot_be_removed_under_a_child() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        let base = ChainId("sha256:aa".into());
        store
            .commit(store.begin().unwrap(), base.as_str(), SnapshotKind::Committed, None)
            .unwrap();
        store
            .commit(store.begin().unwrap(), "c1", SnapshotKind::Active, Some(&base))
            .unwrap();
        assert!(matches!(
            store.remove(base.as_str()),
            Err(PluginError::FailedPrecondition(_))
        ));
        store.remove("c1").unwrap();
        store.remove("c1").unwrap();
        store.remove(base.as_str()).unwrap();
        assert!(store.walk().is_empty());
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 0);
    }
}
