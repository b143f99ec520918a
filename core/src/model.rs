//! The objects berth manages: pod sandboxes, containers, images, and their ids and states.
//!
//! These are berth's own records, kept in the metadata store; the CRI layer translates to and from them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::plugin::isolation::PodNamespaces;
use crate::plugin::network::PodNetwork;
use crate::plugin::resources::{CgroupPath, LinuxResources};

/// A new random 64-hex-digit id, as containerd and CRI-O hand out for pods and containers.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `sha256:<hex>` of the given bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// The chain id of a layer stack (OCI image spec): `chain(L0) = diff(L0)`,
/// `chain(L0..n) = sha256(chain(L0..n-1) + " " + diff(Ln))`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainId(pub String);

impl ChainId {
    pub fn from_diff_ids<S: AsRef<str>>(diff_ids: &[S]) -> Vec<ChainId> {
        let mut out: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
        for diff in diff_ids {
            let next = match out.last() {
                None => diff.as_ref().to_string(),
                Some(parent) => sha256_digest(format!("{} {}", parent.0, diff.as_ref()).as_bytes()),
            };
            out.push(ChainId(next));
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, usable as a file name.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or(self.0.as_str(), |(_, h)| h)
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// kubelet's pod identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl PodMetadata {
    /// The reserved name: `name_namespace_uid_attempt`, as kubelet and containerd build it.
    pub fn reserved_name(&self) -> String {
        format!("{}_{}_{}_{}", self.name, self.namespace, self.uid, self.attempt)
    }

    /// The reserved name of a container of this pod: `container_pod_namespace_uid_attempt`, as containerd
    /// builds it (the container's attempt, not the pod's).
    pub fn container_reserved_name(&self, container: &str, attempt: u32) -> String {
        format!("{container}_{}_{}_{}_{attempt}", self.name, self.namespace, self.uid)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A pod sandbox as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSandbox {
    pub id: String,
    pub metadata: PodMetadata,
    pub state: PodState,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    /// The CRI request as received, encoded by the CRI layer (core does not interpret it).
    #[serde(default)]
    pub config: Vec<u8>,
    /// What the lifecycle set up for the pod, planned before the side effects so that cleanup can always be
    /// derived from the record alone.
    pub runtime: PodRuntime,
}

/// The host-side facts of a pod sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRuntime {
    pub hostname: String,
    pub log_directory: String,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub shared_pid: bool,
    /// The pod cgroup's parent as asked (kubelet's `cgroup_parent`), empty for berth's default.
    pub cgroup_parent: String,
    /// The pod cgroup, once created.
    pub cgroup: Option<CgroupPath>,
    pub namespaces: PodNamespaces,
    /// What the network plugin was (or will be) asked to set up; `None` for host-network pods.
    pub network: Option<PodNetwork>,
    pub ips: Vec<String>,
    /// Directory of the pod's hosts, hostname and resolv.conf files.
    pub files_dir: PathBuf,
}

/// A container as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    pub image_ref: String,
    pub image_id: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: String,
    #[serde(default)]
    pub config: Vec<u8>,
    pub runtime: ContainerRuntime,
}

/// The host-side facts of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRuntime {
    /// The container cgroup, once created.
    pub cgroup: Option<CgroupPath>,
    /// The snapshotter key of the writable rootfs (the container id), once prepared.
    pub snapshot: Option<String>,
    /// Signal number that stops it gracefully (image StopSignal), 15 when unset.
    pub stop_signal: i32,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    /// The resources applied at creation or by the last update.
    pub resources: LinuxResources,
    /// Host paths mounted into the container (for ContainerStatus).
    pub mounts: Vec<MountRecord>,
    pub pid: u32,
}

/// One mount as ContainerStatus reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// 0 private, 1 host-to-container, 2 bidirectional (CRI's MountPropagation numbers).
    pub propagation: i32,
}

/// An image as the store keeps it; its id is the digest of its config blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    /// `docker.io/library/busybox:latest`
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:…`
    pub repo_digests: Vec<String>,
    pub size: u64,
    /// Chain ids of the layers, bottom first.
    pub chain_ids: Vec<ChainId>,
    /// Digests of the blobs this image holds (manifest, config, layers) for garbage collection.
    pub blobs: Vec<String>,
    /// The image config JSON (OCI image config).
    pub config: Vec<u8>,
    pub pinned: bool,
    /// Digest of the platform image manifest in the content store (layer digests and media types).
    #[serde(default)]
    pub manifest_digest: String,
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let diffs = ["sha256:aaa", "sha256:bbb"];
        let chain = ChainId::from_diff_ids(&diffs);
        assert_eq!(chain[0].0, "sha256:aaa");
        assert_eq!(chain[1], ChainId(sha256_digest(b"sha256:aaa sha256:bbb")));
        assert_eq!(chain[1].hex().len(), 64);
    }

    #[test]
    fn reserved_name_is_kubelets() {
        let m = PodMetadata {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 2,
        };
        assert_eq!(m.reserved_name(), "web_default_u1_2");
        assert_eq!(m.container_reserved_name("nginx", 0), "nginx_web_default_u1_0");
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }
}
