//! CreateContainer: validate, resolve the image, read its users, build the OCI spec, create.

use std::path::PathBuf;

use berth_core::Lifecycle;
use berth_core::lifecycle::ContainerRequest;
use berth_core::model::{Image, PodSandbox};
use berth_images::ImageStore;
use oci_spec::runtime::LinuxSeccomp;
use prost::Message;

use crate::api::{CreateContainerRequest, CreateContainerResponse, NamespaceMode, PodSandboxConfig};
use crate::error::{CriError, CriResult};
use crate::spec::{self, FsHost, ImageFacts, PodContext, SeccompProfile, SpecDefaults, SpecInput};

/// Largest /etc/passwd or /etc/group read from an image.
const USER_DB_LIMIT: u64 = 4 << 20;

/// The seccomp sections come from the isolation plugin, which owns the profiles.
fn seccomp(profile: &SeccompProfile, bounding: u64) -> Result<LinuxSeccomp, String> {
    match profile {
        SeccompProfile::RuntimeDefault => Ok(berth_isolation::seccomp::runtime_default(bounding)),
        SeccompProfile::Localhost(path) => {
            berth_isolation::seccomp::localhost(path, bounding).map_err(|e| e.to_string())
        }
    }
}

fn pod_context(pod: &PodSandbox) -> PodContext {
    let r = &pod.runtime;
    let file = |name: &str| {
        let p = r.files_dir.join(name);
        p.exists().then_some(p)
    };
    PodContext {
        pod_id: pod.id.clone(),
        hostname: r.hostname.clone(),
        netns: r.namespaces.net.clone(),
        ipcns: r.namespaces.ipc.clone(),
        utsns: r.namespaces.uts.clone(),
        pidns: r.namespaces.pid.clone(),
        host_network: r.host_network,
        host_ipc: r.host_ipc,
        host_pid: r.host_pid,
        etc_hosts: file("hosts"),
        etc_hostname: file("hostname"),
        resolv_conf: file("resolv.conf"),
        shm: r.namespaces.shm.clone().filter(|p| p.exists()),
    }
}

/// /etc/passwd and /etc/group of the image, read through a throwaway read-only view of its layers.
async fn user_databases(lifecycle: &Lifecycle, image: &Image, key: &str) -> (Option<String>, Option<String>) {
    let Some(top) = image.chain_ids.last() else {
        return (None, None);
    };
    let snap = &lifecycle.plugins().snapshotter;
    let Ok(mounts) = snap.view(key, top).await else {
        return (None, None);
    };
    let read = |p: &str| {
        crate::rootfs_files::read(&mounts, p, USER_DB_LIMIT).map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let dbs = (read("/etc/passwd"), read("/etc/group"));
    berth_core::failpoint::hit("create_container.after_user_view").await;
    if let Err(e) = snap.remove(key).await {
        tracing::warn!(key, "cannot remove a user-database view: {e}");
    }
    dbs
}

/// The pod and the container name and attempt a CreateContainer reserves (kubelet's retry repeats them),
/// keying its detached run.
pub fn request_key(req: &CreateContainerRequest) -> String {
    let m = req.config.as_ref().and_then(|c| c.metadata.clone()).unwrap_or_default();
    format!("container/{}/{}/{}", req.pod_sandbox_id, m.name, m.attempt)
}

pub async fn handle(
    lifecycle: &Lifecycle,
    images: &ImageStore,
    req: CreateContainerRequest,
) -> CriResult<CreateContainerResponse> {
    let config = req
        .config
        .ok_or_else(|| CriError::InvalidArgument("config is required".into()))?;
    spec::validate_container_config(&config)?;
    let pod = lifecycle.find_pod(&req.pod_sandbox_id)?;
    // The pod's own config as berth recorded it (kubelet sends the same one along).
    let sandbox =
        PodSandboxConfig::decode(pod.config.as_slice()).unwrap_or_else(|_| req.sandbox_config.unwrap_or_default());

    let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let image = images
        .status(&image_name)?
        .ok_or_else(|| CriError::NotFound(format!("image {image_name:?} is not present: pull it first")))?;
    images.ensure_unpacked(&image).await?;
    let image_config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&image.config)
        .map_err(|e| CriError::Internal(format!("image {} has an unreadable config: {e}", image.id)))?;

    let id = berth_core::model::new_id();
    let (passwd, group) = user_databases(lifecycle, &image, &format!("users-{id}")).await;
    let target_pidns = target_pid_namespace(lifecycle, &config)?;
    let volumes_dir = lifecycle.config().root.join("volumes").join(&id);
    let pod_ctx = pod_context(&pod);
    let input = SpecInput {
        container_id: &id,
        config: &config,
        sandbox: &sandbox,
        pod: &pod_ctx,
        image: ImageFacts {
            config: &image_config,
            passwd: passwd.as_deref(),
            group: group.as_deref(),
        },
        target_pidns: target_pidns.as_deref(),
        volumes_dir: &volumes_dir,
    };
    let defaults = SpecDefaults {
        pids_limit: (lifecycle.config().cgroups.pids_limit > 0).then_some(lifecycle.config().cgroups.pids_limit),
        cap_last_cap: cap_last_cap(),
        cap_bounding: cap_bounding(),
        ..SpecDefaults::default()
    };
    let built = spec::build_container(&input, &defaults, &FsHost { seccomp })?;

    for dir in built.host_dirs.iter().chain(&built.anonymous_volumes) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CriError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    if let Some(parent) = built.log_path.as_ref().and_then(|p| p.parent()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| CriError::Internal(format!("cannot create the log directory {}: {e}", parent.display())))?;
    }
    let meta = config.metadata.clone().unwrap_or_default();
    let c = lifecycle
        .create_container(ContainerRequest {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: meta.name,
            attempt: meta.attempt,
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            config: config.encode_to_vec(),
            image_ref: image_name,
            image_id: image.id.clone(),
            parent_chain: image.chain_ids.last().cloned(),
            spec: built.spec,
            log_path: built.log_path,
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            resources: built.resources,
            stop_signal: built.stop_signal.unwrap_or(0),
            mounts: built.mounts,
        })
        .await?;
    Ok(CreateContainerResponse { container_id: c.id })
}

/// `/proc/<pid>/ns/pid` of the container named by `NamespaceMode::TARGET`.
fn target_pid_namespace(lifecycle: &Lifecycle, config: &crate::api::ContainerConfig) -> CriResult<Option<PathBuf>> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns.filter(|n| n.pid == NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let target = lifecycle.find_container(&ns.target_id)?;
    if target.runtime.pid == 0 {
        return Err(CriError::FailedPrecondition(format!(
            "target container {} is not running",
            target.id
        )));
    }
    Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.runtime.pid))))
}

/// This daemon's bounding set (all bits when it cannot be read).
fn cap_bounding() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX)
}

fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(spec::LAST_KNOWN_CAP)
}
