//! Restart recovery: finish or roll back what a killed daemon left half-done, find the live containers again,
//! record the exits that happened meanwhile, and release what no pod holds any more.

use std::collections::{HashMap, HashSet};

use super::{Intent, Lifecycle, LifecycleResult};
use crate::model::{Container, ContainerState, PodSandbox, PodState, now_nanos};
use crate::plugin::isolation::{ExitStatus, ProcessState};
use crate::plugin::snapshot::SnapshotKind;
use crate::store::Table;

/// What recovery did, for the log and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub rolled_back: Vec<String>,
    pub running: usize,
    pub exited_meanwhile: usize,
    pub lost: usize,
    pub stale_cgroups: usize,
    /// Containers a shim kept that no record names, and snapshots no container or image owns.
    pub orphans: usize,
    pub orphan_snapshots: usize,
}

impl Lifecycle {
    pub async fn recover(&self) -> LifecycleResult<RecoveryReport> {
        let mut report = RecoveryReport::default();
        // Ask the shims first: each answers after any request the killed daemon had already sent it, so a
        // create still in flight at the kill is finished (and seen) before its rollback deletes it.
        let live: HashMap<String, ProcessState> = self
            .plugins()
            .isolation
            .recover()
            .await?
            .into_iter()
            .map(|s| (s.id, s.state))
            .collect();
        self.roll_back_intents(&mut report).await?;

        let containers = self.list_containers()?;
        for id in live.keys().filter(|id| !containers.iter().any(|c| &c.id == *id)) {
            // A container no record names: its create was rolled back before the shim had it.
            tracing::info!(container = %id, "removing a container its monitor kept but no record names");
            if let Err(e) = self.plugins().isolation.delete(id).await {
                tracing::warn!(container = %id, "cannot remove an orphaned container: {e}");
            }
            report.orphans += 1;
        }
        let owned: HashSet<String> = containers.iter().filter_map(|c| c.runtime.snapshot.clone()).collect();
        for c in containers {
            self.reconcile_container(c, &live, &mut report).await?;
        }
        report.orphan_snapshots = self.remove_orphan_snapshots(&owned).await;

        let pods = self.list_pods()?;
        for mut pod in pods.clone() {
            // Pins live under the runtime dir: after a reboot they are gone and the pod cannot be Ready.
            let pinned = pod.runtime.namespaces.net.as_ref().is_none_or(|p| p.exists());
            if pod.state == PodState::Ready && !pinned {
                pod.state = PodState::NotReady;
                let p = pod.clone();
                self.write(move |tx| tx.put(Table::Pods, &p.id, &p)).await?;
            }
        }
        let with_network: Vec<String> = pods
            .iter()
            .filter(|p| p.runtime.network.is_some())
            .map(|p| p.id.clone())
            .collect();
        if let Err(e) = self.plugins().network.reconcile(&with_network).await {
            tracing::warn!("network reconcile failed: {e}");
        }
        report.stale_cgroups = self.remove_stale_cgroups(&pods).await;
        tracing::info!(?report, "recovery done");
        Ok(report)
    }

    async fn roll_back_intents(&self, report: &mut RecoveryReport) -> LifecycleResult<()> {
        for (key, intent) in self.store().list::<Intent>(Table::Intents)? {
            let Some((kind, id)) = key.split_once('/') else {
                continue;
            };
            match kind {
                "container" => {
                    if let Some(c) = self.store().get::<Container>(Table::Containers, id)? {
                        tracing::info!(container = %id, ?intent, "rolling back a half-done container operation");
                        let pod_cg = self
                            .store()
                            .get::<PodSandbox>(Table::Pods, &c.pod_id)?
                            .and_then(|p| p.runtime.cgroup);
                        if self.cleanup_container(&c, pod_cg.as_ref()).await {
                            self.forget_container(&c).await?;
                        }
                    }
                }
                "pod" => {
                    if let Some(p) = self.store().get::<PodSandbox>(Table::Pods, id)? {
                        tracing::info!(pod = %id, ?intent, "rolling back a half-done pod operation");
                        for c in self.list_containers()?.into_iter().filter(|c| c.pod_id == p.id) {
                            if self.cleanup_container(&c, p.runtime.cgroup.as_ref()).await {
                                self.forget_container(&c).await?;
                            }
                        }
                        if self.cleanup_pod(&p).await {
                            self.forget_pod(&p).await?;
                        }
                    }
                }
                _ => {}
            }
            self.finish_key(&key).await?;
            report.rolled_back.push(key);
        }
        Ok(())
    }

    async fn finish_key(&self, key: &str) -> LifecycleResult<()> {
        let key = key.to_string();
        self.write(move |tx| tx.delete(Table::Intents, &key).map(drop)).await?;
        Ok(())
    }

    async fn reconcile_container(
        &self,
        mut c: Container,
        live: &HashMap<String, ProcessState>,
        report: &mut RecoveryReport,
    ) -> LifecycleResult<()> {
        if c.state == ContainerState::Exited {
            return Ok(());
        }
        match live.get(&c.id) {
            Some(ProcessState::Running { pid, started_at }) => {
                if c.state != ContainerState::Running {
                    // Started, but the daemon died before recording it.
                    c.state = ContainerState::Running;
                    c.started_at = *started_at;
                    c.runtime.pid = *pid;
                    let rec = c.clone();
                    self.write(move |tx| tx.put(Table::Containers, &rec.id, &rec)).await?;
                }
                self.watch_exit(c.id.clone());
                report.running += 1;
            }
            Some(ProcessState::Exited { exit, .. }) => {
                self.record_exit(&c.id, *exit).await?;
                report.exited_meanwhile += 1;
            }
            Some(ProcessState::Created) => {}
            None => {
                // Its monitor is gone (host reboot, or the shim was killed): nothing can run it any more.
                tracing::warn!(container = %c.id, "no monitor knows this container any more: marking it exited");
                self.record_exit(
                    &c.id,
                    ExitStatus {
                        code: 255,
                        signal: None,
                        finished_at: now_nanos(),
                    },
                )
                .await?;
                report.lost += 1;
            }
        }
        Ok(())
    }

    /// Container snapshots and throwaway views no container record names (`owned` are the names the records
    /// hold): left by a kill between their prepare and the record's commit or rollback. Image layers are
    /// committed snapshots and stay.
    async fn remove_orphan_snapshots(&self, owned: &HashSet<String>) -> usize {
        let snap = &self.plugins().snapshotter;
        let Ok(all) = snap.walk().await else {
            return 0;
        };
        let mut removed = 0;
        for s in all
            .into_iter()
            .filter(|s| s.kind != SnapshotKind::Committed && !owned.contains(&s.key))
        {
            match snap.remove(&s.key).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(key = %s.key, "cannot remove an orphaned snapshot: {e}"),
            }
        }
        removed
    }

    /// Pod cgroups under berth's default parent that no pod record owns: leftovers of a crash.
    async fn remove_stale_cgroups(&self, pods: &[PodSandbox]) -> usize {
        let res = &self.plugins().resources;
        let known: HashSet<String> = pods
            .iter()
            .filter_map(|p| p.runtime.cgroup.as_ref().map(|c| c.0.clone()))
            .collect();
        let Ok(children) = res.list(&res.default_parent()).await else {
            return 0;
        };
        let mut removed = 0;
        for cg in children.into_iter().filter(|c| !known.contains(&c.0)) {
            match res.remove(&cg).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(cgroup = %cg.0, "cannot remove a stale cgroup: {e}"),
            }
        }
        removed
    }
}
