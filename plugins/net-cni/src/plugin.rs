//! [`CniNetwork`]: the `cni` network plugin.
//!
//! Setup records, before running anything, what teardown will need (the network config list as loaded,
//! the runtime config, the netns) under `cni/<pod id>` in `Table::Plugins`; ADD's final result is added to
//! that record and the pod's addresses to `Table::IpAllocations` (`cni:<network>/<ip>`). Teardown runs DEL
//! in reverse order with the recorded config and result, so it works after the conf dir changed, after a
//! half-done ADD, and after a daemon restart; the record goes only once every DEL succeeded.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use berth_core::config::CniConfig;
use berth_core::plugin::network::{Network, PodNetwork, PodNetworkStatus, Protocol};
use berth_core::plugin::{PluginError, PluginResult, Readiness};
use berth_core::store::{Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use crate::conf::{ConfError, ConfList, version_at_least};
use crate::exec::{self, Command, ExecError, Invocation};
use crate::result::pod_ips;

/// The pod's interface.
pub const IFNAME: &str = "eth0";
const RECORD_PREFIX: &str = "cni/";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the recorded CNI config of pod {pod_id} is unreadable")]
    Record { pod_id: String },
    #[error("pod {pod_id} has no CNI result to check (not set up, or set up by a failed ADD)")]
    NoResult { pod_id: String },
    #[error("a blocking store call panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<CniError> for PluginError {
    fn from(e: CniError) -> PluginError {
        match e {
            CniError::Conf(_) | CniError::NoResult { .. } => PluginError::FailedPrecondition(e.to_string()),
            CniError::Exec(ExecError::NotFound { .. }) => PluginError::FailedPrecondition(e.to_string()),
            other => PluginError::Internal(other.to_string()),
        }
    }
}

/// What teardown needs, recorded before ADD runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PodRecord {
    pod: PodNetwork,
    conflist: Value,
    runtime_config: Map<String, Value>,
    /// berth ran the loopback plugin itself (the list has none).
    loopback: bool,
    /// ADD's final result, once ADD succeeded.
    result: Option<Value>,
}

pub struct CniNetwork {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    store: Store,
    pod_cidr: std::sync::Mutex<String>,
}

impl CniNetwork {
    pub fn new(config: &CniConfig, store: Store) -> CniNetwork {
        CniNetwork {
            conf_dir: config.conf_dir.clone(),
            bin_dirs: config.bin_dirs.clone(),
            store,
            pod_cidr: std::sync::Mutex::new(String::new()),
        }
    }

    fn runtime_config(&self, pod: &PodNetwork) -> Map<String, Value> {
        let mut rc = Map::new();
        let ports: Vec<Value> = pod
            .port_mappings
            .iter()
            .filter(|m| m.host_port != 0)
            .map(|m| {
                let protocol = match m.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                    Protocol::Sctp => "sctp",
                };
                let mut v = json!({"hostPort": m.host_port, "containerPort": m.container_port, "protocol": protocol});
                if !m.host_ip.is_empty() {
                    v["hostIP"] = Value::String(m.host_ip.clone());
                }
                v
            })
            .collect();
        rc.insert("portMappings".into(), Value::Array(ports));
        let cidr = self.pod_cidr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !cidr.is_empty() {
            let ranges: Vec<Value> = cidr.split(',').map(|c| json!([{"subnet": c.trim()}])).collect();
            rc.insert("ipRanges".into(), Value::Array(ranges));
        }
        if !pod.cgroup_parent.is_empty() {
            rc.insert("cgroupPath".into(), Value::String(pod.cgroup_parent.clone()));
        }
        rc
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, CniError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(store)).await??)
    }

    async fn record(&self, pod_id: &str) -> Result<Option<PodRecord>, CniError> {
        let key = format!("{RECORD_PREFIX}{pod_id}");
        self.blocking(move |s| s.get(Table::Plugins, &key)).await
    }

    async fn put_record(&self, record: &PodRecord, network: Option<&str>, ips: &[IpAddr]) -> Result<(), CniError> {
        let record = record.clone();
        let allocations: Vec<String> = match network {
            Some(n) => ips.iter().map(|ip| format!("cni:{n}/{ip}")).collect(),
            None => Vec::new(),
        };
        self.blocking(move |s| {
            s.write(|tx| {
                let id = &record.pod.pod_id;
                tx.put(Table::Plugins, &format!("{RECORD_PREFIX}{id}"), &record)?;
                for key in &allocations {
                    tx.put(Table::IpAllocations, key, id)?;
                }
                Ok(())
            })
        })
        .await
    }

    fn invocation<'a>(&'a self, record: &'a PodRecord, netns: &'a Path, ifname: &'a str) -> Invocation<'a> {
        Invocation {
            container_id: &record.pod.pod_id,
            netns,
            ifname,
            args: "",
            bin_dirs: &self.bin_dirs,
            runtime_config: &record.runtime_config,
        }
    }

    fn loopback_list(version: &str) -> ConfList {
        ConfList {
            name: "cni-loopback".into(),
            cni_version: version.into(),
            disable_check: false,
            plugins: vec![json!({"type": "loopback"}).as_object().cloned().unwrap_or_default()],
            source: PathBuf::new(),
        }
    }

    async fn setup_pod(&self, pod: &PodNetwork) -> Result<PodNetworkStatus, CniError> {
        let list = ConfList::load_first(&self.conf_dir)?;
        // A retried setup: CNI forbids a second ADD without DEL, so undo the first one.
        self.teardown_pod(&pod.pod_id).await?;
        let mut record = PodRecord {
            pod: pod.clone(),
            conflist: list.to_value(),
            runtime_config: self.runtime_config(pod),
            loopback: !list.has_plugin("loopback") && exec::find_binary("loopback", &self.bin_dirs).is_some(),
            result: None,
        };
        self.put_record(&record, None, &[]).await?;
        let args = cni_args(pod);
        let mut inv = self.invocation(&record, &pod.netns_path, IFNAME);
        inv.args = &args;
        if record.loopback {
            let lo = CniNetwork::loopback_list(&list.cni_version);
            let lo_inv = Invocation { ifname: "lo", ..inv };
            exec::run(&lo_inv, Command::Add, &lo.plugins[0], &lo, None).await?;
        }
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let result = exec::run(&inv, Command::Add, plugin, &list, prev.as_ref()).await?;
            prev = result.or(prev);
        }
        let ips = prev.as_ref().map(|r| pod_ips(r, IFNAME)).unwrap_or_default();
        record.result = Some(prev.unwrap_or_else(|| json!({"cniVersion": list.cni_version})));
        self.put_record(&record, Some(&list.name), &ips).await?;
        Ok(PodNetworkStatus {
            ips,
            interface: IFNAME.into(),
        })
    }

    async fn teardown_pod(&self, pod_id: &str) -> Result<(), CniError> {
        let Some(record) = self.record(pod_id).await? else {
            return Ok(()); // never set up, or already torn down
        };
        let list = ConfList::from_value(&record.conflist).ok_or_else(|| CniError::Record {
            pod_id: pod_id.to_string(),
        })?;
        // A netns already gone is passed as empty: plugins then release what they hold outside it.
        let netns = if record.pod.netns_path.exists() {
            record.pod.netns_path.clone()
        } else {
            PathBuf::new()
        };
        let args = cni_args(&record.pod);
        let mut inv = self.invocation(&record, &netns, IFNAME);
        inv.args = &args;
        for plugin in list.plugins.iter().rev() {
            exec::run(&inv, Command::Del, plugin, &list, record.result.as_ref()).await?;
        }
        if record.loopback {
            let lo = CniNetwork::loopback_list(&list.cni_version);
            let lo_inv = Invocation { ifname: "lo", ..inv };
            exec::run(&lo_inv, Command::Del, &lo.plugins[0], &lo, None).await?;
        }
        let (key, id) = (format!("{RECORD_PREFIX}{pod_id}"), pod_id.to_string());
        self.blocking(move |s| {
            s.write(|tx| {
                tx.delete(Table::Plugins, &key)?;
                for (k, holder) in tx.list::<String>(Table::IpAllocations)? {
                    if holder == id && k.starts_with("cni:") {
                        tx.delete(Table::IpAllocations, &k)?;
                    }
                }
                Ok(())
            })
        })
        .await?;
        debug!(pod_id, "CNI network torn down");
        Ok(())
    }

    async fn check_pod(&self, pod: &PodNetwork) -> Result<(), CniError> {
        let no_result = || CniError::NoResult {
            pod_id: pod.pod_id.clone(),
        };
        let record = self.record(&pod.pod_id).await?.ok_or_else(no_result)?;
        let result = record.result.clone().ok_or_else(no_result)?;
        let list = ConfList::from_value(&record.conflist).ok_or_else(|| CniError::Record {
            pod_id: pod.pod_id.clone(),
        })?;
        if list.disable_check || !version_at_least(&list.cni_version, (0, 4, 0)) {
            return Ok(()); // CHECK exists from spec 0.4.0 on, and a list may opt out
        }
        let args = cni_args(&record.pod);
        let mut inv = self.invocation(&record, &record.pod.netns_path, IFNAME);
        inv.args = &args;
        for plugin in &list.plugins {
            exec::run(&inv, Command::Check, plugin, &list, Some(&result)).await?;
        }
        Ok(())
    }

    async fn reconcile_pods(&self, live: &[String]) -> Result<(), CniError> {
        let live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        let records: Vec<(String, Value)> = self.blocking(|s| s.list(Table::Plugins)).await?;
        for (key, _) in records {
            let Some(pod_id) = key.strip_prefix(RECORD_PREFIX) else {
                continue;
            };
            if !live.contains(pod_id) {
                info!(pod_id, "tearing down the CNI network of a pod that no longer exists");
                if let Err(e) = self.teardown_pod(pod_id).await {
                    warn!(pod_id, error = %e, "CNI teardown of a stale pod failed; kept for the next try");
                }
            }
        }
        Ok(())
    }
}

/// The Kubernetes `CNI_ARGS`, as kubelet-era runtimes pass them.
fn cni_args(pod: &PodNetwork) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.pod_id, pod.uid
    )
}

#[async_trait]
impl Network for CniNetwork {
    async fn readiness(&self) -> Readiness {
        let list = match ConfList::load_first(&self.conf_dir) {
            Ok(l) => l,
            Err(e) => return Readiness::not_ready("NetworkPluginNotReady", format!("cni config uninitialized: {e}")),
        };
        for p in &list.plugins {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
            if exec::find_binary(ty, &self.bin_dirs).is_none() {
                return Readiness::not_ready(
                    "NetworkPluginNotReady",
                    format!(
                        "CNI plugin {ty:?} of {} is not in the plugin dirs",
                        list.source.display()
                    ),
                );
            }
        }
        Readiness::ready()
    }

    async fn setup(&self, pod: &PodNetwork) -> PluginResult<PodNetworkStatus> {
        let started = Instant::now();
        let status = self.setup_pod(pod).await.inspect_err(|e| {
            warn!(pod_id = %pod.pod_id, error = %e, "CNI ADD failed; teardown will run DEL");
        })?;
        debug!(pod_id = %pod.pod_id, ips = ?status.ips, elapsed = ?started.elapsed(), "CNI network set up");
        Ok(status)
    }

    async fn teardown(&self, pod: &PodNetwork) -> PluginResult<()> {
        Ok(self.teardown_pod(&pod.pod_id).await?)
    }

    async fn pod_status(&self, pod: &PodNetwork) -> PluginResult<Option<PodNetworkStatus>> {
        let record = self.record(&pod.pod_id).await?;
        Ok(record.and_then(|r| r.result).map(|result| PodNetworkStatus {
            ips: pod_ips(&result, IFNAME),
            interface: IFNAME.into(),
        }))
    }

    async fn check(&self, pod: &PodNetwork) -> PluginResult<()> {
        Ok(self.check_pod(pod).await?)
    }

    async fn update_pod_cidr(&self, cidr: &str) -> PluginResult<()> {
        let mut current = self.pod_cidr.lock().unwrap_or_else(|e| e.into_inner());
        if *current != cidr {
            info!(
                pod_cidr = cidr,
                "pod CIDR from the kubelet: passed to CNI plugins as ipRanges"
            );
            *current = cidr.to_string();
        }
        Ok(())
    }

    async fn reconcile(&self, live_pods: &[String]) -> PluginResult<()> {
        Ok(self.reconcile_pods(live_pods).await?)
    }
}
