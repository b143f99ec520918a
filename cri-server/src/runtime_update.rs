//! UpdateRuntimeConfig (the pod CIDR, passed to the network plugin), ListMetricDescriptors and
//! ListPodSandboxMetrics (a valid empty set: berth exports its figures through the stats RPCs).

use berth_core::Lifecycle;

use crate::api::{
    ListMetricDescriptorsRequest, ListMetricDescriptorsResponse, ListPodSandboxMetricsRequest,
    ListPodSandboxMetricsResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
};
use crate::error::CriResult;

pub async fn update_runtime_config(
    lifecycle: &Lifecycle,
    req: UpdateRuntimeConfigRequest,
) -> CriResult<UpdateRuntimeConfigResponse> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    if !cidr.is_empty() {
        lifecycle.plugins().network.update_pod_cidr(&cidr).await?;
    }
    Ok(UpdateRuntimeConfigResponse {})
}

pub fn metric_descriptors(_req: ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse {
    ListMetricDescriptorsResponse {
        descriptors: Vec::new(),
    }
}

pub fn pod_sandbox_metrics(_req: ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse {
    ListPodSandboxMetricsResponse {
        pod_metrics: Vec::new(),
    }
}
