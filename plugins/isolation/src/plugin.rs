//! The `linux` isolation plugin: the [`Isolation`] trait over per-pod shims.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_core::plugin::isolation::{
    ContainerSpec, ContainerState, ExecOutput, ExecSpec, ExitStatus, Isolation, PodIsolation, PodNamespaces, ProcessIo,
    ProcessState, Rootfs,
};
use berth_core::plugin::{PluginError, PluginResult};
use berth_core::registry::{InitContext, RegistryError};

use crate::client::{self, ClientError};
use crate::protocol::{ErrorKind, FdLayout, Reply, Request};
use crate::shim::pod_dir;

/// How long an ordinary request may take (create includes mounting the rootfs).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LinuxIsolation {
    state: PathBuf,
    shim_path: PathBuf,
    restrict_oom: bool,
    /// One sealed copy of the shim binary every shim is started from.
    sealed_shim: Mutex<Option<Arc<OwnedFd>>>,
    /// container id → pod id.
    pods: Mutex<HashMap<String, String>>,
}

/// Registers the plugin as isolation `linux`.
pub fn register(registry: &mut berth_core::Registry) -> Result<(), RegistryError> {
    registry.register_isolation("linux", |ctx: &InitContext| {
        Ok(Arc::new(LinuxIsolation::from_context(ctx)?) as Arc<dyn Isolation>)
    })
}

fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

fn internal(e: impl std::fmt::Display) -> PluginError {
    PluginError::Internal(e.to_string())
}

fn from_client(e: ClientError) -> PluginError {
    if e.is_gone() {
        PluginError::FailedPrecondition(format!("pod shim is not running: {e}"))
    } else {
        internal(e)
    }
}

fn from_reply_error(kind: ErrorKind, message: String) -> PluginError {
    match kind {
        ErrorKind::NotFound => PluginError::NotFound(message),
        ErrorKind::InvalidArgument => PluginError::InvalidArgument(message),
        ErrorKind::FailedPrecondition => PluginError::FailedPrecondition(message),
        ErrorKind::Internal => PluginError::Internal(message),
    }
}

fn unexpected(reply: Reply) -> PluginError {
    match reply {
        Reply::Error { kind, message } => from_reply_error(kind, message),
        other => PluginError::Internal(format!("unexpected shim reply {other:?}")),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> PluginResult<T> + Send + 'static) -> PluginResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

fn split_fds(layout: FdLayout, fds: Vec<OwnedFd>, session: String) -> ProcessIo {
    let mut it = fds.into_iter();
    let mut io = ProcessIo {
        session,
        ..Default::default()
    };
    if layout.stdin {
        io.stdin = it.next();
    }
    if layout.stdout {
        io.stdout = it.next();
    }
    if layout.stderr {
        io.stderr = it.next();
    }
    io
}

impl LinuxIsolation {
    pub fn new(state: PathBuf, shim_path: PathBuf, restrict_oom: bool) -> LinuxIsolation {
        LinuxIsolation {
            state,
            shim_path,
            restrict_oom,
            sealed_shim: Mutex::new(None),
            pods: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_context(ctx: &InitContext) -> PluginResult<LinuxIsolation> {
        let cfg = &ctx.config.isolation;
        let shim_path = if cfg.shim_path.as_os_str().is_empty() {
            let exe = std::env::current_exe().map_err(|e| PluginError::io("finding berthd's executable", e))?;
            exe.with_file_name("berth-shim")
        } else {
            cfg.shim_path.clone()
        };
        let restrict_oom = match cfg.restrict_oom_score_adj.as_str() {
            "always" => true,
            "never" => false,
            _ => !has_cap_sys_resource(),
        };
        if restrict_oom {
            tracing::info!("CAP_SYS_RESOURCE is missing: oom_score_adj below the shim's own value will be clamped");
        }
        Ok(LinuxIsolation::new(ctx.config.state.clone(), shim_path, restrict_oom))
    }

    fn socket(&self, pod_id: &str) -> PathBuf {
        pod_dir(&self.state, pod_id).join("shim.sock")
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        crate::shim::container_dir(&self.state, id)
    }

    /// The pod a container belongs to: remembered from create/recover, else read from its state file.
    fn pod_of(&self, id: &str) -> PluginResult<String> {
        if let Some(p) = self.pods.lock().map_err(internal)?.get(id) {
            return Ok(p.clone());
        }
        let path = self.container_dir(id).join("state.json");
        let text = std::fs::read(&path).map_err(|_| PluginError::NotFound(format!("container {id} not found")))?;
        let state: ContainerState = serde_json::from_slice(&text).map_err(internal)?;
        self.pods
            .lock()
            .map_err(internal)?
            .insert(id.to_string(), state.pod_id.clone());
        Ok(state.pod_id)
    }

    async fn call_pod(&self, pod_id: &str, request: Request, timeout: Duration) -> PluginResult<(Reply, Vec<OwnedFd>)> {
        let socket = self.socket(pod_id);
        blocking(move || client::call(&socket, &request, timeout).map_err(from_client)).await
    }

    async fn call(&self, id: &str, request: Request, timeout: Duration) -> PluginResult<Reply> {
        let pod = self.pod_of(id)?;
        let (reply, _) = self.call_pod(&pod, request, timeout).await?;
        Ok(reply)
    }

    async fn call_ok(&self, id: &str, request: Request) -> PluginResult<()> {
        match self.call(id, request, CALL_TIMEOUT).await? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn sealed_shim(&self) -> PluginResult<Arc<OwnedFd>> {
        let mut guard = self.sealed_shim.lock().map_err(internal)?;
        if let Some(fd) = guard.as_ref() {
            return Ok(fd.clone());
        }
        let fd = crate::sealed_exe::sealed_copy(&self.shim_path)
            .map_err(|e| PluginError::io(format!("copying shim {}", self.shim_path.display()), e))?;
        let fd = Arc::new(fd);
        *guard = Some(fd.clone());
        Ok(fd)
    }

    /// Starts the pod's shim unless one answers on its socket already. Returns the shim's pid.
    pub async fn ensure_shim(&self, pod_id: &str) -> PluginResult<u32> {
        let socket = self.socket(pod_id);
        match blocking(move || Ok(client::call(&socket, &Request::Info, Duration::from_secs(5)))).await? {
            Ok((Reply::Info { pid, .. }, _)) => return Ok(pid),
            Ok((other, _)) => return Err(unexpected(other)),
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(internal(e)),
        }
        let exe = self.sealed_shim()?;
        let (state, pod, restrict) = (self.state.clone(), pod_id.to_string(), self.restrict_oom);
        blocking(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new(format!("/proc/self/fd/{}", exe.as_fd().as_raw_fd()));
            cmd.arg0("berth-shim")
                .arg("--pod-id")
                .arg(&pod)
                .arg("--state")
                .arg(&state);
            if restrict {
                cmd.arg("--restrict-oom");
            }
            let out = cmd
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| PluginError::io("starting berth-shim", e))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(PluginError::Internal(format!(
                    "berth-shim for pod {pod} failed to start ({}); see {}",
                    out.status,
                    pod_dir(&state, &pod).join("shim.log").display()
                )));
            }
            let pid = text.trim().parse().map_err(internal)?;
            tracing::info!(pod_id = %pod, pid, "started berth-shim");
            Ok(pid)
        })
        .await
    }

    /// The shim's pid and VmRSS in kB (for status and benchmarks).
    pub async fn shim_info(&self, pod_id: &str) -> PluginResult<(u32, u64)> {
        match self.call_pod(pod_id, Request::Info, CALL_TIMEOUT).await?.0 {
            Reply::Info { pid, vm_rss_kb, .. } => Ok((pid, vm_rss_kb)),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a container's directory when no shim serves it. Only files and empty directories: the rootfs
    /// mount point never held a mount in the host's namespace.
    fn remove_leftovers(&self, id: &str) {
        let dir = self.container_dir(id);
        for f in ["state.json", "exit.json", "state.tmp", "exit.tmp"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir(dir.join("rootfs"));
        let _ = std::fs::remove_dir(&dir);
    }

    /// Reads the state a dead shim left behind for `id`.
    fn state_from_files(&self, id: &str) -> Option<ContainerState> {
        let dir = self.container_dir(id);
        let mut state: ContainerState = serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()?;
        let exit: Option<ExitStatus> = std::fs::read(dir.join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let started_at = match &state.state {
            ProcessState::Running { started_at, .. } | ProcessState::Exited { started_at, .. } => *started_at,
            ProcessState::Created => 0,
        };
        // The shim died without recording an exit: the container is gone with it (its init was a child of the
        // shim's subreaper chain), report an unknown exit.
        let exit = exit.unwrap_or(ExitStatus {
            code: 255,
            signal: None,
            finished_at: crate::cri_log::now_nanos(),
        });
        state.state = ProcessState::Exited { started_at, exit };
        Some(state)
    }
}

fn reply_exit(reply: Reply) -> PluginResult<Option<ExitStatus>> {
    match reply {
        Reply::Exit(e) => Ok(e),
        other => Err(unexpected(other)),
    }
}

/// Reads both pipes until EOF, the deadline, or `max` bytes each (the rest is read and dropped).
fn collect_output(
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    deadline: Option<Instant>,
    max: usize,
) -> (Vec<u8>, Vec<u8>, bool) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut open: Vec<(usize, OwnedFd)> = [stdout, stderr]
        .into_iter()
        .enumerate()
        .filter_map(|(i, f)| f.map(|f| (i, f)))
        .collect();
    let mut out = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 32 * 1024];
    while !open.is_empty() {
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (std::mem::take(&mut out[0]), std::mem::take(&mut out[1]), true);
                }
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        let mut closed = Vec::new();
        for (k, is_ready) in ready.into_iter().enumerate() {
            if !is_ready {
                continue;
            }
            let (slot, fd) = &open[k];
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) | Err(_) => closed.push(k),
                Ok(n) => {
                    let room = max.saturating_sub(out[*slot].len());
                    out[*slot].extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        for k in closed.into_iter().rev() {
            open.remove(k);
        }
    }
    (std::mem::take(&mut out[0]), std::mem::take(&mut out[1]), false)
}

#[async_trait]
impl Isolation for LinuxIsolation {
    async fn pin_namespaces(&self, pod: &PodIsolation) -> PluginResult<PodNamespaces> {
        let (state, p) = (self.state.clone(), pod.clone());
        let ([net, ipc, uts], shm) = blocking(move || crate::pins::pin(&state, &p).map_err(internal)).await?;
        let mut ns = PodNamespaces {
            net,
            ipc,
            uts,
            pid: None,
            infra_pid: None,
            shm,
        };
        if let Err(e) = self.ensure_shim(&pod.pod_id).await {
            crate::pins::unpin(&self.state, &pod.pod_id);
            return Err(e);
        }
        if pod.shared_pid {
            match self.call_pod(&pod.pod_id, Request::StartInfra, CALL_TIMEOUT).await?.0 {
                Reply::Pid(pid) => {
                    for procs in &pod.cgroup_procs {
                        std::fs::write(procs, pid.to_string())
                            .map_err(|e| PluginError::io(format!("writing {}", procs.display()), e))?;
                    }
                    ns.pid = Some(PathBuf::from(format!("/proc/{pid}/ns/pid")));
                    ns.infra_pid = Some(pid);
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(ns)
    }

    async fn unpin_namespaces(&self, pod_id: &str) -> PluginResult<()> {
        let (state, pod) = (self.state.clone(), pod_id.to_string());
        blocking(move || {
            crate::pins::unpin(&state, &pod);
            Ok(())
        })
        .await
    }

    async fn create(&self, container: &ContainerSpec) -> PluginResult<()> {
        let id = &container.id;
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(PluginError::InvalidArgument(format!("bad container id {id:?}")));
        }
        let dir = self.container_dir(id);
        let rootfs_dir = match &container.rootfs {
            Rootfs::Path(p) => p.clone(),
            Rootfs::Mounts(_) => dir.join("rootfs"),
        };
        let mut plan = crate::lower::lower(&container.spec, &container.rootfs, &rootfs_dir, &container.cgroup_procs)
            .map_err(|e| PluginError::InvalidArgument(e.to_string()))?;
        plan.process.terminal |= container.tty;
        std::fs::create_dir_all(&dir).map_err(|e| PluginError::io(format!("creating {}", dir.display()), e))?;
        if matches!(container.rootfs, Rootfs::Mounts(_)) {
            std::fs::create_dir_all(&rootfs_dir)
                .map_err(|e| PluginError::io(format!("creating {}", rootfs_dir.display()), e))?;
        }
        self.ensure_shim(&container.pod_id).await?;
        berth_core::failpoint::hit("isolation.create.before_shim").await;
        self.pods
            .lock()
            .map_err(internal)?
            .insert(id.clone(), container.pod_id.clone());
        let request = Request::Create {
            id: id.clone(),
            plan: Box::new(plan),
            log_path: container.log_path.clone(),
            stdin: container.stdin,
            stdin_once: container.stdin_once,
        };
        let result = match self.call_pod(&container.pod_id, request, CALL_TIMEOUT).await {
            Ok((Reply::Ok, _)) => Ok(()),
            Ok((other, _)) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Only empty directories: a shim that answered late may hold the container and its state.
            self.pods.lock().map_err(internal)?.remove(id);
            let _ = std::fs::remove_dir(dir.join("rootfs"));
            let _ = std::fs::remove_dir(&dir);
        }
        result
    }

    async fn start(&self, id: &str) -> PluginResult<u32> {
        match self.call(id, Request::Start { id: id.into() }, CALL_TIMEOUT).await? {
            Reply::Pid(pid) => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    async fn kill(&self, id: &str, signal: i32) -> PluginResult<()> {
        self.call_ok(id, Request::Kill { id: id.into(), signal }).await
    }

    async fn wait(&self, id: &str, timeout: Duration) -> PluginResult<Option<ExitStatus>> {
        let request = Request::Wait {
            id: id.into(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.call(id, request, timeout + CALL_TIMEOUT).await {
            Ok(reply) => reply_exit(reply),
            Err(PluginError::FailedPrecondition(_)) => match self.state_from_files(id) {
                Some(ContainerState {
                    state: ProcessState::Exited { exit, .. },
                    ..
                }) => Ok(Some(exit)),
                _ => Err(PluginError::NotFound(format!("container {id} not found"))),
            },
            Err(e) => Err(e),
        }
    }

    async fn state(&self, id: &str) -> PluginResult<ContainerState> {
        match self.call(id, Request::State { id: id.into() }, CALL_TIMEOUT).await {
            Ok(Reply::State(s)) => Ok(s),
            Ok(other) => Err(unexpected(other)),
            Err(PluginError::FailedPrecondition(_)) => self
                .state_from_files(id)
                .ok_or_else(|| PluginError::NotFound(format!("container {id} not found"))),
            Err(e) => Err(e),
        }
    }

    async fn exec_sync(
        &self,
        id: &str,
        exec: &ExecSpec,
        timeout: Option<Duration>,
        max_output: usize,
    ) -> PluginResult<ExecOutput> {
        let spec = ExecSpec {
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
            ..exec.clone()
        };
        let io = self.exec(id, &spec).await?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let (stdout, stderr, timed_out) =
            blocking(move || Ok(collect_output(io.stdout, io.stderr, deadline, max_output))).await?;
        let session = io.session;
        // The output can end long before the process does (it closed or handed off its stdout and stderr):
        // the deadline holds for the exit too.
        let mut timed_out = timed_out;
        if !timed_out && let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let request = Request::WaitExec {
                id: id.into(),
                session: session.clone(),
                timeout_ms: left.as_millis().try_into().unwrap_or(u64::MAX),
            };
            if let Some(exit) = reply_exit(self.call(id, request, left + CALL_TIMEOUT).await?)? {
                return Ok(ExecOutput {
                    exit_code: exit.code,
                    stdout,
                    stderr,
                    timed_out: false,
                });
            }
            timed_out = true;
        }
        if timed_out {
            self.kill_exec(id, &session, libc::SIGKILL).await?;
        }
        let exit = self.wait_exec(id, &session).await?;
        Ok(ExecOutput {
            exit_code: exit.code,
            stdout,
            stderr,
            timed_out,
        })
    }

    async fn exec(&self, id: &str, exec: &ExecSpec) -> PluginResult<ProcessIo> {
        let request = Request::Exec {
            id: id.into(),
            args: exec.args.clone(),
            tty: exec.tty,
            stdin: exec.stdin,
            stdout: exec.stdout,
            stderr: exec.stderr,
        };
        let pod = self.pod_of(id)?;
        match self.call_pod(&pod, request, CALL_TIMEOUT).await? {
            (
                Reply::Exec {
                    session, fds: layout, ..
                },
                fds,
            ) => Ok(split_fds(layout, fds, session)),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn wait_exec(&self, id: &str, session: &str) -> PluginResult<ExitStatus> {
        loop {
            let request = Request::WaitExec {
                id: id.into(),
                session: session.into(),
                timeout_ms: 3_600_000,
            };
            if let Some(exit) = reply_exit(self.call(id, request, Duration::from_secs(3_700)).await?)? {
                return Ok(exit);
            }
        }
    }

    async fn kill_exec(&self, id: &str, session: &str, signal: i32) -> PluginResult<()> {
        let request = Request::KillExec {
            id: id.into(),
            session: session.into(),
            signal,
        };
        self.call_ok(id, request).await
    }

    async fn attach(&self, id: &str, stdin: bool, stdout: bool, stderr: bool) -> PluginResult<ProcessIo> {
        let pod = self.pod_of(id)?;
        let request = Request::Attach {
            id: id.into(),
            stdin,
            stdout,
            stderr,
        };
        match self.call_pod(&pod, request, CALL_TIMEOUT).await? {
            (Reply::Attach { fds: layout }, fds) => Ok(split_fds(layout, fds, String::new())),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn resize(&self, id: &str, session: &str, width: u16, height: u16) -> PluginResult<()> {
        let request = Request::Resize {
            id: id.into(),
            session: session.into(),
            width,
            height,
        };
        self.call_ok(id, request).await
    }

    async fn reopen_log(&self, id: &str) -> PluginResult<()> {
        self.call_ok(id, Request::ReopenLog { id: id.into() }).await
    }

    async fn delete(&self, id: &str) -> PluginResult<()> {
        let pod = match self.pod_of(id) {
            Ok(p) => p,
            Err(PluginError::NotFound(_)) => {
                // No shim ever recorded it: a create killed before its request reached the shim leaves the
                // directory it made for it.
                self.remove_leftovers(id);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match self
            .call_pod(&pod, Request::Delete { id: id.into() }, CALL_TIMEOUT)
            .await
        {
            Ok((Reply::Ok, _)) => {}
            Ok((other, _)) => return Err(unexpected(other)),
            // The shim is gone: clean what it left.
            Err(PluginError::FailedPrecondition(_)) => self.remove_leftovers(id),
            Err(e) => return Err(e),
        }
        self.pods.lock().map_err(internal)?.remove(id);
        Ok(())
    }

    async fn remove_pod(&self, pod_id: &str) -> PluginResult<()> {
        let dir = pod_dir(&self.state, pod_id);
        let pid: Option<i32> = std::fs::read_to_string(dir.join("shim.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        match self.call_pod(pod_id, Request::Shutdown, CALL_TIMEOUT).await {
            Ok(_) | Err(PluginError::FailedPrecondition(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some(pid) = pid {
            // Wait (briefly) for the shim to be gone, so "no shim left" holds when this returns.
            blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    if stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })
            .await?;
        }
        for f in ["shim.sock", "shim.pid", "shim.log"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir(&dir);
        self.pods.lock().map_err(internal)?.retain(|_, p| p != pod_id);
        Ok(())
    }

    async fn recover(&self) -> PluginResult<Vec<ContainerState>> {
        let mut found = Vec::new();
        let pods_dir = self.state.join("pods");
        let pods: Vec<String> = std::fs::read_dir(&pods_dir)
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        for pod in pods {
            match self.call_pod(&pod, Request::List, CALL_TIMEOUT).await {
                Ok((Reply::States(states), _)) => {
                    tracing::info!(pod_id = %pod, containers = states.len(), "reconnected to berth-shim");
                    found.extend(states);
                }
                Ok((other, _)) => return Err(unexpected(other)),
                Err(e) => tracing::warn!(pod_id = %pod, error = %e, "pod shim is gone"),
            }
        }
        {
            let mut map = self.pods.lock().map_err(internal)?;
            for s in &found {
                map.insert(s.id.clone(), s.pod_id.clone());
            }
        }
        // Containers whose shim died: report what their files say.
        let ids: Vec<String> = std::fs::read_dir(self.state.join("containers"))
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        for id in ids {
            if found.iter().any(|s| s.id == id) {
                continue;
            }
            if let Some(state) = self.state_from_files(&id) {
                self.pods
                    .lock()
                    .map_err(internal)?
                    .insert(id.clone(), state.pod_id.clone());
                found.push(state);
            }
        }
        Ok(found)
    }
}
