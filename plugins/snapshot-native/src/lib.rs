//! The native snapshotter: plain directory copies, for filesystems without overlay.
//!
//! Every committed layer is a full copy of its parent with the layer applied on top (whiteouts delete
//! what they hide); a container snapshot or view is a full copy of its parent chain's top layer, handed
//! out as a bind mount. Slow and space-hungry by design: it needs nothing from the kernel but bind mounts.
//! The directory bookkeeping and the safe unpacker are the overlay snapshotter's.

mod copy;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::Registry;
use berth_core::model::ChainId;
use berth_core::plugin::snapshot::{FsInfo, Mount, SnapshotInfo, SnapshotKind, Snapshotter, UnpackLimits, Usage};
use berth_core::plugin::{PluginError, PluginKind, PluginResult};
use berth_core::registry::RegistryError;
use berth_snapshot_overlay::store::{Committed, Pending, Record, SnapshotStore};
use berth_snapshot_overlay::unpack::{Whiteouts, unpack};
use berth_snapshot_overlay::{bind, blocking};

pub use copy::copy_tree;

pub const NAME: &str = "native";

/// Registers the `native` snapshotter, rooted at `<root>/snapshotter/native`.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_snapshotter(NAME, |ctx| {
        let root = ctx.plugin_root(PluginKind::Snapshotter, NAME);
        Ok(Arc::new(NativeSnapshotter::open(&root)?) as Arc<dyn Snapshotter>)
    })
}

pub struct NativeSnapshotter {
    store: Arc<SnapshotStore>,
}

impl NativeSnapshotter {
    pub fn open(root: &Path) -> PluginResult<NativeSnapshotter> {
        Ok(NativeSnapshotter {
            store: Arc::new(SnapshotStore::open(root)?),
        })
    }

    fn mounts_of(store: &SnapshotStore, r: &Record) -> PluginResult<Vec<Mount>> {
        match r.kind {
            SnapshotKind::Active => Ok(vec![bind(store.fs(r.id), false)]),
            SnapshotKind::View => Ok(vec![bind(store.fs(r.id), true)]),
            SnapshotKind::Committed => Err(PluginError::InvalidArgument(format!(
                "{} is a committed layer: prepare or view it to mount it",
                r.key
            ))),
        }
    }

    /// A new pending snapshot holding a copy of `parent`'s content.
    fn begin_copy(store: &SnapshotStore, parent: Option<&ChainId>) -> PluginResult<Pending> {
        let src = match parent {
            Some(p) => Some(store.fs(store.chain(p)?[0].id)),
            None => None,
        };
        let pending = store.begin()?;
        if let Some(src) = src {
            copy_tree(&src, &pending.fs())
                .map_err(|e| PluginError::io(format!("copy {} to {}", src.display(), pending.fs().display()), e))?;
        }
        Ok(pending)
    }

    async fn create(&self, key: &str, parent: Option<&ChainId>, kind: SnapshotKind) -> PluginResult<Vec<Mount>> {
        let store = self.store.clone();
        let key = key.to_string();
        let parent = parent.cloned();
        blocking(move || {
            if store.get(&key).is_some() {
                return Err(PluginError::AlreadyExists(format!("snapshot {key:?} already exists")));
            }
            let pending = Self::begin_copy(&store, parent.as_ref())?;
            match store.commit(pending, &key, kind, parent.as_ref())? {
                Committed::New(r) | Committed::Existing(r) => Self::mounts_of(&store, &r),
            }
        })
        .await
    }
}

#[async_trait]
impl Snapshotter for NativeSnapshotter {
    async fn has_layer(&self, chain: &ChainId) -> PluginResult<bool> {
        Ok(self.store.has_layer(chain))
    }

    async fn apply_layer(
        &self,
        chain: &ChainId,
        parent: Option<&ChainId>,
        tar: Box<dyn Read + Send>,
        limits: UnpackLimits,
    ) -> PluginResult<Usage> {
        let store = self.store.clone();
        let chain = chain.clone();
        let parent = parent.cloned();
        blocking(move || {
            if store.get(chain.as_str()).is_some() {
                return store.usage(chain.as_str());
            }
            let pending = Self::begin_copy(&store, parent.as_ref())?;
            let usage = unpack(tar, &pending.fs(), Whiteouts::Delete, limits)?;
            match store.commit(pending, chain.as_str(), SnapshotKind::Committed, parent.as_ref())? {
                Committed::New(_) => Ok(usage),
                Committed::Existing(_) => store.usage(chain.as_str()),
            }
        })
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
