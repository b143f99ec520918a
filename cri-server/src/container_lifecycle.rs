//! StartContainer, StopContainer, RemoveContainer. Stop and Remove of an unknown id succeed (CRI idempotence).

use std::time::Duration;

use berth_core::{Lifecycle, LifecycleError};

use crate::api::{
    RemoveContainerRequest, RemoveContainerResponse, StartContainerRequest, StartContainerResponse,
    StopContainerRequest, StopContainerResponse,
};
use crate::error::{CriError, CriResult};

fn resolve(lifecycle: &Lifecycle, id: &str) -> CriResult<Option<String>> {
    if id.is_empty() {
        return Err(CriError::InvalidArgument("container_id must not be empty".into()));
    }
    match lifecycle.find_container(id) {
        Ok(c) => Ok(Some(c.id)),
        Err(LifecycleError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn start(lifecycle: &Lifecycle, req: StartContainerRequest) -> CriResult<StartContainerResponse> {
    let c = lifecycle.find_container(&req.container_id)?;
    lifecycle.start_container(&c.id).await?;
    Ok(StartContainerResponse {})
}

pub async fn stop(lifecycle: &Lifecycle, req: StopContainerRequest) -> CriResult<StopContainerResponse> {
    if req.timeout < 0 {
        return Err(CriError::InvalidArgument("timeout must not be negative".into()));
    }
    if let Some(id) = resolve(lifecycle, &req.container_id)? {
        lifecycle
            .stop_container(&id, Duration::from_secs(req.timeout as u64))
            .await?;
    }
    Ok(StopContainerResponse {})
}

pub async fn remove(lifecycle: &Lifecycle, req: RemoveContainerRequest) -> CriResult<RemoveContainerResponse> {
    if let Some(id) = resolve(lifecycle, &req.container_id)? {
        lifecycle.remove_container(&id).await?;
    }
    Ok(RemoveContainerResponse {})
}
