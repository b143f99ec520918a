//! The overlayfs snapshotter: layers unpacked once per chain id, containers get upper+work over the lowers.
//!
//! Each committed layer is its own directory holding only that layer's content, OCI whiteouts turned into
//! overlay whiteouts; layers are shared by every image whose chain contains them. A container snapshot is
//! a fresh upper and work directory over the lower chain. Mount specs carry short relative `lowerdir`
//! paths (`12/fs:11/fs:…`) and `chdir` set to the snapshots directory, so 120+ layers fit in a page.
//!
//! [`store`] (numbered snapshot directories, atomic create and remove) and [`unpack`] (the safe tar
//! unpacker) are shared with the native snapshotter.

pub mod sparse;
pub mod store;
pub mod unpack;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::Registry;
use berth_core::model::ChainId;
use berth_core::plugin::snapshot::{FsInfo, Mount, SnapshotInfo, SnapshotKind, Snapshotter, UnpackLimits, Usage};
use berth_core::plugin::{PluginError, PluginKind, PluginResult, Readiness};
use berth_core::registry::RegistryError;

pub use crate::store::blocking;
use crate::store::{Committed, Record, SnapshotStore};
use crate::unpack::{Whiteouts, unpack};

pub const NAME: &str = "overlayfs";

/// Registers the `overlayfs` snapshotter, rooted at `<root>/snapshotter/overlayfs`.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_snapshotter(NAME, |ctx| {
        let root = ctx.plugin_root(PluginKind::Snapshotter, NAME);
        Ok(Arc::new(OverlaySnapshotter::open(&root)?) as Arc<dyn Snapshotter>)
    })
}

pub struct OverlaySnapshotter {
    store: Arc<SnapshotStore>,
}

impl OverlaySnapshotter {
    pub fn open(root: &Path) -> PluginResult<OverlaySnapshotter> {
        Ok(OverlaySnapshotter {
            store: Arc::new(SnapshotStore::open(root)?),
        })
    }

    fn mounts_of(store: &SnapshotStore, r: &Record) -> PluginResult<Vec<Mount>> {
        let lowers = match &r.parent {
            Some(p) => store.chain(p)?,
            None => Vec::new(),
        };
        let lowerdir = || {
            let dirs: Vec<String> = lowers.iter().map(|l| format!("{}/fs", l.id)).collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        let overlay = |mut options: Vec<String>| Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: {
                options.insert(0, "index=off".into());
                options
            },
            chdir: Some(store.dir().to_path_buf()),
        };
        match r.kind {
            SnapshotKind::Active if lowers.is_empty() => Ok(vec![bind(store.fs(r.id), false)]),
            SnapshotKind::Active => Ok(vec![overlay(vec![
                lowerdir(),
                format!("upperdir={}/fs", r.id),
                format!("workdir={}/work", r.id),
            ])]),
            SnapshotKind::View if lowers.len() == 1 => Ok(vec![bind(store.fs(lowers[0].id), true)]),
            SnapshotKind::View => Ok(vec![overlay(vec![lowerdir()])]),
            SnapshotKind::Committed => Err(PluginError::InvalidArgument(format!(
                "{} is a committed layer: prepare or view it to mount it",
                r.key
            ))),
        }
    }

    async fn create(&self, key: &str, parent: Option<&ChainId>, kind: SnapshotKind) -> PluginResult<Vec<Mount>> {
        let store = self.store.clone();
        let key = key.to_string();
        let parent = parent.cloned();
        blocking(move || {
            if store.get(&key).is_some() {
                return Err(PluginError::AlreadyExists(format!("snapshot {key:?} already exists")));
            }
            if let Some(p) = &parent {
                store.chain(p)?;
            }
            let pending = store.begin()?;
            if kind == SnapshotKind::Active {
                let work = pending.dir.join("work");
                std::fs::create_dir(&work).map_err(|e| PluginError::io(format!("create {}", work.display()), e))?;
            }
            match store.commit(pending, &key, kind, parent.as_ref())? {
                Committed::New(r) | Committed::Existing(r) => Self::mounts_of(&store, &r),
            }
        })
        .await
    }
}

/// A bind mount of an absolute directory.
pub fn bind(path: PathBuf, readonly: bool) -> Mount {
    Mount {
        fstype: "bind".into(),
        source: path.display().to_string(),
        options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
        chdir: None,
    }
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")))
}

#[async_trait]
impl Snapshotter for OverlaySnapshotter {
    async fn readiness(&self) -> Readiness {
        if overlay_supported() {
            Readiness::ready()
        } else {
            Readiness::not_ready("OverlayUnsupported", "overlay is not in /proc/filesystems")
        }
    }

    async fn has_layer(&self, chain: &ChainId) -> PluginResult<bool> {
        Ok(self.store.has_layer(chain))
    }

    fn unpacks_independently(&self) -> bool {
        true
    }

    async fn apply_layer(
        &self,
        chain: &ChainId,
        parent: Option<&ChainId>,
        tar: Box<dyn Read + Send>,
        limits: UnpackLimits,
    ) -> PluginResult<Usage> {
        let store = self.store.clone();
        let key = chain.clone();
        let unpacked = blocking(move || {
            if store.get(key.as_str()).is_some() {
                return Ok(None);
            }
            let pending = store.begin()?;
            let usage = unpack(tar, &pending.fs(), Whiteouts::Overlay, limits)?;
            Ok(Some((pending, usage)))
        })
        .await?;
        let Some((pending, usage)) = unpacked else {
            return self.store.usage_blocking(chain.as_str()).await;
        };
        // A layer's directory holds only its own content: it waits for its parent only to commit, so the
        // layers of one image unpack at once.
        if let Some(p) = parent {
            self.store.wait_for_layer(p).await;
        }
        let (store, chain, parent) = (self.store.clone(), chain.clone(), parent.cloned());
        blocking(
            move || match store.commit(pending, chain.as_str(), SnapshotKind::Committed, parent.as_ref())? {
                Committed::New(_) => Ok(usage),
                Committed::Existing(_) => store.usage(chain.as_str()),
            },
        )
        .await
    }

    async fn prepare(&self, key: &str, parent: Option<&ChainId>) -> PluginResult<Vec<Mount>> {
        self.create(key, parent, SnapshotKind::Active).await
    }

    async fn view(&self, key: &str, parent: &ChainId) -> PluginResult<Vec<Mount>> {
        self.create(key, Some(parent), SnapshotKind::View).await
    }

    async fn mounts(&self, key: &str) -> PluginResult<Vec<Mount>> {
        let r = self
            .store
            .get(key)
            .ok_or_else(|| PluginError::NotFound(format!("snapshot {key:?} not found")))?;
        Self::mounts_of(&self.store, &r)
    }

    async fn remove(&self, key: &str) -> PluginResult<()> {
        self.store.remove_blocking(key).await
    }

    async fn usage(&self, key: &str) -> PluginResult<Usage> {
        self.store.usage_blocking(key).await
    }

    async fn walk(&self) -> PluginResult<Vec<SnapshotInfo>> {
        Ok(self.store.walk())
    }

    async fn fs_info(&self) -> PluginResult<FsInfo> {
        self.store.fs_info().await
    }
}
