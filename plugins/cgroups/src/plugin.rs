//! The `cgroupfs` resources plugin: [`Cgroupfs`] behind the async [`Resources`] trait. cgroupfs writes can block
//! (a lowered memory limit reclaims; removal waits for killed processes), so each call runs on the blocking
//! pool.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_core::plugin::resources::{CgroupMode, CgroupPath, CgroupStats, LinuxResources, Resources};
use berth_core::plugin::{PluginError, PluginResult};

use crate::error::Result;
use crate::manager::Cgroupfs;
use crate::report;

#[derive(Clone)]
pub struct CgroupfsPlugin {
    inner: Arc<Cgroupfs>,
}

impl CgroupfsPlugin {
    pub fn new(manager: Cgroupfs) -> Self {
        CgroupfsPlugin {
            inner: Arc::new(manager),
        }
    }

    pub fn manager(&self) -> &Cgroupfs {
        &self.inner
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cgroupfs) -> Result<T> + Send + 'static,
    ) -> PluginResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| PluginError::Internal(format!("cgroup task failed: {e}")))?
            .map_err(PluginError::from)
    }
}

#[async_trait]
impl Resources for CgroupfsPlugin {
    fn driver(&self) -> &str {
        "cgroupfs"
    }

    fn mode(&self) -> CgroupMode {
        self.inner.layout().mode
    }

    fn info(&self) -> serde_json::Value {
        report::info(self.inner.layout(), self.inner.default_parent())
    }

    fn check(&self) -> Vec<String> {
        self.inner.check_lines()
    }

    fn default_parent(&self) -> CgroupPath {
        self.inner.default_parent().clone()
    }

    async fn create_pod(&self, pod_id: &str, parent: &str, resources: &LinuxResources) -> PluginResult<CgroupPath> {
        let (pod_id, parent, r) = (pod_id.to_string(), parent.to_string(), resources.clone());
        self.blocking(move |m| m.create_pod(&pod_id, &parent, &r)).await
    }

    async fn create_container(
        &self,
        pod: &CgroupPath,
        container_id: &str,
        resources: &LinuxResources,
    ) -> PluginResult<CgroupPath> {
        let (pod, id, r) = (pod.clone(), container_id.to_string(), resources.clone());
        self.blocking(move |m| m.create_container(&pod, &id, &r)).await
    }

    async fn update(&self, path: &CgroupPath, resources: &LinuxResources) -> PluginResult<()> {
        let (path, r) = (path.clone(), resources.clone());
        self.blocking(move |m| m.update(&path, &r)).await
    }

    fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.inner.procs_files(path)
    }

    fn infra_procs_files(&self, pod: &CgroupPath) -> Vec<PathBuf> {
        self.inner.infra_procs_files(pod)
    }

    async fn stats(&self, path: &CgroupPath) -> PluginResult<CgroupStats> {
        let path = path.clone();
        self.blocking(move |m| m.stats(&path)).await
    }

    async fn oom_kills(&self, path: &CgroupPath) -> PluginResult<u64> {
        let path = path.clone();
        self.blocking(move |m| m.oom_kills(&path)).await
    }

    async fn list(&self, parent: &CgroupPath) -> PluginResult<Vec<CgroupPath>> {
        let parent = parent.clone();
        self.blocking(move |m| m.list(&parent)).await
    }

    async fn remove(&self, path: &CgroupPath) -> PluginResult<()> {
        let path = path.clone();
        self.blocking(move |m| m.remove(&path)).await
    }
}
