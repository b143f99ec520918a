//! Resources: cgroups for pods and containers, their limits, usage and OOM kills.
//!
//! A [`CgroupPath`] is a path inside the cgroup hierarchy (`/kubepods/burstable/pod<uid>/<container>`), the
//! same for every controller; the plugin maps it to the files of the mounted hierarchies (v1 or v2).

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::PluginResult;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CgroupPath(pub String);

impl CgroupPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Limits from the CRI `LinuxContainerResources` (and pod overhead); zero / empty means unset,
/// as in the CRI.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// Page size (`2MB`, `1GB`) → limit in bytes.
    pub hugepage_limits: BTreeMap<String, u64>,
    /// cgroup v2 files written verbatim.
    pub unified: BTreeMap<String, String>,
    /// `None`: the configured default.
    pub pids_limit: Option<i64>,
    /// Extra devices the container may use: (type `c`/`b`, major, minor, access `rwm`).
    pub devices: Vec<DeviceRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// What one sample of a cgroup's usage says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Unix nanoseconds of the sample.
    pub timestamp: i64,
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    /// usage − inactive_file, as kubelet computes it.
    pub memory_working_set: u64,
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub swap_usage: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V1,
    Hybrid,
    V2,
}

#[async_trait]
pub trait Resources: Send + Sync + 'static {
    /// The driver name for `RuntimeConfig` (`cgroupfs`).
    fn driver(&self) -> &str;

    fn mode(&self) -> CgroupMode;

    /// Detection details for `Status` verbose info and `berthd check`.
    fn info(&self) -> serde_json::Value;

    /// Creates (or adopts) the pod cgroup under `parent` (berth's default when empty).
    async fn create_pod(&self, pod_id: &str, parent: &str, overhead: &LinuxResources) -> PluginResult<CgroupPath>;

    async fn create_container(
        &self,
        pod: &CgroupPath,
        container_id: &str,
        resources: &LinuxResources,
    ) -> PluginResult<CgroupPath>;

    /// Applies new limits; invalid values leave the old ones in force.
    async fn update(&self, path: &CgroupPath, resources: &LinuxResources) -> PluginResult<()>;

    /// The `cgroup.procs` files a process must be written into to join `path`.
    fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf>;

    async fn stats(&self, path: &CgroupPath) -> PluginResult<CgroupStats>;

    /// Kills what is left in the cgroup and removes it (and its children); idempotent.
    async fn remove(&self, path: &CgroupPath) -> PluginResult<()>;
}
