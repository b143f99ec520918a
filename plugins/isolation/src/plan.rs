//! The init plan: an OCI runtime spec lowered to exactly the steps the container's first process performs
//! (which namespaces to join or create, which mount(2) calls to make, which capability bits to keep, the
//! compiled seccomp program). berthd builds it ([`crate::lower`]); the shim only carries it out, so the shim
//! neither parses OCI specs nor links libseccomp.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A namespace kind, with its clone flag and its name under `/proc/<pid>/ns/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    User,
    Mount,
    Pid,
    Net,
    Ipc,
    Uts,
    Cgroup,
}

impl NsKind {
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Mount => libc::CLONE_NEWNS,
            NsKind::Pid => libc::CLONE_NEWPID,
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::User => "user",
            NsKind::Mount => "mnt",
            NsKind::Pid => "pid",
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Cgroup => "cgroup",
        }
    }
}

/// One namespace of the container: joined at `path`, or new when `path` is `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsEntry {
    pub kind: NsKind,
    pub path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// What sits at a mount target when it has to be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetKind {
    Dir,
    File,
}

/// One mount(2) call, plus the follow-ups a bind mount needs (a remount for ro/nosuid/…; a propagation change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountOp {
    pub source: String,
    /// Inside the container (resolved under the rootfs) for spec mounts; a host path for rootfs mounts.
    pub target: PathBuf,
    /// Empty for bind mounts.
    pub fstype: String,
    /// `MS_*` flags of the first mount(2) call.
    pub flags: u64,
    pub data: String,
    /// For bind mounts with ro/nosuid/nodev/noexec: the flags of the `MS_REMOUNT|MS_BIND` call that applies them.
    pub remount_flags: Option<u64>,
    /// `MS_PRIVATE`/`MS_SLAVE`/`MS_SHARED`/`MS_UNBINDABLE`, possibly with `MS_REC`; 0 for none.
    pub propagation: u64,
    /// Paths in `data` are relative to this directory (snapshot mounts with long lowerdir lists).
    pub chdir: Option<PathBuf>,
    pub target_kind: Option<TargetKind>,
}

/// A device node created in a tmpfs `/dev` (bind-mounted from the host's in a user namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub path: PathBuf,
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Capability sets as bit masks (bit n = capability number n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The process half of the plan; an exec reuses the container's with other args.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapSets,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub terminal: bool,
    pub oom_score_adj: Option<i32>,
    /// A compiled classic-BPF seccomp program (`struct sock_filter` array), hex-encoded.
    pub seccomp_bpf: Option<String>,
}

/// Everything the container's init does between clone and exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPlan {
    pub namespaces: Vec<NsEntry>,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// The host directory that becomes `/`.
    pub rootfs: PathBuf,
    /// Snapshot mounts made onto `rootfs` inside the container's mount namespace; empty when `rootfs` is a
    /// prepared directory (then it is bind-mounted onto itself).
    pub rootfs_mounts: Vec<MountOp>,
    /// Propagation of `/` in the container's mount namespace, applied first (default `MS_SLAVE|MS_REC`).
    pub rootfs_propagation: u64,
    pub readonly_rootfs: bool,
    pub mounts: Vec<MountOp>,
    /// Created when a tmpfs is mounted on `/dev`.
    pub devices: Vec<DeviceNode>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub sysctls: Vec<(String, String)>,
    pub process: ProcessPlan,
    /// `cgroup.procs` files the process is written into before it unshares its cgroup namespace.
    pub cgroup_procs: Vec<PathBuf>,
}

impl InitPlan {
    pub fn namespace(&self, kind: NsKind) -> Option<&NsEntry> {
        self.namespaces.iter().find(|n| n.kind == kind)
    }
}

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex_decode(&hex_encode(&bytes)).unwrap(), bytes);
        assert!(hex_decode("abc").is_none());
        assert!(hex_decode("zz").is_none());
    }
}
