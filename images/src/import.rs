//! Air-gapped import of an OCI image-layout tar (`index.json` + `blobs/sha256/…`) or a `docker save` tar
//! (`manifest.json` + config and layer files, or symlinks to blobs). Every file goes into the content
//! store under its own digest; OCI blob names are checked against it. A `docker save` image gets a
//! Docker schema 2 manifest written for it, so every image has one.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use berth_core::model::Image;
use serde::Deserialize;

use crate::content::ContentStore;
use crate::error::{ImageError, Result};
use crate::manifest::{DOCKER_MANIFEST, Descriptor, Document, ImageConfigFile, Parsed, select_platform};
use crate::pull::{Ctx, unpack_layers};
use crate::reference::ImageRef;

const SMALL_FILES: [&str; 4] = ["index.json", "manifest.json", "oci-layout", "repositories"];

/// What the archive held: its small documents, and every other file's digest and size by name.
struct Archive {
    docs: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, (String, u64)>,
    links: HashMap<String, String>,
}

impl Archive {
    fn blob(&self, name: &str) -> Option<&(String, u64)> {
        let mut name = name.to_string();
        for _ in 0..8 {
            if let Some(b) = self.blobs.get(&name) {
                return Some(b);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }
}

/// `a/b/../c` → `a/c`, dropping `.` and leading `/`; `None` when it climbs out.
fn normalize(p: &Path) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop()?;
            }
            _ => {}
        }
    }
    Some(out.join("/"))
}

fn read_archive(content: &ContentStore, path: &Path) -> Result<Archive> {
    let bad = |message: String| ImageError::Import {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut archive = Archive {
        docs: HashMap::new(),
        blobs: HashMap::new(),
        links: HashMap::new(),
    };
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let Some(name) = normalize(&raw) else {
            return Err(bad(format!("entry {} climbs out of the archive", raw.display())));
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().map_err(|e| bad(e.to_string()))?.unwrap_or_default();
            let base = if kind.is_symlink() {
                raw.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                PathBuf::new()
            };
            if let Some(t) = normalize(&base.join(target)) {
                archive.links.insert(name, t);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if SMALL_FILES.contains(&name.as_str()) {
            let mut buf = Vec::new();
            entry
                .by_ref()
                .take(64 << 20)
                .read_to_end(&mut buf)
                .map_err(|e| bad(e.to_string()))?;
            archive.docs.insert(name, buf);
            continue;
        }
        let (digest, size) = content.ingest_sync(&mut entry)?;
        if let Some(hex) = name.strip_prefix("blobs/sha256/")
            && digest != format!("sha256:{hex}")
        {
            return Err(bad(format!("{name} has digest {digest}")));
        }
        archive.blobs.insert(name, (digest, size));
    }
    Ok(archive)
}

#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

pub(crate) async fn import(ctx: &Ctx, path: &Path) -> Result<Vec<Image>> {
    let content = ctx.content.clone();
    let p = path.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || read_archive(&content, &p))
        .await
        .map_err(|e| ImageError::Import {
            path: path.to_path_buf(),
            message: e.to_string(),
        })??;
    let bad = |message: String| ImageError::Import {
        path: path.to_path_buf(),
        message,
    };
    let mut images = Vec::new();
    if let Some(index) = archive.docs.get("index.json") {
        let doc: Document = serde_json::from_slice(index).map_err(|e| bad(format!("index.json: {e}")))?;
        for top in doc.manifests.unwrap_or_default() {
            let name = top
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| top.annotations.get("org.opencontainers.image.ref.name"))
                .and_then(|n| ImageRef::parse(n).ok());
            images.push(import_oci(ctx, &top, name.as_ref(), path).await?);
        }
    } else if let Some(manifest) = archive.docs.get("manifest.json") {
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
        for e in entries {
            images.push(import_docker(ctx, &archive, &e, path).await?);
        }
    } else {
        return Err(bad(
            "neither index.json (OCI layout) nor manifest.json (docker save)".into()
        ));
    }
    Ok(images)
}

async fn import_oci(ctx: &Ctx, top: &Descriptor, name: Option<&ImageRef>, path: &Path) -> Result<Image> {
    let label = name.map_or_else(|| top.digest.clone(), ImageRef::full);
    let top_bytes = ctx.content.read(&top.digest)?;
    let (manifest_digest, manifest_bytes) = match Document::parse(&top_bytes, &top.digest, &label)? {
        Parsed::Manifest { .. } => (top.digest.clone(), top_bytes),
        Parsed::Index(entries) => {
            let d = select_platform(&entries, &label)?;
            (d.digest.clone(), ctx.content.read(&d.digest)?)
        }
    };
    let Parsed::Manifest { config, layers } = Document::parse(&manifest_bytes, &manifest_digest, &label)? else {
        return Err(ImageError::Import {
            path: path.to_path_buf(),
            message: format!("{label}: nested index"),
        });
    };
    let mut blobs = vec![top.digest.clone()];
    if manifest_digest != top.digest {
        blobs.push(manifest_digest.clone());
    }
    finish(
        ctx,
        name,
        &top.digest,
        manifest_digest,
        manifest_bytes.len() as u64,
        config,
        layers,
        blobs,
        &label,
    )
    .await
}

async fn import_docker(ctx: &Ctx, archive: &Archive, e: &DockerSaveEntry, path: &Path) -> Result<Image> {
    let missing = |what: &str| ImageError::Import {
        path: path.to_path_buf(),
        message: format!("docker save entry names {what}, which the archive lacks"),
    };
    let (config_digest, config_size) = archive.blob(&e.config).ok_or_else(|| missing(&e.config))?.clone();
    let mut layers = Vec::new();
    for l in &e.layers {
        let (digest, size) = archive.blob(l).ok_or_else(|| missing(l))?.clone();
        layers.push(Descriptor {
            // The file may be compressed anyway: unpacking sniffs the stream when the type says plain tar.
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            digest,
            size,
            ..Default::default()
        });
    }
    let config = Descriptor {
        media_type: "application/vnd.docker.container.image.v1+json".into(),
        digest: config_digest,
        size: config_size,
        ..Default::default()
    };
    let manifest = Document {
        schema_version: 2,
        media_type: DOCKER_MANIFEST.into(),
        config: Some(config.clone()),
        layers: layers.clone(),
        ..Default::default()
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| missing(&e.to_string()))?;
    let manifest_digest = ctx.content.put(&bytes, None).await?;
    let tags: Vec<ImageRef> = e
        .repo_tags
        .iter()
        .flatten()
        .map(|t| ImageRef::parse(t))
        .collect::<Result<_>>()?;
    let blobs = vec![manifest_digest.clone()];
    let size = bytes.len() as u64;
    let mut image = finish(
        ctx,
        tags.first(),
        "",
        manifest_digest,
        size,
        config,
        layers,
        blobs,
        &e.config,
    )
    .await?;
    image.repo_tags = tags.iter().filter_map(ImageRef::tagged).collect();
    Ok(image)
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &Ctx,
    name: Option<&ImageRef>,
    top_digest: &str,
    manifest_digest: String,
    manifest_size: u64,
    config: Descriptor,
    layers: Vec<Descriptor>,
    mut blobs: Vec<String>,
    label: &str,
) -> Result<Image> {
    let config_bytes = ctx.content.read(&config.digest)?;
    let parsed = ImageConfigFile::parse(&config_bytes, &config.digest)?;
    parsed.check_platform(label)?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::BadDocument {
            what: "image config",
            digest: config.digest.clone(),
            message: format!("{} diff ids for {} layers", diff_ids.len(), layers.len()),
        });
    }
    for l in &layers {
        if !ctx.content.has(&l.digest) {
            return Err(ImageError::NotFound(format!("{label}: layer {}", l.digest)));
        }
    }
    let chain_ids = unpack_layers(ctx, &layers, &diff_ids, &mut [], label).await?;
    blobs.push(config.digest.clone());
    blobs.extend(layers.iter().map(|l| l.digest.clone()));
    Ok(Image {
        id: config.digest.clone(),
        repo_tags: name.and_then(ImageRef::tagged).into_iter().collect(),
        repo_digests: match (name, top_digest.is_empty()) {
            (Some(r), false) => vec![r.with_digest(top_digest)],
            _ => Vec::new(),
        },
        size: manifest_size + config.size + layers.iter().map(|l| l.size).sum::<u64>(),
        chain_ids,
        blobs,
        config: config_bytes,
        pinned: false,
        manifest_digest,
    })
}
