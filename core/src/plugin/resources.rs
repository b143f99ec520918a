//! Resources: cgroups for pods and containers, their limits, usage and OOM kills.
//!
//! A [`CgroupPath`] is a path inside the cgroup hierarchy (`/kubepods/burstable/pod<uid>/<container>`), the
//! same for every controller; the plugin maps it to the files of the mounted hierarchies (v1 or v2).
//! Like kubelet's cgroupfs driver, it is absolute from each hierarchy's root, never relative to the daemon's own
//! cgroup (which may differ per controller: on hosts where berthd's memory cgroup is `/process_api/<hash>`,
//! containers still go to `<memory mount>/kubepods/…`).
//!
//! Vocabulary: the *pod cgroup* is kubelet's `cgroup_parent` (`/kubepods/burstable/pod<uid>`) or
//! `<default parent>/<pod id>`; a *container cgroup* is `<pod cgroup>/<container id>`. Process placement is the
//! caller's: the shim writes the pid into each of [`Resources::procs_files`] before exec.

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
    /// A process attribute, not a cgroup one: applied by the isolation plugin; the resources plugin only checks
    /// its range.
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// Page size (`2MB`, `1GB`) → limit in bytes.
    pub hugepage_limits: BTreeMap<String, u64>,
    /// cgroup v2 files written verbatim.
    pub unified: BTreeMap<String, String>,
    /// `None`: the configured default at creation, unchanged on update; ≤ 0: no limit.
    pub pids_limit: Option<i64>,
    /// Extra devices the container may use: (type `c`/`b`, major, minor, access `rwm`).
    pub devices: Vec<DeviceRule>,
}

/// One device cgroup rule: `kind` is `a` (all), `b` or `c`; `None` major/minor is `*`.
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
    /// OOM kills in the cgroup so far (v2 `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`).
    pub oom_kills: u64,
    /// The memory limit in force, 0 for none (for the CRI's `available_bytes` = limit − working set).
    pub memory_limit: u64,
    /// CPU use since the previous sample of the same cgroup, in nano-cores (0 on the first sample).
    pub cpu_usage_nano_cores: u64,
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

    /// Detection report, one finding per line, for `berthd check`.
    fn check(&self) -> Vec<String>;

    /// The parent of pod cgroups for pods that name none (config `cgroups.default_parent`).
    fn default_parent(&self) -> CgroupPath;

    /// The pod cgroup: `parent` itself when given (kubelet's `cgroup_parent`, created if kubelet did not, adopted
    /// as is if it did), else `<default parent>/<pod_id>`. `resources` (the pod's limits, overhead included) are
    /// applied only to a cgroup this call creates: kubelet manages the limits of the ones it made.
    async fn create_pod(&self, pod_id: &str, parent: &str, resources: &LinuxResources) -> PluginResult<CgroupPath>;

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

    /// Where the pod's own processes (its shim and infra process) go. cgroup v2 allows processes only in leaves
    /// once a cgroup hands controllers down to its children ("no internal processes"), so there this is a leaf
    /// under the pod cgroup, made by `create_pod`; the pod cgroup itself by default.
    fn infra_procs_files(&self, pod: &CgroupPath) -> Vec<PathBuf> {
        self.procs_files(pod)
    }

    async fn stats(&self, path: &CgroupPath) -> PluginResult<CgroupStats>;

    /// OOM kills so far in the cgroup; cheap, and valid after its processes exited (until `remove`). A container
    /// whose main process died of SIGKILL with this > 0 is `OOMKilled` (exit code 137).
    async fn oom_kills(&self, path: &CgroupPath) -> PluginResult<u64>;

    /// The child cgroups of `parent` found in any hierarchy (also half-created ones): at start, those of the
    /// default parent that the store does not know are leftovers to `remove`.
    async fn list(&self, parent: &CgroupPath) -> PluginResult<Vec<CgroupPath>>;

    /// Kills what is left in the cgroup and removes it (and its children); idempotent.
    async fn remove(&self, path: &CgroupPath) -> PluginResult<()>;
}
