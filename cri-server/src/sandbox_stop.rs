//! StopPodSandbox and RemovePodSandbox: idempotent; an unknown id is not an error (CRI).

use berth_core::Lifecycle;

use crate::api::{RemovePodSandboxRequest, RemovePodSandboxResponse, StopPodSandboxRequest, StopPodSandboxResponse};
use crate::error::{CriError, CriResult};

/// The full id of a pod given by id or unique prefix; `None` when no pod matches.
fn resolve(lifecycle: &Lifecycle, id: &str) -> CriResult<Option<String>> {
    if id.is_empty() {
        return Err(CriError::InvalidArgument("pod_sandbox_id must not be empty".into()));
    }
    match lifecycle.find_pod(id) {
        Ok(p) => Ok(Some(p.id)),
        Err(berth_core::LifecycleError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn stop(lifecycle: &Lifecycle, req: StopPodSandboxRequest) -> CriResult<StopPodSandboxResponse> {
    if let Some(id) = resolve(lifecycle, &req.pod_sandbox_id)? {
        lifecycle.stop_pod(&id).await?;
    }
    Ok(StopPodSandboxResponse {})
}

pub async fn remove(lifecycle: &Lifecycle, req: RemovePodSandboxRequest) -> CriResult<RemovePodSandboxResponse> {
    if let Some(id) = resolve(lifecycle, &req.pod_sandbox_id)? {
        lifecycle.remove_pod(&id).await?;
    }
    Ok(RemovePodSandboxResponse {})
}
