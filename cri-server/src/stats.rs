//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: from the cgroup files (resources
//! plugin) and the writable layer (snapshotter).

use berth_core::Lifecycle;
use berth_core::model::{Container as Record, ContainerState, PodSandbox as PodRecord};
use berth_core::plugin::resources::CgroupStats;

use crate::api::{
    ContainerAttributes, ContainerMetadata, ContainerStats, ContainerStatsRequest, ContainerStatsResponse, CpuUsage,
    FilesystemIdentifier, FilesystemUsage, LinuxPodSandboxStats, ListContainerStatsRequest, ListContainerStatsResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, MemoryUsage, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxMetadata, PodSandboxStats, PodSandboxStatsRequest, PodSandboxStatsResponse,
    ProcessUsage, UInt64Value,
};
use crate::error::CriResult;

fn v(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

fn cpu(s: &CgroupStats) -> CpuUsage {
    CpuUsage {
        timestamp: s.timestamp,
        usage_core_nano_seconds: v(s.cpu_usage_ns),
        usage_nano_cores: v(s.cpu_usage_nano_cores),
        psi: None,
    }
}

fn memory(s: &CgroupStats) -> MemoryUsage {
    MemoryUsage {
        timestamp: s.timestamp,
        working_set_bytes: v(s.memory_working_set),
        available_bytes: (s.memory_limit > 0).then(|| UInt64Value {
            value: s.memory_limit.saturating_sub(s.memory_working_set),
        }),
        usage_bytes: v(s.memory_usage),
        rss_bytes: v(s.memory_rss),
        page_faults: v(s.page_faults),
        major_page_faults: v(s.major_page_faults),
        psi: None,
    }
}

async fn container_stats(lifecycle: &Lifecycle, c: &Record) -> ContainerStats {
    let plugins = lifecycle.plugins();
    let sample = match &c.runtime.cgroup {
        Some(cg) if c.state != ContainerState::Exited => plugins.resources.stats(cg).await.ok(),
        _ => None,
    };
    let layer = match &c.runtime.snapshot {
        Some(key) => plugins.snapshotter.usage(key).await.ok(),
        None => None,
    };
    let mountpoint = plugins
        .snapshotter
        .fs_info()
        .await
        .map(|f| f.mountpoint.display().to_string())
        .unwrap_or_default();
    let now = berth_core::model::now_nanos();
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt: c.attempt,
            }),
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
        }),
        cpu: sample.as_ref().map(cpu),
        memory: sample.as_ref().map(memory),
        writable_layer: layer.map(|u| FilesystemUsage {
            timestamp: now,
            fs_id: Some(FilesystemIdentifier { mountpoint }),
            used_bytes: v(u.bytes),
            inodes_used: v(u.inodes),
        }),
        swap: None,
        io: None,
    }
}

pub async fn container(lifecycle: &Lifecycle, req: ContainerStatsRequest) -> CriResult<ContainerStatsResponse> {
    let c = lifecycle.find_container(&req.container_id)?;
    Ok(ContainerStatsResponse {
        stats: Some(container_stats(lifecycle, &c).await),
    })
}

pub async fn list_containers(
    lifecycle: &Lifecycle,
    req: ListContainerStatsRequest,
) -> CriResult<ListContainerStatsResponse> {
    let f = req.filter.unwrap_or_default();
    let mut stats = Vec::new();
    for c in lifecycle.list_containers()? {
        let keep = (f.id.is_empty() || c.id.starts_with(&f.id))
            && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            && f.label_selector.iter().all(|(k, val)| c.labels.get(k) == Some(val));
        if keep {
            stats.push(container_stats(lifecycle, &c).await);
        }
    }
    Ok(ListContainerStatsResponse { stats })
}

/// The pod's interfaces, `eth0` as the default one (kubelet's choice too); `None` for host-network pods and
/// when the namespace cannot be read (a pod being torn down).
async fn network(p: &PodRecord) -> Option<NetworkUsage> {
    let netns = &p.runtime.network.as_ref()?.netns_path;
    let timestamp = berth_core::model::now_nanos();
    let counters = match crate::pod_net_stats::read(netns).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(pod = %p.id, netns = %netns.display(), error = %e, "no network stats");
            return None;
        }
    };
    let usage = |i: &crate::pod_net_stats::InterfaceCounters| NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: v(i.rx_bytes),
        rx_errors: v(i.rx_errors),
        tx_bytes: v(i.tx_bytes),
        tx_errors: v(i.tx_errors),
    };
    Some(NetworkUsage {
        timestamp,
        default_interface: counters.iter().find(|i| i.name == "eth0").map(usage),
        interfaces: counters.iter().map(usage).collect(),
    })
}

async fn pod_stats(lifecycle: &Lifecycle, p: &PodRecord) -> PodSandboxStats {
    let sample = match &p.runtime.cgroup {
        Some(cg) => lifecycle.plugins().resources.stats(cg).await.ok(),
        None => None,
    };
    let mut containers = Vec::new();
    for c in lifecycle
        .list_containers()
        .unwrap_or_default()
        .iter()
        .filter(|c| c.pod_id == p.id)
    {
        containers.push(container_stats(lifecycle, c).await);
    }
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: p.id.clone(),
            metadata: Some(PodSandboxMetadata {
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
                namespace: p.metadata.namespace.clone(),
                attempt: p.metadata.attempt,
            }),
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: sample.as_ref().map(cpu),
            memory: sample.as_ref().map(memory),
            network: network(p).await,
            process: sample.as_ref().map(|s| ProcessUsage {
                timestamp: s.timestamp,
                process_count: v(s.pids),
            }),
            containers,
            io: None,
        }),
        windows: None,
    }
}

pub async fn pod(lifecycle: &Lifecycle, req: PodSandboxStatsRequest) -> CriResult<PodSandboxStatsResponse> {
    let p = lifecycle.find_pod(&req.pod_sandbox_id)?;
    Ok(PodSandboxStatsResponse {
        stats: Some(pod_stats(lifecycle, &p).await),
    })
}

pub async fn list_pods(
    lifecycle: &Lifecycle,
    req: ListPodSandboxStatsRequest,
) -> CriResult<ListPodSandboxStatsResponse> {
    let f = req.filter.unwrap_or_default();
    let mut stats = Vec::new();
    for p in lifecycle.list_pods()? {
        if (f.id.is_empty() || p.id.starts_with(&f.id))
            && f.label_selector.iter().all(|(k, val)| p.labels.get(k) == Some(val))
        {
            stats.push(pod_stats(lifecycle, &p).await);
        }
    }
    Ok(ListPodSandboxStatsResponse { stats })
}
