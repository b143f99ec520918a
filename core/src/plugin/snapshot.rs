//! Snapshotter: turns image layers into directories and hands out mount specs for container root filesystems.
//!
//! Vocabulary (after containerd's snapshot model):
//! - a **committed layer** is an unpacked image layer, immutable, keyed by its [`ChainId`];
//! - an **active snapshot** is a writable snapshot (a container's rootfs) keyed by a caller-chosen key,
//!   on top of a committed parent chain;
//! - a **view** is a read-only snapshot of a committed chain.
//!
//! A snapshotter never mounts anything for the caller: it returns [`Mount`] specs, and whoever needs the
//! filesystem mounts them (the isolation plugin does so inside the container's own mount namespace).

use std::io::Read;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{PluginResult, Readiness};
use crate::model::ChainId;

/// One mount to perform, in the form of mount(2) arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Filesystem type: `overlay`, `bind`, …
    pub fstype: String,
    pub source: String,
    /// Mount options as given to mount(8): `ro`, `rbind`, `lowerdir=…`, …
    pub options: Vec<String>,
    /// When set, paths in `options` are relative to this directory: the mounter must chdir there first.
    /// This keeps an overlay option string under a page for images with 100+ layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chdir: Option<PathBuf>,
}

/// Space used by one snapshot (or by the whole store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Committed,
    Active,
    View,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The chain id for committed layers, the caller's key otherwise.
    pub key: String,
    pub parent: Option<ChainId>,
    pub kind: SnapshotKind,
}

/// Bounds on what one layer may write, so a decompression bomb cannot fill the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes + other.bytes,
            inodes: self.inodes + other.inodes,
        }
    }
}

/// Where the snapshot store lives and what it holds, for ImageFsInfo (layers: the image filesystem;
/// snapshots: the containers' writable layers, the container filesystem).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// The snapshotter's root directory (as containerd reports its snapshotter root).
    pub mountpoint: PathBuf,
    /// Committed layers.
    pub layers: Usage,
    /// Active snapshots and views.
    pub snapshots: Usage,
}

impl FsInfo {
    /// The whole store.
    pub fn used(&self) -> Usage {
        self.layers + self.snapshots
    }
}

#[async_trait]
pub trait Snapshotter: Send + Sync + 'static {
    /// Whether the snapshotter can work on this host (e.g. overlayfs available).
    async fn readiness(&self) -> Readiness {
        Readiness::ready()
    }

    /// True when the committed layer `chain` exists.
    async fn has_layer(&self, chain: &ChainId) -> PluginResult<bool>;

    /// True when a layer's unpacked content does not depend on its parent (overlayfs: each layer is its
    /// own directory), so the layers of one image may be unpacked at once: `apply_layer` then accepts a
    /// `parent` that is not committed yet, unpacks at once, and waits for the parent only to commit (the
    /// caller must be applying that parent meanwhile). False (the default) when each layer is built on a
    /// copy of its parent (native): layers must be applied in order.
    fn unpacks_independently(&self) -> bool {
        false
    }

    /// Unpacks an uncompressed tar stream as the committed layer `chain` on top of `parent`.
    /// Runs the (blocking) read on a blocking thread. Idempotent: an existing layer is kept as it is (and
    /// the stream is not read). No entry may create or change anything outside the layer's own directory;
    /// a refused entry is `InvalidArgument` naming the entry, and nothing of the layer is kept.
    ///
    /// The stream is read **to its end** before the layer is committed, and any read error (including one
    /// reported only at EOF) fails the call with nothing committed: the image store's reader verifies the
    /// layer's diff id when the stream ends. `parent` must exist (`NotFound` otherwise), unless
    /// [`Snapshotter::unpacks_independently`].
    async fn apply_layer(
        &self,
        chain: &ChainId,
        parent: Option<&ChainId>,
        tar: Box<dyn Read + Send>,
        limits: UnpackLimits,
    ) -> PluginResult<Usage>;

    /// Creates the writable snapshot `key` over the committed chain `parent` and returns how to mount it.
    async fn prepare(&self, key: &str, parent: Option<&ChainId>) -> PluginResult<Vec<Mount>>;

    /// Creates a read-only view `key` of the committed chain `parent`.
    async fn view(&self, key: &str, parent: &ChainId) -> PluginResult<Vec<Mount>>;

    /// The mounts of an existing active snapshot or view (`InvalidArgument` for a committed layer).
    async fn mounts(&self, key: &str) -> PluginResult<Vec<Mount>>;

    /// Removes an active snapshot, a view, or a committed layer (given as its chain id string) that no other
    /// snapshot uses as parent (`FailedPrecondition` when one does). Removing a missing key is not an error.
    async fn remove(&self, key: &str) -> PluginResult<()>;

    /// Bytes and inodes used by the snapshot's own (upper) directory, or by a committed layer.
    async fn usage(&self, key: &str) -> PluginResult<Usage>;

    /// Every snapshot and layer the snapshotter holds.
    async fn walk(&self) -> PluginResult<Vec<SnapshotInfo>>;

    /// The store's location and its use by layers and by snapshots.
    async fn fs_info(&self) -> PluginResult<FsInfo>;
}
