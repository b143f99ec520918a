//! Isolation: runs containers from OCI runtime specs, one small monitor (shim) per pod.
//!
//! Vocabulary:
//! - the **pod namespaces** (net, ipc, uts, and pid when the pod shares one) are created and pinned once per
//!   pod by [`Isolation::pin_namespaces`]; containers join them by path through their OCI spec;
//! - a **container** is created (process set up, stopped before exec), then started, then exits; its exit
//!   status is recorded by the shim so it survives a daemon restart;
//! - an **exec** is an extra process inside a running container, started by the pod's shim.
//!
//! Times are Unix nanoseconds. Exit codes follow the shell: 128 + signal for a process killed by a signal.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::snapshot::Mount;
use super::{PluginResult, Readiness};

/// What the pod asks of its shared namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIsolation {
    pub pod_id: String,
    pub hostname: String,
    /// Share the host's network namespace (no net namespace is created).
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_uts: bool,
    /// The pod's containers share one PID namespace, whose PID 1 is berth's tiny infra init.
    pub shared_pid: bool,
    /// Namespaced sysctls applied to the pod's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// Cgroup the infra process (if any) is placed in: the `cgroup.procs` files to write its pid into.
    pub cgroup_procs: Vec<PathBuf>,
}

/// Paths of the pinned namespace files of one pod; `None` where the pod uses the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// `/proc/<infra pid>/ns/pid` of the infra process when the pod shares a PID namespace.
    pub pid: Option<PathBuf>,
    pub infra_pid: Option<u32>,
    /// The pod's /dev/shm directory (a tmpfs every container binds), when the pod has its own IPC namespace.
    #[serde(default)]
    pub shm: Option<PathBuf>,
}

/// How to get the container's root filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rootfs {
    /// A directory that already holds the root filesystem (`root.path` of the spec is ignored).
    Path(PathBuf),
    /// Snapshot mounts, mounted inside the container's own mount namespace (never in the host's).
    Mounts(Vec<Mount>),
}

/// Everything needed to create one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    pub pod_id: String,
    pub spec: oci_spec::runtime::Spec,
    pub rootfs: Rootfs,
    /// CRI log file; `None` discards output.
    pub log_path: Option<PathBuf>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// `cgroup.procs` files the process is placed into before exec.
    pub cgroup_procs: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// 0–255; 128 + signal when killed by a signal.
    pub code: i32,
    pub signal: Option<i32>,
    pub finished_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessState {
    Created,
    Running { pid: u32, started_at: i64 },
    Exited { started_at: i64, exit: ExitStatus },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub pod_id: String,
    pub state: ProcessState,
}

/// An extra process in a running container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Output of an [`Isolation::exec_sync`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// The host ends of a streaming exec's or attach's stdio. With a tty, `stdout` is the pty master (also
/// written for stdin) and `stderr` is `None`.
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub session: String,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[async_trait]
pub trait Isolation: Send + Sync + 'static {
    async fn readiness(&self) -> Readiness {
        Readiness::ready()
    }

    /// Creates and pins the pod's shared namespaces; starts the pod's shim.
    async fn pin_namespaces(&self, pod: &PodIsolation) -> PluginResult<PodNamespaces>;

    /// Removes the pins (and infra process); idempotent.
    async fn unpin_namespaces(&self, pod_id: &str) -> PluginResult<()>;

    /// Sets the container's process up, stopped before exec.
    async fn create(&self, container: &ContainerSpec) -> PluginResult<()>;

    /// Lets the created process exec; returns its pid.
    async fn start(&self, id: &str) -> PluginResult<u32>;

    async fn kill(&self, id: &str, signal: i32) -> PluginResult<()>;

    /// Waits for the main process to exit, at most `timeout`; `None` when it is still running then.
    async fn wait(&self, id: &str, timeout: Duration) -> PluginResult<Option<ExitStatus>>;

    async fn state(&self, id: &str) -> PluginResult<ContainerState>;

    /// Runs a process in the container and collects its output, killing it at the timeout.
    async fn exec_sync(
        &self,
        id: &str,
        exec: &ExecSpec,
        timeout: Option<Duration>,
        max_output: usize,
    ) -> PluginResult<ExecOutput>;

    /// Starts a streaming exec; the exit status comes from [`Isolation::wait_exec`].
    async fn exec(&self, id: &str, exec: &ExecSpec) -> PluginResult<ProcessIo>;

    async fn wait_exec(&self, id: &str, session: &str) -> PluginResult<ExitStatus>;

    /// Signals a streaming exec's process (its client went away, say); a no-op once it has exited.
    async fn kill_exec(&self, id: &str, session: &str, signal: i32) -> PluginResult<()>;

    /// Joins the main process's stdio.
    async fn attach(&self, id: &str, stdin: bool, stdout: bool, stderr: bool) -> PluginResult<ProcessIo>;

    /// Resizes the tty of the main process (`session` empty) or of an exec.
    async fn resize(&self, id: &str, session: &str, width: u16, height: u16) -> PluginResult<()>;

    async fn reopen_log(&self, id: &str) -> PluginResult<()>;

    /// Forgets a stopped container: its state, its monitor slot. Idempotent.
    async fn delete(&self, id: &str) -> PluginResult<()>;

    /// Stops the pod's shim once its last container is gone. Idempotent.
    async fn remove_pod(&self, pod_id: &str) -> PluginResult<()>;

    /// At daemon start: finds the live shims again and reports every container they know.
    async fn recover(&self) -> PluginResult<Vec<ContainerState>>;
}
