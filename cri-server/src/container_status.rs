//! ContainerStatus and ListContainers.

use std::collections::HashMap;

use berth_core::Lifecycle;
use berth_core::model::{Container as Record, ContainerState as RecState};
use prost::Message;

use crate::api::{
    Container, ContainerConfig, ContainerMetadata, ContainerResources, ContainerState, ContainerStatus,
    ContainerStatusRequest, ContainerStatusResponse, ImageSpec, LinuxContainerResources, ListContainersRequest,
    ListContainersResponse, Mount,
};
use crate::error::CriResult;

pub fn state(c: &Record) -> i32 {
    (match c.state {
        RecState::Created => ContainerState::ContainerCreated,
        RecState::Running => ContainerState::ContainerRunning,
        RecState::Exited => ContainerState::ContainerExited,
        RecState::Unknown => ContainerState::ContainerUnknown,
    }) as i32
}

fn image_spec(c: &Record) -> ImageSpec {
    ImageSpec {
        image: c.image_ref.clone(),
        user_specified_image: c.image_ref.clone(),
        ..Default::default()
    }
}

/// The CRI view of a container record.
pub fn to_status(c: &Record) -> ContainerStatus {
    let config = ContainerConfig::decode(c.config.as_slice()).unwrap_or_default();
    let r = &c.runtime.resources;
    ContainerStatus {
        id: c.id.clone(),
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt: c.attempt,
        }),
        state: state(c),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        mounts: c
            .runtime
            .mounts
            .iter()
            .map(|m| Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        resources: Some(ContainerResources {
            linux: Some(LinuxContainerResources {
                cpu_period: r.cpu_period,
                cpu_quota: r.cpu_quota,
                cpu_shares: r.cpu_shares,
                memory_limit_in_bytes: r.memory_limit_in_bytes,
                oom_score_adj: r.oom_score_adj,
                cpuset_cpus: r.cpuset_cpus.clone(),
                cpuset_mems: r.cpuset_mems.clone(),
                unified: r.unified.clone().into_iter().collect(),
                memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: None,
        stop_signal: config.stop_signal,
    }
}

pub async fn status(lifecycle: &Lifecycle, req: ContainerStatusRequest) -> CriResult<ContainerStatusResponse> {
    let found = lifecycle.find_container(&req.container_id)?;
    let c = lifecycle.refresh_container(&found.id).await?;
    let mut info = HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({
                "pid": c.runtime.pid,
                "sandboxID": c.pod_id,
                "cgroup": c.runtime.cgroup.as_ref().map(|g| g.0.clone()),
                "snapshotKey": c.runtime.snapshot,
                "tty": c.runtime.tty,
            })
            .to_string(),
        );
    }
    Ok(ContainerStatusResponse {
        status: Some(to_status(&c)),
        info,
    })
}

pub fn list(lifecycle: &Lifecycle, req: ListContainersRequest) -> CriResult<ListContainersResponse> {
    let f = req.filter.unwrap_or_default();
    let containers = lifecycle
        .list_containers()?
        .into_iter()
        .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
        .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
        .filter(|c| f.state.as_ref().is_none_or(|s| s.state == state(c)))
        .filter(|c| f.label_selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
        .map(|c| Container {
            id: c.id.clone(),
            pod_sandbox_id: c.pod_id.clone(),
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt: c.attempt,
            }),
            image: Some(image_spec(&c)),
            image_ref: c.image_id.clone(),
            state: state(&c),
            created_at: c.created_at,
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
            image_id: c.image_id.clone(),
        })
        .collect();
    Ok(ListContainersResponse { containers })
}
