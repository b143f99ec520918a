//! CreateContainer's CRI → OCI runtime spec translation, and CRI request validation.
//!
//! berth builds the spec itself, the way containerd (`internal/cri/opts`, `container_create*.go`) and CRI-O
//! (`server/container_create_linux.go`) do: the image config gives argv, env, working dir, user and volumes;
//! the CRI config overrides them and adds mounts, devices, limits and the security context; berth adds its
//! defaults (mounts, capabilities, masked paths). Everything is decided here, from values; the few facts of
//! the host (real paths, device numbers, seccomp profiles) come through the [`Host`] seam, so the whole
//! translation is table-tested without root.
//!
//! Vocabulary: the *pod context* is what the pod sandbox already has (pinned namespace paths, the files it
//! wrote); *image facts* are the image's config and its /etc/passwd and /etc/group; the result is a
//! [`BuiltContainer`]: the spec plus what the caller must do or record (dirs to create, log path, stop
//! signal, limits for the resources plugin).
//!
//! Not done here: `linux.cgroupsPath` (the lifecycle sets it once the container cgroup exists) and the pod's
//! sysctls (applied once to the pod's namespaces, see [`pod_sysctls`]; containers join those namespaces).

mod caps;
mod devices;
pub mod host;
mod limits;
mod mounts;
mod process;
mod security;
mod user;
mod validate;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use berth_core::model::MountRecord;
use berth_core::plugin::resources::LinuxResources;
use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxSeccomp, Process, RootBuilder, Spec, UserBuilder,
};

use crate::api::{self, NamespaceMode};
use crate::error::{CriError, CriResult};

pub use caps::{DEFAULT_CAPS, LAST_KNOWN_CAP};
pub use host::FsHost;
pub use process::parse_signal;
pub use security::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, SeccompProfile};
pub use validate::{
    SysctlNamespace, normalize_sysctl, pod_sysctls, sysctl_namespace, validate_container_config, validate_log_path,
    validate_pod_config,
};

/// The OCI runtime spec version berth writes.
pub const OCI_VERSION: &str = "1.2.0";

/// containerd's annotations (NRI plugins and node tools read them).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
}

/// Facts of the pod sandbox the container joins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodContext {
    pub pod_id: String,
    /// The hostname the pod's containers see: the pod's, or the node's for a host-network pod (for `HOSTNAME`).
    pub hostname: String,
    /// Pinned namespace files; `None` where the pod uses the host's.
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// The pod's shared PID namespace (`NamespaceMode::POD`), else `None`.
    pub pidns: Option<PathBuf>,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    /// Files berth wrote for the pod; `None` skips the mount (as containerd does when the file is absent).
    pub etc_hosts: Option<PathBuf>,
    pub etc_hostname: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The pod-shared /dev/shm directory, if any (else each container gets a private tmpfs).
    pub shm: Option<PathBuf>,
}

/// The image: its config and the text of its /etc/passwd and /etc/group, if present.
#[derive(Clone, Copy, Debug)]
pub struct ImageFacts<'a> {
    pub config: &'a oci_spec::image::ImageConfiguration,
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
}

/// Daemon-wide settings of the translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecDefaults {
    /// Written to the spec's `linux.resources.pids` when > 0 (the resources plugin applies its own default).
    pub pids_limit: Option<i64>,
    /// `false` refuses privileged containers outright.
    pub privileged_allowed: bool,
    /// The highest capability the kernel knows (`/proc/sys/kernel/cap_last_cap`): "all capabilities" means
    /// 0..=this.
    pub cap_last_cap: u32,
    /// berthd's own bounding set (`CapBnd` of /proc/self/status): "all capabilities" stops there.
    pub cap_bounding: u64,
    /// Size of a container's private /dev/shm tmpfs, in bytes.
    pub shm_size: u64,
}

impl Default for SpecDefaults {
    fn default() -> Self {
        SpecDefaults {
            pids_limit: None,
            privileged_allowed: true,
            cap_last_cap: LAST_KNOWN_CAP,
            cap_bounding: u64::MAX,
            shm_size: 64 << 20,
        }
    }
}

/// A device node on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The node's path as found (below the directory that was asked for, or the path itself).
    pub path: PathBuf,
    /// `c` or `b`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The facts of the host the translation needs; [`FsHost`] is the real one.
pub trait Host {
    /// The real path of a mount source, symlinks followed; `Ok(None)` when it does not exist.
    fn resolve(&self, path: &Path) -> io::Result<Option<PathBuf>>;
    /// The device nodes at `path`, symlinks followed: the node itself, or every node below a directory
    /// (skipping /dev/pts, /dev/shm, /dev/mqueue, /dev/fd, /dev/console like containerd).
    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>>;
    /// The seccomp section for `profile` and a process whose bounding capability set is `bounding`.
    fn seccomp(&self, profile: &SeccompProfile, bounding: u64) -> Result<LinuxSeccomp, String>;
}

/// One CreateContainer request with what berth knows about its pod and image.
#[derive(Clone, Copy, Debug)]
pub struct SpecInput<'a> {
    pub container_id: &'a str,
    pub config: &'a api::ContainerConfig,
    pub sandbox: &'a api::PodSandboxConfig,
    pub pod: &'a PodContext,
    pub image: ImageFacts<'a>,
    /// `/proc/<pid>/ns/pid` of the target container when the config asks for `NamespaceMode::TARGET`.
    pub target_pidns: Option<&'a Path>,
    /// Where anonymous volumes go: `<volumes_dir>/<n>` (the container's state directory is a good parent).
    pub volumes_dir: &'a Path,
}

/// The container's identity as ContainerStatus reports it (`ContainerStatus.user.linux`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerUser {
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
}

/// The spec and everything the caller must do or keep besides it.
#[derive(Clone, Debug)]
pub struct BuiltContainer {
    pub spec: Spec,
    /// `None`: SIGTERM.
    pub stop_signal: Option<i32>,
    /// `log_directory/log_path`, `None` when either is empty (logging disabled, as containerd does).
    pub log_path: Option<PathBuf>,
    /// CRI mount sources that do not exist: create them as directories (0755) before creating the container.
    pub host_dirs: Vec<PathBuf>,
    /// Empty directories to create for the image's volumes (already in the spec's mounts).
    pub anonymous_volumes: Vec<PathBuf>,
    /// Limits for the resources plugin (device rules included; `pids_limit` left to its default).
    pub resources: LinuxResources,
    /// The CRI mounts, for ContainerStatus.
    pub mounts: Vec<MountRecord>,
    pub user: ContainerUser,
}

/// A spec section with every optional field unset: oci-spec's `Default`s are runc's example config (a
/// hostname of "youki", RLIMIT_NOFILE, default capabilities…), which must not leak into berth's.
fn blank<T: serde::de::DeserializeOwned>(json: &str) -> CriResult<T> {
    serde_json::from_str(json).map_err(|e| CriError::Internal(format!("blank spec section: {e}")))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> CriResult<LinuxNamespace> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    b.build()
        .map_err(|e| CriError::Internal(format!("building namespace: {e}")))
}

/// The namespaces: a new mount namespace; net, ipc and uts joined from the pod (none where the pod shares
/// the host's); pid new for CONTAINER, the target's for TARGET, else the pod's (host, shared, or a new one);
/// a new cgroup namespace unless privileged.
fn namespaces(input: &SpecInput<'_>, privileged: bool) -> CriResult<Vec<LinuxNamespace>> {
    let pod = input.pod;
    let missing =
        |what: &str| CriError::FailedPrecondition(format!("pod sandbox {} has no pinned {what} namespace", pod.pod_id));
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if !pod.host_network {
        out.push(namespace(
            LinuxNamespaceType::Network,
            Some(pod.netns.as_deref().ok_or_else(|| missing("network"))?),
        )?);
        out.push(namespace(
            LinuxNamespaceType::Uts,
            Some(pod.utsns.as_deref().ok_or_else(|| missing("uts"))?),
        )?);
    }
    if !pod.host_ipc {
        out.push(namespace(
            LinuxNamespaceType::Ipc,
            Some(pod.ipcns.as_deref().ok_or_else(|| missing("ipc"))?),
        )?);
    }
    let requested = input
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| NamespaceMode::try_from(n.pid).ok());
    match requested {
        Some(NamespaceMode::Container) => out.push(namespace(LinuxNamespaceType::Pid, None)?),
        Some(NamespaceMode::Target) => {
            let path = input.target_pidns.ok_or_else(|| {
                CriError::FailedPrecondition(
                    "the target container of pid TARGET has no PID namespace (not running?)".into(),
                )
            })?;
            out.push(namespace(LinuxNamespaceType::Pid, Some(path))?);
        }
        // POD, NODE or nothing: whatever the pod has, as containerd joins the sandbox's PID namespace for
        // anything but CONTAINER. A container cannot widen its pod's choice (NODE in a non-host-PID pod), and
        // the proto default (0 = POD, which crictl sends when it sets other namespace options) in a pod without
        // a shared PID namespace means a namespace of its own.
        _ if pod.host_pid => {}
        _ => out.push(namespace(LinuxNamespaceType::Pid, pod.pidns.as_deref())?),
    }
    if !privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    Ok(out)
}

fn annotations(input: &SpecInput<'_>) -> HashMap<String, String> {
    let cfg = input.config;
    let meta = input.sandbox.metadata.clone().unwrap_or_default();
    let image = cfg.image.clone().unwrap_or_default();
    let image_name = if image.user_specified_image.is_empty() {
        image.image
    } else {
        image.user_specified_image
    };
    [
        (annotations::CONTAINER_TYPE, "container".to_string()),
        (
            annotations::CONTAINER_NAME,
            cfg.metadata.clone().unwrap_or_default().name,
        ),
        (annotations::IMAGE_NAME, image_name),
        (annotations::SANDBOX_ID, input.pod.pod_id.clone()),
        (annotations::SANDBOX_NAME, meta.name),
        (annotations::SANDBOX_NAMESPACE, meta.namespace),
        (annotations::SANDBOX_UID, meta.uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn log_path(sandbox: &api::PodSandboxConfig, cfg: &api::ContainerConfig) -> CriResult<Option<PathBuf>> {
    validate_log_path(&cfg.log_path)?;
    if sandbox.log_directory.is_empty() || cfg.log_path.is_empty() {
        return Ok(None);
    }
    Ok(Some(Path::new(&sandbox.log_directory).join(&cfg.log_path)))
}

/// The seccomp section, `None` for no filter.
fn seccomp(
    sc: &api::LinuxContainerSecurityContext,
    privileged: bool,
    bounding: u64,
    host: &dyn Host,
) -> CriResult<Option<LinuxSeccomp>> {
    #[allow(deprecated)]
    let choice = security::seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path, privileged)?;
    let Some(profile) = choice else { return Ok(None) };
    host.seccomp(&profile, bounding).map(Some).map_err(|e| match &profile {
        SeccompProfile::Localhost(path) => CriError::InvalidArgument(format!(
            "linux.security_context.seccomp: profile {}: {e}",
            path.display()
        )),
        SeccompProfile::RuntimeDefault => {
            CriError::Internal(format!("building the RuntimeDefault seccomp profile: {e}"))
        }
    })
}

fn process(
    input: &SpecInput<'_>,
    sc: &api::LinuxContainerSecurityContext,
    sets: caps::CapSets,
    user: &user::ResolvedUser,
) -> CriResult<Process> {
    let cfg = input.config;
    let img = input.image.config.config().clone().unwrap_or_default();
    let none: Vec<String> = Vec::new();
    let argv = process::argv(
        &cfg.command,
        &cfg.args,
        img.entrypoint().as_ref().unwrap_or(&none),
        img.cmd().as_ref().unwrap_or(&none),
    )?;
    let env = process::env(
        &input.pod.hostname,
        img.env().as_ref().unwrap_or(&none),
        &cfg.envs,
        user.home.as_deref(),
    );
    let cwd = process::cwd(&cfg.working_dir, img.working_dir().as_deref().unwrap_or(""));
    let oci_user = UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .additional_gids(user.additional_gids.clone())
        .build()
        .map_err(|e| CriError::Internal(format!("building user: {e}")))?;
    let mut p: Process = blank(r#"{"user":{"uid":0,"gid":0},"cwd":"/"}"#)?;
    p.set_terminal(Some(cfg.tty));
    p.set_user(oci_user);
    p.set_args(Some(argv));
    p.set_env(Some(env));
    p.set_cwd(PathBuf::from(cwd));
    p.set_capabilities(Some(sets.to_oci()?));
    p.set_no_new_privileges(Some(sc.no_new_privs));
    let resources = cfg.linux.as_ref().and_then(|l| l.resources.as_ref());
    // The isolation layer clamps to what the daemon may set (containerd's restrict_oom_score_adj).
    p.set_oom_score_adj(resources.map(|r| r.oom_score_adj as i32));
    Ok(p)
}

/// The CRI devices, plus /dev/console for a tty container that bind-mounts the host's /dev (containerd does
/// the same: the tmpfs /dev that would carry the console is gone).
fn with_console(cfg: &api::ContainerConfig) -> Vec<api::Device> {
    let mut devices = cfg.devices.clone();
    let host_dev = cfg
        .mounts
        .iter()
        .any(|m| mounts::clean(&m.container_path) == "/dev" && mounts::clean(&m.host_path) == "/dev");
    let has_console = devices
        .iter()
        .any(|d| d.container_path == "/dev/console" && !d.host_path.is_empty());
    if cfg.tty && host_dev && !has_console {
        devices.push(api::Device {
            container_path: "/dev/console".into(),
            host_path: "/dev/console".into(),
            permissions: "rwm".into(),
        });
    }
    devices
}

/// Builds the OCI spec of one container. Validates the container config first ([`validate_container_config`]).
pub fn build_container(input: &SpecInput<'_>, defaults: &SpecDefaults, host: &dyn Host) -> CriResult<BuiltContainer> {
    let cfg = input.config;
    validate_container_config(cfg)?;
    let sc = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let privileged = sc.privileged;
    if privileged {
        if !defaults.privileged_allowed {
            return Err(CriError::FailedPrecondition(
                "privileged containers are disabled in berth's config".into(),
            ));
        }
        let pod_privileged = input
            .sandbox
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if !pod_privileged {
            return Err(CriError::InvalidArgument(
                "linux.security_context.privileged: the pod sandbox is not privileged".into(),
            ));
        }
    }
    let img = input.image.config.config().clone().unwrap_or_default();
    let db = user::UserDb::new(input.image.passwd, input.image.group);
    let user = user::resolve(&sc, img.user().as_deref().unwrap_or(""), &db, "linux.security_context")?;
    let sets = caps::compute(
        sc.capabilities.as_ref(),
        privileged,
        defaults.cap_last_cap,
        defaults.cap_bounding,
    );
    #[allow(deprecated)]
    security::apparmor(
        sc.apparmor.as_ref(),
        &sc.apparmor_profile,
        "linux.security_context.apparmor",
    )?;
    let seccomp = seccomp(&sc, privileged, sets.bounding, host)?;
    let (masked, readonly) = security::paths(&sc.masked_paths, &sc.readonly_paths, privileged);

    let none: Vec<String> = Vec::new();
    let mount_plan = mounts::plan(
        &cfg.mounts,
        &mounts::MountContext {
            pod: input.pod,
            image_volumes: img.volumes().as_ref().unwrap_or(&none),
            volumes_dir: input.volumes_dir,
            privileged,
            readonly_rootfs: sc.readonly_rootfs,
            shm_size: defaults.shm_size,
        },
        host,
    )?;
    let device_plan = devices::plan(&with_console(cfg), privileged, host)?;
    let cri_resources = cfg.linux.as_ref().and_then(|l| l.resources.as_ref());
    let mut resources = crate::resources::from_cri(&cri_resources.cloned().unwrap_or_default(), "linux.resources")?;
    resources.devices = device_plan.rules.clone();

    let mut linux: oci_spec::runtime::Linux = blank("{}")?;
    linux.set_namespaces(Some(namespaces(input, privileged)?));
    linux.set_devices(Some(device_plan.devices));
    linux.set_resources(Some(limits::oci(
        cri_resources,
        defaults.pids_limit,
        device_plan.cgroup,
    )?));
    linux.set_seccomp(seccomp);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_rootfs_propagation(mount_plan.rootfs_propagation.clone());

    let mut spec: Spec = blank(&format!(r#"{{"ociVersion":"{OCI_VERSION}"}}"#))?;
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(sc.readonly_rootfs)
            .build()
            .map_err(|e| CriError::Internal(format!("building root: {e}")))?,
    ));
    spec.set_process(Some(process(input, &sc, sets, &user)?));
    spec.set_hostname((!input.pod.host_network).then(|| input.pod.hostname.clone()));
    spec.set_mounts(Some(mount_plan.mounts));
    spec.set_annotations(Some(annotations(input)));
    spec.set_linux(Some(linux));

    Ok(BuiltContainer {
        spec,
        stop_signal: process::stop_signal(cfg.stop_signal, img.stop_signal().as_deref())?,
        log_path: log_path(input.sandbox, cfg)?,
        host_dirs: mount_plan.host_dirs,
        anonymous_volumes: mount_plan.anonymous_volumes,
        resources,
        mounts: mount_plan.records,
        user: ContainerUser {
            uid: user.uid,
            gid: user.gid,
            supplemental_groups: user.additional_gids,
        },
    })
}

#[cfg(test)]
pub(crate) mod tests;
