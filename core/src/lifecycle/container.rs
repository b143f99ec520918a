//! Containers: create, start, stop, remove, exec, and the watcher that records each exit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{Intent, Lifecycle, LifecycleError, LifecycleResult, intent_key, undo_failed};
use crate::events::EventKind;
use crate::failpoint;
use crate::model::{ChainId, Container, ContainerRuntime, ContainerState, MountRecord, PodState, new_id, now_nanos};
use crate::plugin::PluginError;
use crate::plugin::isolation::{ContainerSpec, ExecOutput, ExecSpec, ExitStatus, ProcessState, Rootfs};
use crate::plugin::resources::{CgroupPath, LinuxResources};
use crate::store::Table;

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
/// How long a SIGKILLed process may take to be reaped before StopContainer gives up.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// A validated CreateContainer, with the OCI spec already built by the CRI layer.
#[derive(Clone, Debug)]
pub struct ContainerRequest {
    /// The id to use (the CRI layer picks it to name per-container paths); empty: a new random id.
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub config: Vec<u8>,
    /// The image as the caller named it, and its id.
    pub image_ref: String,
    pub image_id: String,
    /// The top layer of the image: the rootfs snapshot's parent.
    pub parent_chain: Option<ChainId>,
    pub spec: oci_spec::runtime::Spec,
    pub log_path: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub resources: LinuxResources,
    /// 0 means SIGTERM.
    pub stop_signal: i32,
    pub mounts: Vec<MountRecord>,
}

/// Why a container exited, as ContainerStatus reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    Completed,
    Error,
    OomKilled,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
        }
    }
}

impl Lifecycle {
    pub fn get_container(&self, id: &str) -> LifecycleResult<Container> {
        self.store()
            .get::<Container>(Table::Containers, id)?
            .ok_or_else(|| LifecycleError::NotFound(format!("container {id} not found")))
    }

    /// Finds a container by full id or unique id prefix.
    pub fn find_container(&self, id_or_prefix: &str) -> LifecycleResult<Container> {
        if id_or_prefix.is_empty() {
            return Err(LifecycleError::InvalidArgument("container id must not be empty".into()));
        }
        if let Some(c) = self.store().get::<Container>(Table::Containers, id_or_prefix)? {
            return Ok(c);
        }
        let mut hits: Vec<Container> = self
            .list_containers()?
            .into_iter()
            .filter(|c| c.id.starts_with(id_or_prefix))
            .collect();
        match hits.len() {
            1 => Ok(hits.remove(0)),
            0 => Err(LifecycleError::NotFound(format!("container {id_or_prefix} not found"))),
            _ => Err(LifecycleError::InvalidArgument(format!(
                "container id prefix {id_or_prefix} is ambiguous"
            ))),
        }
    }

    pub fn list_containers(&self) -> LifecycleResult<Vec<Container>> {
        Ok(self
            .store()
            .list::<Container>(Table::Containers)?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    fn container_cgroup_path(pod_cgroup: &CgroupPath, id: &str) -> CgroupPath {
        CgroupPath(format!("{}/{}", pod_cgroup.as_str().trim_end_matches('/'), id))
    }

    /// CreateContainer: reserve the name, then rootfs snapshot → cgroup → process set up in the pod's shim.
    pub async fn create_container(&self, req: ContainerRequest) -> LifecycleResult<Container> {
        let pod = self.get_pod(&req.pod_id)?;
        if pod.state != PodState::Ready {
            return Err(LifecycleError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let id = if req.id.is_empty() { new_id() } else { req.id.clone() };
        let name = pod.metadata.container_reserved_name(&req.name, req.attempt);
        let mut c = Container {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: req.name.clone(),
            attempt: req.attempt,
            state: ContainerState::Created,
            image_ref: req.image_ref.clone(),
            image_id: req.image_id.clone(),
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            log_path: req
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            config: req.config.clone(),
            runtime: ContainerRuntime {
                cgroup: None,
                snapshot: Some(id.clone()),
                stop_signal: if req.stop_signal > 0 { req.stop_signal } else { SIGTERM },
                tty: req.tty,
                stdin: req.stdin,
                stdin_once: req.stdin_once,
                resources: req.resources.clone(),
                mounts: req.mounts.clone(),
                pid: 0,
            },
        };
        {
            let (c, reserved, id) = (c.clone(), name.clone(), id.clone());
            self.write(move |tx| {
                if let Err(holder) = tx.insert_new(Table::Names, &reserved, &id)? {
                    return Ok(Err(holder));
                }
                tx.put(Table::Containers, &id, &c)?;
                tx.put(Table::Intents, &intent_key("container", &id), &Intent::CreateContainer)?;
                Ok(Ok(()))
            })
            .await?
            .map_err(|holder: String| {
                LifecycleError::AlreadyExists(format!("container name {name:?} is reserved by {holder}"))
            })?;
        }
        failpoint::hit("create_container.after_intent").await;
        let _guard = self.inner.locks.lock(&id).await;
        match self.create_container_steps(&req, &pod.runtime.cgroup, &mut c).await {
            Ok(()) => {
                failpoint::hit("create_container.after_create").await;
                let (rec, key) = (c.clone(), intent_key("container", &id));
                self.write(move |tx| {
                    tx.put(Table::Containers, &rec.id, &rec)?;
                    tx.delete(Table::Intents, &key).map(drop)
                })
                .await?;
                self.publish(EventKind::ContainerCreated, &id, &pod.id);
                tracing::info!(container = %id, pod = %pod.id, name = %req.name, "container created");
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(container = %id, "CreateContainer failed, rolling back: {e}");
                if self.cleanup_container(&c, pod.runtime.cgroup.as_ref()).await {
                    self.forget_container(&c).await?;
                } else {
                    self.finish("container", &id).await?;
                }
                Err(e)
            }
        }
    }

    async fn create_container_steps(
        &self,
        req: &ContainerRequest,
        pod_cgroup: &Option<CgroupPath>,
        c: &mut Container,
    ) -> LifecycleResult<()> {
        let plugins = self.plugins();
        let mounts = plugins.snapshotter.prepare(&c.id, req.parent_chain.as_ref()).await?;
        let pod_cgroup = pod_cgroup
            .as_ref()
            .ok_or_else(|| LifecycleError::FailedPrecondition(format!("pod sandbox {} has no cgroup", c.pod_id)))?;
        let cgroup = plugins
            .resources
            .create_container(pod_cgroup, &c.id, &req.resources)
            .await?;
        c.runtime.cgroup = Some(cgroup.clone());
        {
            let rec = c.clone();
            self.write(move |tx| tx.put(Table::Containers, &rec.id, &rec)).await?;
        }
        let mut spec = req.spec.clone();
        if let Some(linux) = spec.linux_mut() {
            linux.set_cgroups_path(Some(PathBuf::from(cgroup.as_str())));
        }
        plugins
            .isolation
            .create(&ContainerSpec {
                id: c.id.clone(),
                pod_id: c.pod_id.clone(),
                spec,
                rootfs: Rootfs::Mounts(mounts),
                log_path: req.log_path.clone(),
                stdin: req.stdin,
                stdin_once: req.stdin_once,
                tty: req.tty,
                cgroup_procs: plugins.resources.procs_files(&cgroup),
            })
            .await?;
        Ok(())
    }

    /// Undoes everything a container may hold, each step idempotent; returns whether all of it succeeded.
    pub(super) async fn cleanup_container(&self, c: &Container, pod_cgroup: Option<&CgroupPath>) -> bool {
        let plugins = self.plugins();
        let mut clean = true;
        if let Err(e) = plugins.isolation.delete(&c.id).await {
            undo_failed("container delete", &c.id, &e);
            clean = false;
        }
        if let Some(key) = &c.runtime.snapshot
            && let Err(e) = plugins.snapshotter.remove(key).await
        {
            undo_failed("snapshot removal", &c.id, &e);
            clean = false;
        }
        let volumes = self.config().root.join("volumes").join(&c.id);
        if let Err(e) = std::fs::remove_dir_all(&volumes)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            undo_failed("volumes removal", &c.id, &e);
            clean = false;
        }
        let cgroup = c
            .runtime
            .cgroup
            .clone()
            .or_else(|| pod_cgroup.map(|p| Self::container_cgroup_path(p, &c.id)));
        if let Some(cg) = cgroup
            && let Err(e) = plugins.resources.remove(&cg).await
        {
            undo_failed("cgroup removal", &c.id, &e);
            clean = false;
        }
        clean
    }

    pub(super) async fn forget_container(&self, c: &Container) -> LifecycleResult<()> {
        let id = c.id.clone();
        let pod = self.store().get::<crate::model::PodSandbox>(Table::Pods, &c.pod_id)?;
        let name = pod.map(|p| p.metadata.container_reserved_name(&c.name, c.attempt));
        self.write(move |tx| {
            tx.delete(Table::Containers, &id)?;
            if let Some(name) = name
                && tx.get::<String>(Table::Names, &name)?.as_deref() == Some(id.as_str())
            {
                tx.delete(Table::Names, &name)?;
            }
            tx.delete(Table::Intents, &intent_key("container", &id)).map(drop)
        })
        .await?;
        self.inner.locks.forget(&c.id);
        Ok(())
    }

    /// StartContainer: lets the created process exec.
    pub async fn start_container(&self, id: &str) -> LifecycleResult<()> {
        let _guard = self.inner.locks.lock(id).await;
        let mut c = self.get_container(id)?;
        if c.state != ContainerState::Created {
            return Err(LifecycleError::FailedPrecondition(format!(
                "container {id} is {:?}, not created: it cannot be started",
                c.state
            )));
        }
        let pid = self.plugins().isolation.start(id).await?;
        failpoint::hit("start_container.after_start").await;
        c.state = ContainerState::Running;
        c.started_at = now_nanos();
        c.runtime.pid = pid;
        let rec = c.clone();
        self.write(move |tx| tx.put(Table::Containers, &rec.id, &rec)).await?;
        self.publish(EventKind::ContainerStarted, id, &c.pod_id);
        self.watch_exit(id.to_string());
        tracing::info!(container = %id, pid, "container started");
        Ok(())
    }

    /// Waits in the background for the container's exit and records it.
    pub(super) fn watch_exit(&self, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match this.plugins().isolation.wait(&id, Duration::from_secs(3600)).await {
                    Ok(Some(exit)) => {
                        if let Err(e) = this.record_exit(&id, exit).await {
                            tracing::warn!(container = %id, "cannot record the exit: {e}");
                        }
                        return;
                    }
                    Ok(None) => {}
                    Err(PluginError::NotFound(_)) => return,
                    Err(e) => {
                        tracing::warn!(container = %id, "waiting for the exit failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Records an exit once (later calls are no-ops), with its reason, and publishes ContainerStopped.
    pub(super) async fn record_exit(&self, id: &str, exit: ExitStatus) -> LifecycleResult<()> {
        let Some(c) = self.store().get::<Container>(Table::Containers, id)? else {
            return Ok(());
        };
        if c.state == ContainerState::Exited {
            return Ok(());
        }
        let oom = match &c.runtime.cgroup {
            Some(cg) if exit.code == 137 || exit.signal == Some(SIGKILL) => {
                self.plugins().resources.oom_kills(cg).await.unwrap_or(0) > 0
            }
            _ => false,
        };
        let reason = if oom {
            ExitReason::OomKilled
        } else if exit.code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        };
        let id_s = id.to_string();
        let changed = self
            .write(move |tx| {
                let Some(mut c) = tx.get::<Container>(Table::Containers, &id_s)? else {
                    return Ok(None);
                };
                if c.state == ContainerState::Exited {
                    return Ok(None);
                }
                c.state = ContainerState::Exited;
                c.exit_code = exit.code;
                c.finished_at = if exit.finished_at > 0 {
                    exit.finished_at
                } else {
                    now_nanos()
                };
                if c.started_at == 0 {
                    c.started_at = c.finished_at;
                }
                c.reason = reason.as_str().to_string();
                tx.put(Table::Containers, &c.id, &c)?;
                Ok(Some(c.pod_id))
            })
            .await?;
        if let Some(pod_id) = changed {
            self.publish(EventKind::ContainerStopped, id, &pod_id);
            tracing::info!(container = %id, code = exit.code, reason = reason.as_str(), "container exited");
        }
        Ok(())
    }

    /// StopContainer: the stop signal, up to `timeout`, then SIGKILL. Stopping a stopped or unknown container
    /// is not an error (CRI idempotence).
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> LifecycleResult<()> {
        let _guard = self.inner.locks.lock(id).await;
        self.stop_locked(id, timeout).await
    }

    async fn stop_locked(&self, id: &str, timeout: Duration) -> LifecycleResult<()> {
        let Some(c) = self.store().get::<Container>(Table::Containers, id)? else {
            return Ok(());
        };
        let iso = &self.plugins().isolation;
        match c.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created | ContainerState::Unknown => {
                // Never started: its process is parked before exec; kill it and record the exit.
                let _ = iso.kill(id, SIGKILL).await;
                let exit = iso.wait(id, Duration::from_secs(5)).await.ok().flatten();
                return self
                    .record_exit(
                        id,
                        exit.unwrap_or(ExitStatus {
                            code: 137,
                            signal: Some(SIGKILL),
                            finished_at: now_nanos(),
                        }),
                    )
                    .await;
            }
            ContainerState::Running => {}
        }
        if !timeout.is_zero() {
            match iso.kill(id, c.runtime.stop_signal).await {
                Ok(()) => {}
                Err(PluginError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(exit) = iso.wait(id, timeout).await? {
                return self.record_exit(id, exit).await;
            }
            tracing::info!(container = %id, "still running after {timeout:?}: SIGKILL");
        }
        match iso.kill(id, SIGKILL).await {
            Ok(()) | Err(PluginError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match iso.wait(id, KILL_WAIT).await? {
            Some(exit) => self.record_exit(id, exit).await,
            None => Err(LifecycleError::DeadlineExceeded(format!(
                "container {id} did not exit within {KILL_WAIT:?} of SIGKILL"
            ))),
        }
    }

    /// RemoveContainer: stops it if needed (like containerd), then frees everything it holds. Idempotent.
    pub async fn remove_container(&self, id: &str) -> LifecycleResult<()> {
        let _guard = self.inner.locks.lock(id).await;
        let Some(c) = self.store().get::<Container>(Table::Containers, id)? else {
            return Ok(());
        };
        if c.state != ContainerState::Exited {
            self.stop_locked(id, Duration::ZERO).await?;
        }
        {
            let key = intent_key("container", id);
            self.write(move |tx| tx.put(Table::Intents, &key, &Intent::RemoveContainer))
                .await?;
        }
        let pod_cgroup = self
            .store()
            .get::<crate::model::PodSandbox>(Table::Pods, &c.pod_id)?
            .and_then(|p| p.runtime.cgroup);
        if !self.cleanup_container(&c, pod_cgroup.as_ref()).await {
            return Err(LifecycleError::Plugin(PluginError::Internal(format!(
                "container {id} could not be fully removed; see berthd's log, and retry"
            ))));
        }
        self.forget_container(&c).await?;
        self.publish(EventKind::ContainerDeleted, id, &c.pod_id);
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    /// ExecSync: runs a command in a running container and collects its output.
    pub async fn exec_sync(
        &self,
        id: &str,
        exec: &ExecSpec,
        timeout: Option<Duration>,
        max_output: usize,
    ) -> LifecycleResult<ExecOutput> {
        let c = self.get_container(id)?;
        if c.state != ContainerState::Running {
            return Err(LifecycleError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(self
            .plugins()
            .isolation
            .exec_sync(id, exec, timeout, max_output)
            .await?)
    }

    /// UpdateContainerResources: applies the new limits, then records them.
    pub async fn update_container_resources(&self, id: &str, resources: LinuxResources) -> LifecycleResult<()> {
        let _guard = self.inner.locks.lock(id).await;
        let mut c = self.get_container(id)?;
        if c.state == ContainerState::Exited {
            return Err(LifecycleError::FailedPrecondition(format!("container {id} has exited")));
        }
        let cg = c
            .runtime
            .cgroup
            .clone()
            .ok_or_else(|| LifecycleError::FailedPrecondition(format!("container {id} has no cgroup")))?;
        self.plugins().resources.update(&cg, &resources).await?;
        c.runtime.resources = resources;
        self.write(move |tx| tx.put(Table::Containers, &c.id, &c)).await?;
        Ok(())
    }

    /// The state the isolation plugin sees now, recording an exit the watcher has not yet seen.
    pub async fn refresh_container(&self, id: &str) -> LifecycleResult<Container> {
        let c = self.get_container(id)?;
        if c.state == ContainerState::Running
            && let Ok(state) = self.plugins().isolation.state(id).await
            && let ProcessState::Exited { exit, .. } = state.state
        {
            self.record_exit(id, exit).await?;
            return self.get_container(id);
        }
        Ok(c)
    }
}
