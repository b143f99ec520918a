//! Pod sandboxes: run, stop, remove.

use std::collections::BTreeMap;

use super::{Intent, Lifecycle, LifecycleError, LifecycleResult, intent_key, podfiles, undo_failed};
use crate::failpoint;
use crate::model::{ContainerState, PodMetadata, PodRuntime, PodSandbox, PodState, new_id, now_nanos};
use crate::plugin::PluginError;
use crate::plugin::isolation::PodIsolation;
use crate::plugin::network::{PodNetwork, PortMapping};
use crate::plugin::resources::{CgroupPath, LinuxResources};
use crate::store::Table;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A validated RunPodSandbox, in berth's terms.
#[derive(Clone, Debug, Default)]
pub struct PodRequest {
    pub metadata: PodMetadata,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    /// The CRI request, encoded by the CRI layer, kept for status.
    pub config: Vec<u8>,
    pub hostname: String,
    pub log_directory: String,
    pub dns: DnsConfig,
    pub port_mappings: Vec<PortMapping>,
    pub cgroup_parent: String,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    /// `NamespaceMode::POD` for PID: the containers share one PID namespace.
    pub shared_pid: bool,
    pub sysctls: BTreeMap<String, String>,
    /// Pod-level limits (overhead included) for the pod cgroup.
    pub resources: LinuxResources,
}

impl Lifecycle {
    fn pod_files_dir(&self, id: &str) -> std::path::PathBuf {
        self.config().state.join("pods").join(id)
    }

    pub fn get_pod(&self, id: &str) -> LifecycleResult<PodSandbox> {
        self.store()
            .get::<PodSandbox>(Table::Pods, id)?
            .ok_or_else(|| LifecycleError::NotFound(format!("pod sandbox {id} not found")))
    }

    /// Finds a pod by full id or unique id prefix, as crictl accepts.
    pub fn find_pod(&self, id_or_prefix: &str) -> LifecycleResult<PodSandbox> {
        if id_or_prefix.is_empty() {
            return Err(LifecycleError::InvalidArgument(
                "pod sandbox id must not be empty".into(),
            ));
        }
        if let Some(p) = self.store().get::<PodSandbox>(Table::Pods, id_or_prefix)? {
            return Ok(p);
        }
        let mut hits: Vec<PodSandbox> = self
            .list_pods()?
            .into_iter()
            .filter(|p| p.id.starts_with(id_or_prefix))
            .collect();
        match hits.len() {
            1 => Ok(hits.remove(0)),
            0 => Err(LifecycleError::NotFound(format!(
                "pod sandbox {id_or_prefix} not found"
            ))),
            _ => Err(LifecycleError::InvalidArgument(format!(
                "pod sandbox id prefix {id_or_prefix} is ambiguous"
            ))),
        }
    }

    pub fn list_pods(&self) -> LifecycleResult<Vec<PodSandbox>> {
        Ok(self
            .store()
            .list::<PodSandbox>(Table::Pods)?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// RunPodSandbox: reserve the name, then cgroup → namespaces → network → pod files → Ready.
    pub async fn run_pod(&self, req: PodRequest) -> LifecycleResult<PodSandbox> {
        let id = new_id();
        let name = req.metadata.reserved_name();
        let hostname = if req.hostname.is_empty() {
            nix_hostname()
        } else {
            req.hostname.clone()
        };
        let files_dir = self.pod_files_dir(&id);
        let network = (!req.host_network).then(|| PodNetwork {
            pod_id: id.clone(),
            name: req.metadata.name.clone(),
            namespace: req.metadata.namespace.clone(),
            uid: req.metadata.uid.clone(),
            // Filled in once the namespace is pinned.
            netns_path: Default::default(),
            port_mappings: req.port_mappings.clone(),
            cgroup_parent: req.cgroup_parent.clone(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
        });
        let mut pod = PodSandbox {
            id: id.clone(),
            metadata: req.metadata.clone(),
            state: PodState::NotReady,
            created_at: now_nanos(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            runtime_handler: req.runtime_handler.clone(),
            config: req.config.clone(),
            runtime: PodRuntime {
                hostname: hostname.clone(),
                log_directory: req.log_directory.clone(),
                host_network: req.host_network,
                host_ipc: req.host_ipc,
                host_pid: req.host_pid,
                shared_pid: req.shared_pid,
                cgroup_parent: req.cgroup_parent.clone(),
                cgroup: None,
                namespaces: Default::default(),
                network,
                ips: Vec::new(),
                files_dir: files_dir.clone(),
            },
        };
        // 1. Name, record and intent in one transaction, before any side effect.
        {
            let (pod, reserved, id) = (pod.clone(), name.clone(), id.clone());
            self.write(move |tx| {
                if let Err(holder) = tx.insert_new(Table::Names, &reserved, &id)? {
                    return Ok(Err(holder));
                }
                tx.put(Table::Pods, &id, &pod)?;
                tx.put(Table::Intents, &intent_key("pod", &id), &Intent::RunPod)?;
                Ok(Ok(()))
            })
            .await?
            .map_err(|holder: String| {
                LifecycleError::AlreadyExists(format!("pod sandbox name {name:?} is reserved by {holder}"))
            })?;
        }
        failpoint::hit("run_pod.after_intent").await;
        let _guard = self.inner.locks.lock(&id).await;
        match self.run_pod_steps(&req, &mut pod).await {
            Ok(()) => {
                pod.state = PodState::Ready;
                let p = pod.clone();
                let key = intent_key("pod", &id);
                self.write(move |tx| {
                    tx.put(Table::Pods, &p.id, &p)?;
                    tx.delete(Table::Intents, &key).map(drop)
                })
                .await?;
                tracing::info!(pod = %id, name = %name, "pod sandbox ready");
                Ok(pod)
            }
            Err(e) => {
                tracing::warn!(pod = %id, "RunPodSandbox failed, rolling back: {e}");
                if self.cleanup_pod(&pod).await {
                    self.forget_pod(&pod).await?;
                } else {
                    // Keep the record (NotReady): RemovePodSandbox retries what could not be undone.
                    self.finish("pod", &id).await?;
                }
                Err(e)
            }
        }
    }

    async fn run_pod_steps(&self, req: &PodRequest, pod: &mut PodSandbox) -> LifecycleResult<()> {
        let plugins = self.plugins();
        let id = pod.id.clone();
        // 2. Cgroup.
        let cgroup = plugins
            .resources
            .create_pod(&id, &req.cgroup_parent, &req.resources)
            .await?;
        pod.runtime.cgroup = Some(cgroup.clone());
        self.save_pod(pod).await?;
        // 3. Namespaces (and the pod's shim).
        let infra_cgroup = plugins.resources.infra_procs_files(&cgroup);
        let ns = plugins
            .isolation
            .pin_namespaces(&PodIsolation {
                pod_id: id.clone(),
                hostname: pod.runtime.hostname.clone(),
                host_network: req.host_network,
                host_ipc: req.host_ipc,
                host_uts: req.host_network,
                shared_pid: req.shared_pid,
                sysctls: req.sysctls.clone(),
                cgroup_procs: infra_cgroup,
            })
            .await?;
        pod.runtime.namespaces = ns.clone();
        failpoint::hit("run_pod.after_pin").await;
        // 4. Network.
        if let Some(net) = pod.runtime.network.as_mut() {
            net.netns_path = ns
                .net
                .clone()
                .ok_or_else(|| LifecycleError::Plugin(PluginError::Internal("no network namespace pinned".into())))?;
        }
        self.save_pod(pod).await?;
        if let Some(net) = &pod.runtime.network {
            let status = plugins.network.setup(net).await?;
            pod.runtime.ips = status.ips.iter().map(|ip| ip.to_string()).collect();
            failpoint::hit("run_pod.after_network").await;
        }
        // 5. Pod files.
        let hosts = podfiles::hosts(req.host_network, &pod.runtime.hostname, &pod.runtime.ips);
        let resolv = podfiles::resolv_conf(&req.dns);
        podfiles::write_all(&pod.runtime.files_dir, &hosts, &pod.runtime.hostname, &resolv).map_err(|source| {
            LifecycleError::Io {
                context: format!("writing pod files in {}", pod.runtime.files_dir.display()),
                source,
            }
        })?;
        Ok(())
    }

    /// The pod cgroup as the resources plugin makes it: kubelet's `cgroup_parent` itself, else
    /// `<default parent>/<pod id>`.
    fn pod_cgroup_path(&self, pod: &PodSandbox) -> CgroupPath {
        if pod.runtime.cgroup_parent.is_empty() {
            let parent = self.plugins().resources.default_parent();
            CgroupPath(format!("{}/{}", parent.as_str().trim_end_matches('/'), pod.id))
        } else {
            CgroupPath(pod.runtime.cgroup_parent.clone())
        }
    }

    async fn save_pod(&self, pod: &PodSandbox) -> LifecycleResult<()> {
        let p = pod.clone();
        self.write(move |tx| tx.put(Table::Pods, &p.id, &p)).await?;
        Ok(())
    }

    /// Undoes everything a pod may hold, each step idempotent; returns whether all of it succeeded.
    pub(super) async fn cleanup_pod(&self, pod: &PodSandbox) -> bool {
        let plugins = self.plugins();
        let mut clean = true;
        if let Some(net) = &pod.runtime.network
            && !net.netns_path.as_os_str().is_empty()
            && let Err(e) = plugins.network.teardown(net).await
        {
            undo_failed("network teardown", &pod.id, &e);
            clean = false;
        }
        if let Err(e) = plugins.isolation.unpin_namespaces(&pod.id).await {
            undo_failed("namespace unpin", &pod.id, &e);
            clean = false;
        }
        if let Err(e) = plugins.isolation.remove_pod(&pod.id).await {
            undo_failed("shim removal", &pod.id, &e);
            clean = false;
        }
        let cgroup = match &pod.runtime.cgroup {
            Some(c) => Some(c.clone()),
            // Created but not yet recorded when the daemon died: the same path the plugin derives.
            None => Some(self.pod_cgroup_path(pod)),
        };
        if let Some(cg) = cgroup
            && let Err(e) = plugins.resources.remove(&cg).await
        {
            undo_failed("cgroup removal", &pod.id, &e);
            clean = false;
        }
        if let Err(e) = std::fs::remove_dir_all(&pod.runtime.files_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            undo_failed("pod files removal", &pod.id, &e);
            clean = false;
        }
        clean
    }

    /// Deletes the pod's record, name and intents.
    pub(super) async fn forget_pod(&self, pod: &PodSandbox) -> LifecycleResult<()> {
        let (id, name) = (pod.id.clone(), pod.metadata.reserved_name());
        self.write(move |tx| {
            tx.delete(Table::Pods, &id)?;
            // Release the name only if it is still ours.
            if tx.get::<String>(Table::Names, &name)?.as_deref() == Some(id.as_str()) {
                tx.delete(Table::Names, &name)?;
            }
            tx.delete(Table::Intents, &intent_key("pod", &id)).map(drop)
        })
        .await?;
        self.inner.locks.forget(&pod.id);
        Ok(())
    }

    /// StopPodSandbox: kills every container, tears the network down, unpins the namespaces. Idempotent; an
    /// unknown id is not an error.
    ///
    /// The CRI says the containers "must be forcibly terminated": like containerd, with no grace (SIGKILL at
    /// once). kubelet stops each container with its own grace period before it stops the pod.
    pub async fn stop_pod(&self, id: &str) -> LifecycleResult<()> {
        let Some(mut pod) = self.store().get::<PodSandbox>(Table::Pods, id)? else {
            return Ok(());
        };
        for c in self.list_containers()?.into_iter().filter(|c| c.pod_id == pod.id) {
            if matches!(c.state, ContainerState::Running | ContainerState::Created) {
                self.stop_container(&c.id, std::time::Duration::ZERO).await?;
            }
        }
        let _guard = self.inner.locks.lock(&pod.id).await;
        // NotReady before the first teardown step: a daemon killed half-way must not leave a Ready pod whose
        // namespaces are gone (new containers would fail to join them). Each step below is idempotent, so
        // kubelet's retried StopPodSandbox finishes the job.
        if pod.state != PodState::NotReady {
            pod.state = PodState::NotReady;
            self.save_pod(&pod).await?;
        }
        let plugins = self.plugins();
        if let Some(net) = &pod.runtime.network
            && !net.netns_path.as_os_str().is_empty()
        {
            plugins.network.teardown(net).await?;
        }
        plugins.isolation.unpin_namespaces(&pod.id).await?;
        tracing::info!(pod = %pod.id, "pod sandbox stopped");
        Ok(())
    }

    /// RemovePodSandbox: removes its containers, then everything the pod holds. Idempotent.
    pub async fn remove_pod(&self, id: &str) -> LifecycleResult<()> {
        let Some(pod) = self.store().get::<PodSandbox>(Table::Pods, id)? else {
            return Ok(());
        };
        for c in self.list_containers()?.into_iter().filter(|c| c.pod_id == pod.id) {
            self.remove_container(&c.id).await?;
        }
        let _guard = self.inner.locks.lock(&pod.id).await;
        {
            let key = intent_key("pod", &pod.id);
            self.write(move |tx| tx.put(Table::Intents, &key, &Intent::RemovePod))
                .await?;
        }
        if !self.cleanup_pod(&pod).await {
            return Err(LifecycleError::Plugin(PluginError::Internal(format!(
                "pod sandbox {} could not be fully removed; see berthd's log, and retry",
                pod.id
            ))));
        }
        self.forget_pod(&pod).await?;
        tracing::info!(pod = %pod.id, "pod sandbox removed");
        Ok(())
    }
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
