//! The CRI ImageService: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo, over the image store.

use std::collections::HashMap;

use berth_core::model::Image as Record;
use berth_images::{ImageStore, PullAuth};

use crate::api::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec,
    ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest, ListImagesResponse, PullImageRequest,
    PullImageResponse, RemoveImageRequest, RemoveImageResponse, UInt64Value,
};
use crate::error::{CriError, CriResult};

fn image_name(spec: Option<ImageSpec>) -> CriResult<String> {
    let name = spec.map(|s| s.image).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(CriError::InvalidArgument("image.image must name an image".into()));
    }
    Ok(name)
}

/// The CRI view of an image record; `uid`/`username` from the config's User, as kubelet wants them.
pub fn to_cri(i: &Record) -> Image {
    let user = berth_images::runtime_config(i).map(|c| c.user).unwrap_or_default();
    let user = user.split(':').next().unwrap_or("").to_string();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(Int64Value { value: n }), String::new()),
        Err(_) => (None, user),
    };
    Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: i.pinned,
    }
}

pub async fn pull(images: &ImageStore, req: PullImageRequest) -> CriResult<PullImageResponse> {
    let name = image_name(req.image)?;
    let a = req.auth.unwrap_or_default();
    let auth = PullAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        registry_token: a.registry_token,
        identity_token: a.identity_token,
    };
    let image = images.pull(&name, &auth).await;
    // A pull's buffers (decompression, hashing, registry responses) are freed when it ends, but glibc keeps
    // the pages: about 20 MiB stayed resident after one 200 MB pull. Hand them back.
    berth_isolation::trim_heap();
    Ok(PullImageResponse { image_ref: image?.id })
}

pub fn list(images: &ImageStore, req: ListImagesRequest) -> CriResult<ListImagesResponse> {
    let filter = req.filter.and_then(|f| f.image).map(|s| s.image);
    let list = images.list(filter.as_deref())?;
    Ok(ListImagesResponse {
        images: list.iter().map(to_cri).collect(),
    })
}

pub fn status(images: &ImageStore, req: ImageStatusRequest) -> CriResult<ImageStatusResponse> {
    let name = image_name(req.image)?;
    // A missing image is not an error here: the CRI answers with no image.
    let Some(image) = images.status(&name)? else {
        return Ok(ImageStatusResponse {
            image: None,
            info: HashMap::new(),
        });
    };
    let info = if req.verbose {
        images.verbose_info(&image)?.into_iter().collect()
    } else {
        HashMap::new()
    };
    Ok(ImageStatusResponse {
        image: Some(to_cri(&image)),
        info,
    })
}

pub async fn remove(images: &ImageStore, req: RemoveImageRequest) -> CriResult<RemoveImageResponse> {
    let name = image_name(req.image)?;
    images.remove(&name).await?;
    Ok(RemoveImageResponse {})
}

pub async fn fs_info(images: &ImageStore, _req: ImageFsInfoRequest) -> CriResult<ImageFsInfoResponse> {
    let fs = images.fs_info().await?;
    let timestamp = berth_core::model::now_nanos();
    let usage = |u: berth_core::plugin::snapshot::Usage| FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: fs.mountpoint.display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: u.bytes }),
        inodes_used: Some(UInt64Value { value: u.inodes }),
    };
    // Images (blobs and layers) and containers' writable layers live in one snapshot store: both entries
    // name its root, as kubelet expects of a runtime whose image and container filesystems are one
    // (it then treats them as one disk); each counts only its own use.
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![usage(fs.images)],
        container_filesystems: vec![usage(fs.containers)],
    })
}
