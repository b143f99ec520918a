//! A pull: resolve the reference on its hosts, pick the linux/amd64 manifest, fetch the config, download
//! the layers concurrently into the content store and unpack each as its bytes come in (several at once
//! when the snapshotter's layers are independent of their parents, else in order). A layer whose chain the snapshotter already holds is neither downloaded
//! nor unpacked again.

use std::path::PathBuf;
use std::sync::Arc;

use berth_core::model::{ChainId, Image};
use berth_core::plugin::snapshot::{Snapshotter, UnpackLimits};
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;

use crate::content::{ContentStore, IngestWatch};
use crate::error::{ImageError, Result};
use crate::hosts::hosts_for;
use crate::layer::tar_stream;
use crate::manifest::{Descriptor, Document, ImageConfigFile, Parsed, select_platform};
use crate::reference::ImageRef;
use crate::remote::{PullAuth, Remote};

/// What a pull or an import needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub content: ContentStore,
    pub snapshotter: Arc<dyn Snapshotter>,
    pub limits: UnpackLimits,
    pub max_concurrent: usize,
    pub hosts_dir: PathBuf,
}

/// One layer download in flight, and its progress for unpacking while it streams in.
pub(crate) struct Download {
    handle: JoinHandle<Result<()>>,
    watch: Arc<IngestWatch>,
}

/// Layer downloads of one pull: aborted if the pull ends early.
struct Downloads(Vec<Option<Download>>);

impl Downloads {
    /// Aborts the downloads still running and waits until each has ended (its unfinished ingest file
    /// removed), so that a failed pull returns with nothing of it left half-written in the content store.
    async fn cancel(&mut self) {
        for d in self.0.iter_mut().flatten() {
            d.handle.abort();
            let _ = (&mut d.handle).await;
        }
        self.0.clear();
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        for d in self.0.iter().flatten() {
            d.handle.abort();
        }
    }
}

/// Ends a download's watch however its task ends (even aborted before any byte), so that an unpack
/// following it never waits forever.
struct EndWatch(Arc<IngestWatch>);

impl Drop for EndWatch {
    fn drop(&mut self) {
        self.0.finish(Err("the download was cancelled".into()));
    }
}

fn check_layer_type(d: &Descriptor, reference: &str) -> Result<()> {
    if d.media_type.is_empty() || d.media_type.contains(".tar") || d.media_type.contains("rootfs.diff") {
        Ok(())
    } else {
        Err(ImageError::Unsupported {
            reference: reference.to_string(),
            what: format!("layer media type {}", d.media_type),
        })
    }
}

pub(crate) async fn pull(ctx: &Ctx, r: &ImageRef, auth: &PullAuth) -> Result<Image> {
    let full = r.full();
    let remote = Arc::new(Remote::new(r, hosts_for(&ctx.hosts_dir, &r.registry)?, auth).await?);
    let (top, top_digest) = remote.resolve().await?;
    ctx.content.put(&top, Some(&top_digest)).await?;
    let mut blobs = vec![top_digest.clone()];
    let (manifest_digest, manifest_size, config, layers) = match Document::parse(&top, &top_digest, &full)? {
        Parsed::Manifest { config, layers } => (top_digest.clone(), top.len() as u64, config, layers),
        Parsed::Index(entries) => {
            let chosen = select_platform(&entries, &full)?;
            let bytes = match ctx.content.has(&chosen.digest) {
                true => ctx.content.read(&chosen.digest)?,
                false => remote.manifest(&chosen.digest).await?,
            };
            ctx.content.put(&bytes, Some(&chosen.digest)).await?;
            blobs.push(chosen.digest.clone());
            match Document::parse(&bytes, &chosen.digest, &full)? {
                Parsed::Manifest { config, layers } => (chosen.digest.clone(), bytes.len() as u64, config, layers),
                Parsed::Index(_) => {
                    return Err(ImageError::Unsupported {
                        reference: full,
                        what: "nested image index".into(),
                    });
                }
            }
        }
    };
    for l in &layers {
        check_layer_type(l, &full)?;
    }
    if !ctx.content.has(&config.digest) {
        remote.fetch_blob(&ctx.content, &config, None).await?;
    }
    let config_bytes = ctx.content.read(&config.digest)?;
    let parsed = ImageConfigFile::parse(&config_bytes, &config.digest)?;
    parsed.check_platform(&full)?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::BadDocument {
            what: "image config",
            digest: config.digest.clone(),
            message: format!("{} diff ids for {} layers", diff_ids.len(), layers.len()),
        });
    }
    blobs.push(config.digest.clone());
    let chain = ChainId::from_diff_ids(&diff_ids);

    let semaphore = Arc::new(tokio::sync::Semaphore::new(ctx.max_concurrent.max(1)));
    let mut downloads = Downloads(Vec::with_capacity(layers.len()));
    for (i, layer) in layers.iter().enumerate() {
        blobs.push(layer.digest.clone());
        let present = ctx
            .snapshotter
            .has_layer(&chain[i])
            .await
            .map_err(ImageError::Snapshotter)?;
        if present || ctx.content.has(&layer.digest) {
            downloads.0.push(None);
            continue;
        }
        let (remote, content, layer, sem) = (remote.clone(), ctx.content.clone(), layer.clone(), semaphore.clone());
        let watch = Arc::new(IngestWatch::default());
        let end = EndWatch(watch.clone());
        let handle = tokio::spawn(async move {
            let _end = end;
            let _permit = sem.acquire_owned().await;
            let result = remote.fetch_blob(&content, &layer, Some(_end.0.clone())).await;
            if let Err(e) = &result {
                _end.0.finish(Err(e.to_string()));
            }
            result
        });
        downloads.0.push(Some(Download { handle, watch }));
    }
    if let Err(e) = unpack_layers(ctx, &layers, &diff_ids, &mut downloads.0, &full).await {
        downloads.cancel().await;
        return Err(e);
    }

    let size = manifest_size + config.size + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(Image {
        id: config.digest.clone(),
        repo_tags: r.tagged().into_iter().collect(),
        repo_digests: vec![r.with_digest(&top_digest)],
        size,
        chain_ids: chain,
        blobs,
        config: config_bytes,
        pinned: false,
        manifest_digest,
    })
}

/// Unpacks the layers: a layer still downloading is unpacked as its bytes come in (the reader reaches EOF
/// only once the blob is verified), the others from the content store. Bottom first, one at a time, when
/// each layer is built on its parent (native); up to `max_concurrent` at once when the snapshotter's
/// layers are independent (overlayfs), each committed after its parent.
pub(crate) async fn unpack_layers(
    ctx: &Ctx,
    layers: &[Descriptor],
    diff_ids: &[String],
    downloads: &mut [Option<Download>],
    reference: &str,
) -> Result<Vec<ChainId>> {
    let chain = ChainId::from_diff_ids(diff_ids);
    let width = match ctx.snapshotter.unpacks_independently() {
        true => ctx.max_concurrent.max(1),
        false => 1,
    };
    let mut slots = downloads.iter_mut();
    let jobs: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let parent = if i == 0 { None } else { Some(&chain[i - 1]) };
            unpack_one(ctx, layer, &diff_ids[i], &chain[i], parent, slots.next(), reference)
        })
        .collect();
    // In order: the oldest layer in flight always has its parent committed, so the window never stalls.
    futures::stream::iter(jobs)
        .buffered(width)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(chain)
}

/// One layer of [`unpack_layers`]: from its download in flight (`slot`), else from the content store.
async fn unpack_one(
    ctx: &Ctx,
    layer: &Descriptor,
    diff_id: &str,
    chain: &ChainId,
    parent: Option<&ChainId>,
    slot: Option<&mut Option<Download>>,
    reference: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    let present = ctx
        .snapshotter
        .has_layer(chain)
        .await
        .map_err(ImageError::Snapshotter)?;
    let (applied, mismatch) = match slot {
        Some(slot @ Some(_)) => {
            let download = slot.as_mut().expect("a download");
            if present {
                // Unpacked meanwhile by another pull: only the blob is still wanted.
                let done = (&mut download.handle).await;
                *slot = None;
                return done.map_err(|_| cancelled(reference))?;
            }
            let (tar, mismatch) = tar_stream(download.watch.follow(), &layer.media_type, diff_id);
            let apply = ctx.snapshotter.apply_layer(chain, parent, tar, ctx.limits);
            // The handle is awaited in place: if this pull is dropped, its owner aborts the download.
            let (applied, downloaded) = tokio::join!(apply, &mut download.handle);
            *slot = None;
            // A failed download explains a failed unpack better than the unpack does.
            downloaded.map_err(|_| cancelled(reference))??;
            (applied, mismatch)
        }
        _ => {
            if present {
                return Ok(());
            }
            let file = ctx.content.open_blob(&layer.digest)?;
            let (tar, mismatch) = tar_stream(file, &layer.media_type, diff_id);
            (
                ctx.snapshotter.apply_layer(chain, parent, tar, ctx.limits).await,
                mismatch,
            )
        }
    };
    let usage = applied.map_err(|source| match mismatch.happened() {
        true => ImageError::BadDocument {
            what: "layer",
            digest: layer.digest.clone(),
            message: source.to_string(),
        },
        false => ImageError::Unpack {
            digest: layer.digest.clone(),
            chain: chain.to_string(),
            source,
        },
    })?;
    tracing::debug!(layer = %layer.digest, %chain, bytes = usage.bytes,
        elapsed_ms = started.elapsed().as_millis() as u64, "layer unpacked");
    Ok(())
}

fn cancelled(reference: &str) -> ImageError {
    ImageError::Cancelled {
        reference: reference.to_string(),
    }
}
