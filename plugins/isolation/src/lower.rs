//! Lowering an OCI runtime spec to an [`InitPlan`]: pure, runs in berthd, unit-tested without root.

use std::path::{Path, PathBuf};

use berth_core::plugin::isolation::Rootfs;
use berth_core::plugin::snapshot::Mount as SnapshotMount;
use oci_spec::runtime::{LinuxNamespaceType, Mount as OciMount, PosixRlimitType, Spec};

use crate::plan::{
    CapSets, DeviceNode, IdMap, InitPlan, MountOp, NsEntry, NsKind, ProcessPlan, Rlimit, TargetKind, hex_encode,
};

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("spec has no process")]
    NoProcess,
    #[error("process.args is empty")]
    NoArgs,
    #[error("unsupported namespace type {0}")]
    Namespace(String),
    #[error("unknown capability {0}")]
    Capability(String),
    #[error("mount {destination}: {reason}")]
    Mount { destination: String, reason: String },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("hostname is set but the container has no UTS namespace")]
    HostnameWithoutUts,
}

/// Capability names by number (Linux 6.x: 0–40).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub fn capability_number(name: &str) -> Option<u32> {
    let name = name.to_ascii_uppercase();
    let name = if name.starts_with("CAP_") {
        name
    } else {
        format!("CAP_{name}")
    };
    CAPABILITIES.iter().position(|c| *c == name).map(|n| n as u32)
}

fn cap_mask<'a>(names: impl IntoIterator<Item = &'a oci_spec::runtime::Capability>) -> Result<u64, LowerError> {
    let mut mask = 0u64;
    for cap in names {
        let name = cap.to_string();
        let n = capability_number(&name).ok_or(LowerError::Capability(name))?;
        mask |= 1 << n;
    }
    Ok(mask)
}

/// Result of parsing mount(8)-style options.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: u64,
    /// Flags that were explicitly cleared (`rw`, `suid`, …), so a bind remount keeps them off.
    pub cleared: u64,
    pub propagation: u64,
    pub bind: bool,
    pub recursive_bind: bool,
    pub data: Vec<String>,
}

pub fn parse_mount_options<S: AsRef<str>>(options: &[S]) -> MountOptions {
    let mut out = MountOptions::default();
    for option in options {
        let option = option.as_ref();
        let (set, clear): (u64, u64) = match option {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "defaults" => (0, 0),
            "bind" => {
                out.bind = true;
                continue;
            }
            "rbind" => {
                out.bind = true;
                out.recursive_bind = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                let base = match option.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                out.propagation = if option.starts_with('r') {
                    base | libc::MS_REC
                } else {
                    base
                };
                continue;
            }
            other => {
                out.data.push(other.to_string());
                continue;
            }
        };
        out.flags = (out.flags | set) & !clear;
        out.cleared = (out.cleared | clear) & !set;
    }
    out
}

fn lower_mount(m: &OciMount) -> Result<MountOp, LowerError> {
    let destination = m.destination().display().to_string();
    if !m.destination().is_absolute() {
        return Err(LowerError::Mount {
            destination,
            reason: "destination must be absolute".into(),
        });
    }
    let options = m.options().clone().unwrap_or_default();
    let parsed = parse_mount_options(&options);
    let fstype = m.typ().clone().unwrap_or_default();
    let source = m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default();
    if parsed.bind || fstype == "bind" {
        let source_path = Path::new(&source);
        let target_kind = match std::fs::metadata(source_path) {
            Ok(meta) if !meta.is_dir() => TargetKind::File,
            _ => TargetKind::Dir,
        };
        let mut flags = libc::MS_BIND;
        if parsed.recursive_bind {
            flags |= libc::MS_REC;
        }
        let restricting = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let remount_flags = (parsed.flags & restricting != 0)
            .then_some(libc::MS_REMOUNT | libc::MS_BIND | (parsed.flags & !libc::MS_REMOUNT));
        return Ok(MountOp {
            source,
            target: m.destination().clone(),
            fstype: String::new(),
            flags,
            data: String::new(),
            remount_flags,
            propagation: parsed.propagation,
            chdir: None,
            target_kind: Some(target_kind),
        });
    }
    if fstype.is_empty() {
        return Err(LowerError::Mount {
            destination,
            reason: "no filesystem type".into(),
        });
    }
    Ok(MountOp {
        source: if source.is_empty() { fstype.clone() } else { source },
        target: m.destination().clone(),
        fstype,
        flags: parsed.flags,
        data: parsed.data.join(","),
        remount_flags: None,
        propagation: parsed.propagation,
        chdir: None,
        target_kind: Some(TargetKind::Dir),
    })
}

fn lower_rootfs_mount(m: &SnapshotMount, target: &Path) -> MountOp {
    let parsed = parse_mount_options(&m.options);
    let bind = parsed.bind || m.fstype == "bind";
    let mut flags = parsed.flags;
    if bind {
        flags |= libc::MS_BIND | if parsed.recursive_bind { libc::MS_REC } else { 0 };
    }
    MountOp {
        source: m.source.clone(),
        target: target.to_path_buf(),
        fstype: if bind { String::new() } else { m.fstype.clone() },
        flags: if bind { flags & !libc::MS_RDONLY } else { flags },
        data: parsed.data.join(","),
        remount_flags: (bind && parsed.flags & libc::MS_RDONLY != 0)
            .then_some(libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY),
        propagation: 0,
        chdir: m.chdir.clone(),
        target_kind: None,
    }
}

/// The device nodes every container with a tmpfs `/dev` gets (runc's defaults).
pub fn default_devices() -> Vec<DeviceNode> {
    let dev = |name: &str, major, minor| DeviceNode {
        path: PathBuf::from("/dev").join(name),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        dev("null", 1, 3),
        dev("zero", 1, 5),
        dev("full", 1, 7),
        dev("random", 1, 8),
        dev("urandom", 1, 9),
        dev("tty", 5, 0),
    ]
}

fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType as R;
    match t {
        R::RlimitCpu => 0,
        R::RlimitFsize => 1,
        R::RlimitData => 2,
        R::RlimitStack => 3,
        R::RlimitCore => 4,
        R::RlimitRss => 5,
        R::RlimitNproc => 6,
        R::RlimitNofile => 7,
        R::RlimitMemlock => 8,
        R::RlimitAs => 9,
        R::RlimitLocks => 10,
        R::RlimitSigpending => 11,
        R::RlimitMsgqueue => 12,
        R::RlimitNice => 13,
        R::RlimitRtprio => 14,
        R::RlimitRttime => 15,
    }
}

fn ns_kind(t: LinuxNamespaceType) -> Result<NsKind, LowerError> {
    Ok(match t {
        LinuxNamespaceType::User => NsKind::User,
        LinuxNamespaceType::Mount => NsKind::Mount,
        LinuxNamespaceType::Pid => NsKind::Pid,
        LinuxNamespaceType::Network => NsKind::Net,
        LinuxNamespaceType::Ipc => NsKind::Ipc,
        LinuxNamespaceType::Uts => NsKind::Uts,
        LinuxNamespaceType::Cgroup => NsKind::Cgroup,
        other => return Err(LowerError::Namespace(other.to_string())),
    })
}

fn lower_process(spec: &Spec) -> Result<ProcessPlan, LowerError> {
    let process = spec.process().as_ref().ok_or(LowerError::NoProcess)?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(LowerError::NoArgs);
    }
    let caps = match process.capabilities() {
        Some(c) => CapSets {
            bounding: cap_mask(c.bounding().iter().flatten())?,
            effective: cap_mask(c.effective().iter().flatten())?,
            inheritable: cap_mask(c.inheritable().iter().flatten())?,
            permitted: cap_mask(c.permitted().iter().flatten())?,
            ambient: cap_mask(c.ambient().iter().flatten())?,
        },
        None => CapSets::default(),
    };
    let user = process.user();
    let seccomp_bpf = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(hex_encode(
            &crate::seccomp::compile(profile).map_err(|e| LowerError::Seccomp(e.to_string()))?,
        )),
        None => None,
    };
    let cwd = process.cwd().display().to_string();
    Ok(ProcessPlan {
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd: if cwd.is_empty() { "/".into() } else { cwd },
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        caps,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                resource: rlimit_resource(r.typ()),
                soft: r.soft(),
                hard: r.hard(),
            })
            .collect(),
        terminal: process.terminal().unwrap_or(false),
        oom_score_adj: process.oom_score_adj(),
        seccomp_bpf,
    })
}

/// Lowers `spec` for a container whose root filesystem is `rootfs`; `rootfs_dir` is the host directory that
/// becomes `/` (for [`Rootfs::Mounts`], an empty directory the mounts are made onto inside the container).
pub fn lower(
    spec: &Spec,
    rootfs: &Rootfs,
    rootfs_dir: &Path,
    cgroup_procs: &[PathBuf],
) -> Result<InitPlan, LowerError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux
        .namespaces()
        .iter()
        .flatten()
        .map(|ns| {
            Ok(NsEntry {
                kind: ns_kind(ns.typ())?,
                path: ns.path().clone(),
            })
        })
        .collect::<Result<Vec<_>, LowerError>>()?;
    let has = |k: NsKind| namespaces.iter().any(|n| n.kind == k);
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(NsKind::Uts) {
        return Err(LowerError::HostnameWithoutUts);
    }
    let id_maps = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
        maps.iter()
            .flatten()
            .map(|m| IdMap {
                container_id: m.container_id(),
                host_id: m.host_id(),
                size: m.size(),
            })
            .collect()
    };
    let mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(lower_mount)
        .collect::<Result<Vec<_>, _>>()?;
    let dev_is_tmpfs = mounts
        .iter()
        .any(|m| m.target == Path::new("/dev") && m.fstype == "tmpfs");
    let mut devices = if dev_is_tmpfs { default_devices() } else { Vec::new() };
    for d in linux.devices().iter().flatten() {
        let kind = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => 'b',
            _ => 'c',
        };
        devices.retain(|existing| existing.path != *d.path());
        devices.push(DeviceNode {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let rootfs_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => libc::MS_SLAVE | libc::MS_REC,
        Some(p) => {
            let parsed = parse_mount_options(&[p]);
            if parsed.propagation == 0 {
                return Err(LowerError::Mount {
                    destination: "/".into(),
                    reason: format!("unknown rootfsPropagation {p:?}"),
                });
            }
            parsed.propagation
        }
    };
    let rootfs_mounts = match rootfs {
        Rootfs::Path(_) => Vec::new(),
        Rootfs::Mounts(ms) => ms.iter().map(|m| lower_rootfs_mount(m, rootfs_dir)).collect(),
    };
    let mut sysctls: Vec<(String, String)> = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sysctls.sort();
    Ok(InitPlan {
        uid_map: id_maps(linux.uid_mappings()),
        gid_map: id_maps(linux.gid_mappings()),
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
        rootfs: rootfs_dir.to_path_buf(),
        rootfs_mounts,
        rootfs_propagation,
        readonly_rootfs: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
        mounts,
        devices,
        masked_paths: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
        sysctls,
        process: lower_process(spec)?,
        cgroup_procs: cgroup_procs.to_vec(),
        namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, MountBuilder, ProcessBuilder, SpecBuilder};

    #[test]
    fn mount_options_split_into_flags_propagation_and_data() {
        let o = parse_mount_options(&["nosuid", "noexec", "newinstance", "ptmxmode=0666", "rslave", "ro"]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY);
        assert_eq!(o.propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(o.data, vec!["newinstance", "ptmxmode=0666"]);
        let o = parse_mount_options(&["ro", "rw", "rbind", "private"]);
        assert_eq!(o.flags, 0);
        assert!(o.bind && o.recursive_bind);
        assert_eq!(o.propagation, libc::MS_PRIVATE);
    }

    #[test]
    fn capability_names_map_to_kernel_numbers() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("CAP_NOPE"), None);
    }

    #[test]
    fn bind_mount_with_ro_gets_a_remount() {
        let m = MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/tmp")
            .options(vec!["rbind".to_string(), "ro".to_string(), "rprivate".to_string()])
            .build()
            .unwrap();
        let op = lower_mount(&m).unwrap();
        assert_eq!(op.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(
            op.remount_flags,
            Some(libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY)
        );
        assert_eq!(op.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(op.target_kind, Some(TargetKind::Dir));
    }

    #[test]
    fn default_spec_lowers_with_devices_masks_and_caps() {
        let spec = SpecBuilder::default()
            .hostname("box")
            .process(ProcessBuilder::default().args(vec!["sh".to_string()]).build().unwrap())
            .linux(LinuxBuilder::default().build().unwrap())
            .mounts(oci_spec::runtime::get_default_mounts())
            .build()
            .unwrap();
        let plan = lower(&spec, &Rootfs::Path("/r".into()), Path::new("/r"), &[]).unwrap();
        assert_eq!(plan.hostname.as_deref(), Some("box"));
        assert!(plan.masked_paths.iter().any(|p| p == "/proc/kcore"));
        assert!(plan.readonly_paths.iter().any(|p| p == "/proc/sys"));
        assert_eq!(plan.devices.len(), 6);
        assert_eq!(plan.rootfs_propagation, libc::MS_SLAVE | libc::MS_REC);
        let kill = 1u64 << 5;
        assert_ne!(plan.process.caps.bounding & kill, 0);
        assert_eq!(plan.process.caps.bounding & (1 << 21), 0, "no CAP_SYS_ADMIN by default");
        assert!(plan.process.no_new_privs);
    }

    #[test]
    fn hostname_without_uts_namespace_is_rejected() {
        let spec = SpecBuilder::default()
            .hostname("box")
            .process(ProcessBuilder::default().build().unwrap())
            .linux(LinuxBuilder::default().namespaces(vec![]).build().unwrap())
            .build()
            .unwrap();
        assert!(matches!(
            lower(&spec, &Rootfs::Path("/r".into()), Path::new("/r"), &[]),
            Err(LowerError::HostnameWithoutUts)
        ));
    }
}
