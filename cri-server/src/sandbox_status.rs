//! PodSandboxStatus and ListPodSandbox.

use std::collections::HashMap;

use berth_core::Lifecycle;
use berth_core::model::{PodSandbox as PodRecord, PodState};
use prost::Message;

use crate::api::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, NamespaceOption, PodIp,
    PodSandbox, PodSandboxConfig, PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, PodSandboxStatusResponse,
};
use crate::error::CriResult;

fn metadata(p: &PodRecord) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        namespace: p.metadata.namespace.clone(),
        attempt: p.metadata.attempt,
    }
}

fn state(p: &PodRecord) -> i32 {
    match p.state {
        PodState::Ready => PodSandboxState::SandboxReady as i32,
        PodState::NotReady => PodSandboxState::SandboxNotready as i32,
    }
}

pub async fn status(lifecycle: &Lifecycle, req: PodSandboxStatusRequest) -> CriResult<PodSandboxStatusResponse> {
    let p = lifecycle.find_pod(&req.pod_sandbox_id)?;
    let config = PodSandboxConfig::decode(p.config.as_slice()).unwrap_or_default();
    let ns: NamespaceOption = config
        .linux
        .and_then(|l| l.security_context)
        .and_then(|s| s.namespace_options)
        .unwrap_or_default();
    let mut ips = p.runtime.ips.iter();
    let network = PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
    };
    let mut info = HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({
                "hostname": p.runtime.hostname,
                "cgroup": p.runtime.cgroup.as_ref().map(|c| c.0.clone()),
                "namespaces": p.runtime.namespaces,
                "infraPid": p.runtime.namespaces.infra_pid,
                "filesDir": p.runtime.files_dir,
            })
            .to_string(),
        );
    }
    Ok(PodSandboxStatusResponse {
        status: Some(PodSandboxStatus {
            id: p.id.clone(),
            metadata: Some(metadata(&p)),
            state: state(&p),
            created_at: p.created_at,
            network: Some(network),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace { options: Some(ns) }),
            }),
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
            runtime_handler: p.runtime_handler.clone(),
        }),
        info,
        containers_statuses: Vec::new(),
        timestamp: berth_core::model::now_nanos(),
    })
}

pub fn list(lifecycle: &Lifecycle, req: ListPodSandboxRequest) -> CriResult<ListPodSandboxResponse> {
    let filter = req.filter.unwrap_or_default();
    let items = lifecycle
        .list_pods()?
        .into_iter()
        .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
        .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == state(p)))
        .filter(|p| filter.label_selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .map(|p| PodSandbox {
            id: p.id.clone(),
            metadata: Some(metadata(&p)),
            state: state(&p),
            created_at: p.created_at,
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
            runtime_handler: p.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}
