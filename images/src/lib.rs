//! The image store: registry pulls (through `hosts.toml` mirrors), the content store, unpacking through
//! the snapshotter, image records in the metadata store, garbage collection and air-gapped import.
//!
//! [`ImageStore`] is what the CRI ImageService handlers call:
//! - [`ImageStore::pull`] (PullImage) → the [`Image`] record, whose `id` is the config digest;
//! - [`ImageStore::list`] (ListImages), [`ImageStore::status`] + [`ImageStore::verbose_info`] (ImageStatus);
//! - [`ImageStore::remove`] (RemoveImage, idempotent), then GC; [`ImageStore::gc`] on demand;
//! - [`ImageStore::fs_info`] (ImageFsInfo); [`ImageStore::import`] (`berthd images import FILE`);
//! - [`runtime_config`] for CreateContainer, [`ImageStore::ensure_unpacked`] before preparing a rootfs.
//!
//! Pulls and GC exclude each other (a pull holds the GC lock shared, GC exclusively), so GC never removes
//! a blob or layer of a pull in flight.

pub mod content;
pub mod error;
pub mod hosts;
mod import;
pub mod layer;
pub mod manifest;
mod pull;
pub mod reference;
pub mod remote;
#[cfg(feature = "testsuite")]
pub mod snapshot_testsuite;
mod token;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::model::{ChainId, Image};
use berth_core::plugin::PluginError;
use berth_core::plugin::snapshot::{Snapshotter, UnpackLimits, Usage};
use berth_core::{Config, Store, Table};

pub use crate::error::{ErrorKind, ImageError, Result};
pub use crate::manifest::RuntimeConfig;
pub use crate::reference::ImageRef;
pub use crate::remote::PullAuth;

use crate::content::ContentStore;
use crate::manifest::{Document, ImageConfigFile, Parsed};

/// Where the image store keeps things and its bounds.
#[derive(Clone, Debug)]
pub struct ImageStoreConfig {
    /// `<root>/content`.
    pub content_root: PathBuf,
    /// The `hosts.toml` directory (`registry.config_path`).
    pub hosts_dir: PathBuf,
    pub limits: UnpackLimits,
    pub max_concurrent_downloads: usize,
}

impl ImageStoreConfig {
    pub fn from_config(c: &Config) -> ImageStoreConfig {
        ImageStoreConfig {
            content_root: c.root.join("content"),
            hosts_dir: c.registry.config_path.clone(),
            limits: UnpackLimits {
                max_bytes: c.images.max_layer_bytes,
                ..UnpackLimits::default()
            },
            max_concurrent_downloads: c.images.max_concurrent_downloads,
        }
    }
}

/// ImageFsInfo's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFsUsage {
    /// The snapshotter's root directory (containerd reports its snapshotter root the same way).
    pub mountpoint: PathBuf,
    /// Blobs in the content store and committed layers: the image filesystem.
    pub images: Usage,
    /// Containers' writable snapshots (and views): the container filesystem.
    pub containers: Usage,
}

/// What a GC run removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub layers_removed: Vec<ChainId>,
    pub blobs_removed: Vec<String>,
}

#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ctx: pull::Ctx,
    gc_lock: tokio::sync::RwLock<()>,
}

/// The CreateContainer view of an image's config.
pub fn runtime_config(image: &Image) -> Result<RuntimeConfig> {
    Ok(ImageConfigFile::parse(&image.config, &image.id)?
        .config
        .unwrap_or_default())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageStore {
    pub fn new(config: ImageStoreConfig, store: Store, snapshotter: Arc<dyn Snapshotter>) -> Result<ImageStore> {
        // reqwest's rustls is built without a default crypto provider (ring keeps the build light).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let content = ContentStore::open(&config.content_root)?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                store,
                ctx: pull::Ctx {
                    content,
                    snapshotter,
                    limits: config.limits,
                    max_concurrent: config.max_concurrent_downloads,
                    hosts_dir: config.hosts_dir,
                },
                gc_lock: tokio::sync::RwLock::new(()),
            }),
        })
    }

    pub fn content(&self) -> &ContentStore {
        &self.inner.ctx.content
    }

    /// PullImage: pulls `reference` (normalized like kubelet's) and records it; returns the image.
    pub async fn pull(&self, reference: &str, auth: &PullAuth) -> Result<Image> {
        let r = ImageRef::parse(reference)?;
        let _shared = self.inner.gc_lock.read().await;
        let started = std::time::Instant::now();
        let image = pull::pull(&self.inner.ctx, &r, auth).await?;
        let image = self.save(image)?;
        tracing::info!(reference = %r.full(), id = %image.id, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(image)
    }

    /// Records an image: merged with a record of the same id; a tag it carries is taken from any other.
    fn save(&self, image: Image) -> Result<Image> {
        Ok(self.inner.store.write(|tx| {
            let all: Vec<(String, Image)> = tx.list(Table::Images)?;
            let mut merged = image.clone();
            for (key, mut other) in all {
                if other.id == image.id {
                    for t in other.repo_tags {
                        if !merged.repo_tags.contains(&t) {
                            merged.repo_tags.push(t);
                        }
                    }
                    for d in other.repo_digests {
                        if !merged.repo_digests.contains(&d) {
                            merged.repo_digests.push(d);
                        }
                    }
                    merged.pinned |= other.pinned;
                    continue;
                }
                let before = other.repo_tags.len();
                other.repo_tags.retain(|t| !image.repo_tags.contains(t));
                if other.repo_tags.len() != before {
                    tx.put(Table::Images, &key, &other)?;
                }
            }
            merged.repo_tags.sort();
            merged.repo_digests.sort();
            tx.put(Table::Images, &merged.id, &merged)?;
            Ok(merged)
        })?)
    }

    /// ListImages; with a filter, only the image it names (by reference or id).
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>> {
        match filter.filter(|f| !f.is_empty()) {
            Some(f) => Ok(self.status(f)?.into_iter().collect()),
            None => Ok(self
                .inner
                .store
                .list::<Image>(Table::Images)?
                .into_iter()
                .map(|(_, i)| i)
                .collect()),
        }
    }

    /// ImageStatus: the image named by an id (`sha256:<hex>` or the bare hex), a reference (tag or digest,
    /// normalized), or a unique id prefix of 6+ hex digits; `None` when there is none.
    pub fn status(&self, reference_or_id: &str) -> Result<Option<Image>> {
        let s = reference_or_id.trim();
        if let Some(i) = self.inner.store.get::<Image>(Table::Images, s)? {
            return Ok(Some(i));
        }
        if is_hex64(s)
            && let Some(i) = self.inner.store.get::<Image>(Table::Images, &format!("sha256:{s}"))?
        {
            return Ok(Some(i));
        }
        let all = self.list(None)?;
        if let Ok(r) = ImageRef::parse(s) {
            let (tagged, by_digest) = (r.tagged(), r.digest.as_ref().map(|d| r.with_digest(d)));
            let found = all.iter().find(|i| match &by_digest {
                Some(d) => i.repo_digests.contains(d),
                None => tagged.as_ref().is_some_and(|t| i.repo_tags.contains(t)),
            });
            if let Some(i) = found {
                return Ok(Some(i.clone()));
            }
        }
        // A unique id prefix (as `crictl images` prints them), when no name matched.
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matching = all
                .into_iter()
                .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hex));
            if let (Some(one), None) = (matching.next(), matching.next()) {
                return Ok(Some(one));
            }
        }
        Ok(None)
    }

    /// ImageStatus verbose info: `{"info": JSON}` with the config, layers and size.
    pub fn verbose_info(&self, image: &Image) -> Result<BTreeMap<String, String>> {
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap_or(serde_json::Value::Null);
        let diff_ids = ImageConfigFile::parse(&image.config, &image.id)?.rootfs.diff_ids;
        let layers = self.layers_of(image).unwrap_or_default();
        let layer_info: Vec<serde_json::Value> = layers
            .iter()
            .zip(diff_ids.iter().chain(std::iter::repeat(&String::new())))
            .zip(&image.chain_ids)
            .map(|((l, diff), chain)| {
                serde_json::json!({"digest": l.digest, "mediaType": l.media_type, "size": l.size,
                    "diffId": diff, "chainId": chain})
            })
            .collect();
        let info = serde_json::json!({
            "id": image.id,
            "repoTags": image.repo_tags,
            "repoDigests": image.repo_digests,
            "manifestDigest": image.manifest_digest,
            "size": image.size,
            "chainId": image.chain_ids.last(),
            "layers": layer_info,
            "imageSpec": config,
        });
        Ok(BTreeMap::from([("info".to_string(), info.to_string())]))
    }

    fn layers_of(&self, image: &Image) -> Result<Vec<manifest::Descriptor>> {
        let bytes = self.inner.ctx.content.read(&image.manifest_digest)?;
        match Document::parse(&bytes, &image.manifest_digest, &image.id)? {
            Parsed::Manifest { layers, .. } => Ok(layers),
            Parsed::Index(_) => Err(ImageError::BadDocument {
                what: "manifest",
                digest: image.manifest_digest.clone(),
                message: "an index where a manifest was recorded".into(),
            }),
        }
    }

    /// RemoveImage: forgets the image (every tag and digest of it) and collects its unshared layers and
    /// blobs. A missing image is not an error: returns whether one was removed.
    pub async fn remove(&self, reference_or_id: &str) -> Result<bool> {
        let Some(image) = self.status(reference_or_id)? else {
            return Ok(false);
        };
        self.inner.store.delete(Table::Images, &image.id)?;
        tracing::info!(id = %image.id, tags = ?image.repo_tags, "image removed");
        match self.inner.gc_lock.try_write() {
            Ok(_exclusive) => {
                self.collect().await?;
            }
            // A pull is in flight: don't make RemoveImage wait for it; collect once it is done.
            Err(_) => {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.gc().await {
                        tracing::warn!(error = %e, "image gc after a removal failed");
                    }
                });
            }
        }
        Ok(true)
    }

    /// Removes the layers and blobs no image references. Layers still under a container snapshot stay.
    /// Waits for pulls in flight.
    pub async fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.inner.gc_lock.write().await;
        self.collect().await
    }

    /// GC proper; the caller holds the GC lock exclusively.
    async fn collect(&self) -> Result<GcReport> {
        let images: Vec<Image> = self.list(None)?;
        let keep_blobs: HashSet<&str> = images.iter().flat_map(|i| i.blobs.iter().map(String::as_str)).collect();
        let keep_chains: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.chain_ids.iter().map(ChainId::as_str))
            .collect();
        let snap = &self.inner.ctx.snapshotter;
        let mut doomed: Vec<String> = snap
            .walk()
            .await
            .map_err(ImageError::Snapshotter)?
            .into_iter()
            .filter(|s| s.kind == berth_core::plugin::snapshot::SnapshotKind::Committed)
            .map(|s| s.key)
            .filter(|k| !keep_chains.contains(k.as_str()))
            .collect();
        let mut report = GcReport::default();
        // Children before parents: a round removes what nothing stands on, until a round removes nothing.
        loop {
            let mut progress = false;
            let mut left = Vec::new();
            for key in doomed {
                match snap.remove(&key).await {
                    Ok(()) => {
                        progress = true;
                        report.layers_removed.push(ChainId(key));
                    }
                    Err(PluginError::FailedPrecondition(_)) => left.push(key),
                    Err(e) => return Err(ImageError::Snapshotter(e)),
                }
            }
            doomed = left;
            if !progress || doomed.is_empty() {
                break;
            }
        }
        for digest in self.inner.ctx.content.list()? {
            if !keep_blobs.contains(digest.as_str()) {
                self.inner.ctx.content.delete(&digest)?;
                report.blobs_removed.push(digest);
            }
        }
        tracing::info!(
            layers = report.layers_removed.len(),
            blobs = report.blobs_removed.len(),
            "image gc"
        );
        Ok(report)
    }

    /// ImageFsInfo: the snapshot store's location; what images use (blobs and committed layers) and what
    /// containers use (their writable snapshots).
    pub async fn fs_info(&self) -> Result<ImageFsUsage> {
        let snapshots = self
            .inner
            .ctx
            .snapshotter
            .fs_info()
            .await
            .map_err(ImageError::Snapshotter)?;
        // One readdir and a stat per blob: cheap enough for the async thread.
        let blobs = self.inner.ctx.content.usage()?;
        Ok(ImageFsUsage {
            mountpoint: snapshots.mountpoint,
            images: snapshots.layers + blobs,
            containers: snapshots.snapshots,
        })
    }

    /// Re-unpacks from the content store any layer of `image` the snapshotter lacks (e.g. after the
    /// snapshotter was switched in the config).
    pub async fn ensure_unpacked(&self, image: &Image) -> Result<()> {
        let snap = &self.inner.ctx.snapshotter;
        let mut missing = false;
        for c in &image.chain_ids {
            missing |= !snap.has_layer(c).await.map_err(ImageError::Snapshotter)?;
        }
        if !missing {
            return Ok(());
        }
        let _shared = self.inner.gc_lock.read().await;
        let layers = self.layers_of(image)?;
        let diff_ids = ImageConfigFile::parse(&image.config, &image.id)?.rootfs.diff_ids;
        pull::unpack_layers(&self.inner.ctx, &layers, &diff_ids, &mut [], &image.id).await?;
        Ok(())
    }

    /// `berthd images import FILE`: an OCI image-layout tar or a `docker save` tar. Returns the images
    /// recorded.
    pub async fn import(&self, path: &Path) -> Result<Vec<Image>> {
        let _shared = self.inner.gc_lock.read().await;
        let images = import::import(&self.inner.ctx, path).await?;
        images.into_iter().map(|i| self.save(i)).collect()
    }
}
