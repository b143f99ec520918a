//! Network: wires a pod's (already pinned) network namespace into the node network.
//!
//! `setup` gets the pod's netns path and returns the pod's IPs; `teardown` undoes everything `setup` did and
//! is idempotent, also for a setup that failed half-way. Host-network pods never reach the plugin.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{PluginResult, Readiness};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A hostPort mapping from the pod spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// Empty means every host address.
    pub host_ip: String,
}

/// Everything a network plugin may need to know about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub pod_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub netns_path: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub cgroup_parent: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The result of a setup: the pod's addresses, the first one primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    pub ips: Vec<IpAddr>,
    /// The interface name inside the pod (`eth0`).
    pub interface: String,
}

#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// NetworkReady for the CRI `Status`.
    async fn readiness(&self) -> Readiness;

    async fn setup(&self, pod: &PodNetwork) -> PluginResult<PodNetworkStatus>;

    /// Undoes `setup`; idempotent, and complete also after a half-done setup.
    async fn teardown(&self, pod: &PodNetwork) -> PluginResult<()>;

    /// What the plugin holds for a pod (its addresses), e.g. for `PodSandboxStatus` after a daemon restart;
    /// `None` when it holds nothing. Reads only: no side effects.
    async fn pod_status(&self, _pod: &PodNetwork) -> PluginResult<Option<PodNetworkStatus>> {
        Ok(None)
    }

    /// Verifies that a set-up pod's network is still as `setup` left it (CNI `CHECK`); an error says what
    /// is wrong. Plugins that cannot tell return `Ok`.
    async fn check(&self, _pod: &PodNetwork) -> PluginResult<()> {
        Ok(())
    }

    /// From `UpdateRuntimeConfig`: the node's pod CIDR as the kubelet knows it.
    async fn update_pod_cidr(&self, _cidr: &str) -> PluginResult<()> {
        Ok(())
    }

    /// Called once at daemon start with the ids of the pods that still exist: release whatever the plugin
    /// holds for any other pod (IP allocations, rules, links).
    async fn reconcile(&self, _live_pods: &[String]) -> PluginResult<()> {
        Ok(())
    }
}
