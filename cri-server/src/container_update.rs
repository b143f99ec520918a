//! UpdateContainerResources and ReopenContainerLog.

use berth_core::Lifecycle;
use berth_core::model::ContainerState;

use crate::api::{
    ReopenContainerLogRequest, ReopenContainerLogResponse, UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
};
use crate::error::{CriError, CriResult};

pub async fn update_resources(
    lifecycle: &Lifecycle,
    req: UpdateContainerResourcesRequest,
) -> CriResult<UpdateContainerResourcesResponse> {
    let c = lifecycle.find_container(&req.container_id)?;
    let linux = req.linux.unwrap_or_default();
    let mut resources = crate::resources::from_cri(&linux, "linux")?;
    // A pids limit is not part of the CRI resources: keep the one set at creation.
    resources.pids_limit = c.runtime.resources.pids_limit;
    lifecycle.update_container_resources(&c.id, resources).await?;
    Ok(UpdateContainerResourcesResponse {})
}

pub async fn reopen_log(
    lifecycle: &Lifecycle,
    req: ReopenContainerLogRequest,
) -> CriResult<ReopenContainerLogResponse> {
    let c = lifecycle.find_container(&req.container_id)?;
    if c.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is not running",
            c.id
        )));
    }
    lifecycle.plugins().isolation.reopen_log(&c.id).await?;
    Ok(ReopenContainerLogResponse {})
}
