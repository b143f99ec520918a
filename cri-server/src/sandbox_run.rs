//! RunPodSandbox: validate, translate to a core PodRequest, run.

use berth_core::Lifecycle;
use berth_core::lifecycle::{DnsConfig, PodRequest};
use berth_core::model::PodMetadata;
use berth_core::plugin::network::{PortMapping as NetPort, Protocol as NetProtocol};
use prost::Message;

use crate::api::{NamespaceMode, PodSandboxConfig, Protocol, RunPodSandboxRequest, RunPodSandboxResponse};
use crate::error::{CriError, CriResult};

pub async fn handle(lifecycle: &Lifecycle, req: RunPodSandboxRequest) -> CriResult<RunPodSandboxResponse> {
    let config = req
        .config
        .ok_or_else(|| CriError::InvalidArgument("config is required".into()))?;
    validate(&config)?;
    let pod = lifecycle.run_pod(translate(&config, req.runtime_handler)?).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id: pod.id })
}

/// The name a RunPodSandbox reserves (kubelet's retry repeats it), keying its detached run.
pub fn request_key(req: &RunPodSandboxRequest) -> String {
    let m = req.config.as_ref().and_then(|c| c.metadata.clone()).unwrap_or_default();
    let meta = PodMetadata {
        name: m.name,
        uid: m.uid,
        namespace: m.namespace,
        attempt: m.attempt,
    };
    format!("pod/{}", meta.reserved_name())
}

/// The checks CRI implementations agree on, then the spec module's (security context, sysctls).
pub fn validate(config: &PodSandboxConfig) -> CriResult<()> {
    crate::spec::validate_pod_config(config)?;
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::InvalidArgument("config.metadata is required".into()))?;
    for (field, value) in [("name", &m.name), ("uid", &m.uid), ("namespace", &m.namespace)] {
        if value.is_empty() {
            return Err(CriError::InvalidArgument(format!(
                "config.metadata.{field} must not be empty"
            )));
        }
    }
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(CriError::InvalidArgument(format!(
            "config.log_directory must be an absolute path, not {:?}",
            config.log_directory
        )));
    }
    for (i, p) in config.port_mappings.iter().enumerate() {
        if !(0..=65535).contains(&p.container_port) || !(0..=65535).contains(&p.host_port) {
            return Err(CriError::InvalidArgument(format!(
                "config.port_mappings[{i}]: port out of range"
            )));
        }
    }
    Ok(())
}

fn translate(config: &PodSandboxConfig, runtime_handler: String) -> CriResult<PodRequest> {
    let m = config.metadata.clone().unwrap_or_default();
    let linux = config.linux.clone().unwrap_or_default();
    let ns = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let dns = config.dns_config.clone().unwrap_or_default();
    let port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| NetPort {
            protocol: match Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp) {
                Protocol::Tcp => NetProtocol::Tcp,
                Protocol::Udp => NetProtocol::Udp,
                Protocol::Sctp => NetProtocol::Sctp,
            },
            container_port: p.container_port as u16,
            host_port: p.host_port as u16,
            host_ip: p.host_ip.clone(),
        })
        .collect();
    let mode = |v: i32| NamespaceMode::try_from(v).unwrap_or(NamespaceMode::Pod);
    Ok(PodRequest {
        metadata: PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        },
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        runtime_handler,
        config: config.encode_to_vec(),
        hostname: config.hostname.clone(),
        log_directory: config.log_directory.clone(),
        dns: DnsConfig {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        port_mappings,
        cgroup_parent: linux.cgroup_parent.clone(),
        host_network: mode(ns.network) == NamespaceMode::Node,
        host_ipc: mode(ns.ipc) == NamespaceMode::Node,
        host_pid: mode(ns.pid) == NamespaceMode::Node,
        shared_pid: mode(ns.pid) == NamespaceMode::Pod,
        sysctls: crate::spec::pod_sysctls(config)?.into_iter().collect(),
        resources: Default::default(),
    })
}
