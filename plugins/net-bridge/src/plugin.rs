//! [`BridgeNetwork`]: the `bridge` network plugin, composed of the IPAM, link and nftables pieces.
//!
//! Setup order, each step undone by teardown in reverse: allocate the addresses (store) → bridge → veth pair
//! (host end on the bridge, peer created in the pod netns as `eth0`) → pod side (lo, address, routes) →
//! hostPort rules. Every side effect of a pod is findable from its id alone (the veth name is derived from
//! it, rules carry it, allocations name it), so teardown and reconcile need no other record, and a pod
//! half-built by a crashed daemon is cleaned up like any other.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Instant;

use async_trait::async_trait;
use berth_core::config::BridgeConfig;
use berth_core::plugin::network::{Network, PodNetwork, PodNetworkStatus};
use berth_core::plugin::{PluginError, PluginResult, Readiness};
use berth_core::store::Store;
use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, info, warn};

use crate::cidr::{Cidr, CidrError};
use crate::ipam::{Ipam, IpamError};
use crate::link::{self, BridgeSpec, LinkError};
use crate::netns::{self, NetnsError};
use crate::nft::{Firewall, NftError};

/// The interface name of the pod end of the veth.
pub const POD_IFNAME: &str = "eth0";
/// Host-side veth names start with this; the rest is a hash of bridge and pod id.
pub const VETH_PREFIX: &str = "bv";

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge config: {field}: {source}")]
    Config {
        field: &'static str,
        #[source]
        source: CidrError,
    },
    #[error("bridge config: {field}: {message}")]
    ConfigValue { field: &'static str, message: String },
    #[error("pod id {0:?} has characters other than letters, digits, '-', '_' and '.'")]
    PodId(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("cannot write {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking store call panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<BridgeError> for PluginError {
    fn from(e: BridgeError) -> PluginError {
        match e {
            BridgeError::Config { .. } | BridgeError::ConfigValue { .. } | BridgeError::PodId(_) => {
                PluginError::InvalidArgument(e.to_string())
            }
            BridgeError::Nft(NftError::BadMapping { .. }) => PluginError::InvalidArgument(e.to_string()),
            BridgeError::Ipam(IpamError::Exhausted { .. }) => PluginError::FailedPrecondition(e.to_string()),
            BridgeError::Link(LinkError { what, source }) => PluginError::io(what, source),
            BridgeError::Sysctl { path, source } => PluginError::io(format!("write {path}"), source),
            other => PluginError::Internal(other.to_string()),
        }
    }
}

pub struct BridgeNetwork {
    bridge: String,
    mtu: u32,
    /// IPv4 first, then the optional IPv6 range.
    ranges: Vec<Cidr>,
    ipam: Ipam,
    firewall: Firewall,
    host: OnceCell<rtnetlink::Handle>,
    /// Held around netlink dumps on the shared `host` socket: the kernel runs one dump per socket at a time
    /// and answers a concurrent one with EBUSY (seen with 50 pods set up at once).
    dumps: Mutex<()>,
    nft: Mutex<NftState>,
}

/// Serialises nftables changes, and remembers which pods have rules so that teardown of the (many) pods
/// without hostPorts runs no `nft` at all.
#[derive(Default)]
struct NftState {
    base_applied: bool,
    pods_with_rules: HashSet<String>,
}

impl BridgeNetwork {
    pub fn new(config: &BridgeConfig, store: Store) -> Result<BridgeNetwork, BridgeError> {
        let bad = |field, message: String| BridgeError::ConfigValue { field, message };
        if config.bridge.is_empty() || config.bridge.len() > 15 || config.bridge.contains(['/', ' ']) {
            return Err(bad(
                "bridge.bridge",
                format!("{:?} is not a valid interface name", config.bridge),
            ));
        }
        if !(576..=65535).contains(&config.mtu) {
            return Err(bad("bridge.mtu", format!("{} is out of range", config.mtu)));
        }
        let v4: Cidr = config.cidr.parse().map_err(|source| BridgeError::Config {
            field: "bridge.cidr",
            source,
        })?;
        if !v4.is_ipv4() {
            return Err(bad("bridge.cidr", format!("{v4} is not an IPv4 network")));
        }
        let mut ranges = vec![v4];
        if !config.cidr_v6.trim().is_empty() {
            let v6: Cidr = config.cidr_v6.parse().map_err(|source| BridgeError::Config {
                field: "bridge.cidr_v6",
                source,
            })?;
            if v6.is_ipv4() {
                return Err(bad("bridge.cidr_v6", format!("{v6} is not an IPv6 network")));
            }
            ranges.push(v6);
        }
        Ok(BridgeNetwork {
            ipam: Ipam::new(store, format!("bridge:{}", config.bridge), ranges.clone()),
            firewall: Firewall::new(&config.bridge, ranges.clone(), config.masquerade),
            bridge: config.bridge.clone(),
            mtu: config.mtu,
            ranges,
            host: OnceCell::new(),
            dumps: Mutex::new(()),
            nft: Mutex::new(NftState::default()),
        })
    }

    /// The nftables table this plugin owns.
    pub fn nft_table(&self) -> &str {
        &self.firewall.table
    }

    /// The host-side veth name of a pod: `bv` + 12 hex digits of a hash of bridge and pod id (≤ 15 chars).
    pub fn veth_name(&self, pod_id: &str) -> String {
        format!(
            "{VETH_PREFIX}{:012x}",
            fnv1a(&[self.bridge.as_bytes(), b"/", pod_id.as_bytes()]) >> 16
        )
    }

    async fn host(&self) -> Result<&rtnetlink::Handle, BridgeError> {
        self.host
            .get_or_try_init(|| async {
                netns::netlink_here().map_err(|source| {
                    BridgeError::Link(LinkError {
                        what: "open a netlink socket".into(),
                        source,
                    })
                })
            })
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Ipam) -> Result<T, IpamError> + Send + 'static,
    ) -> Result<T, BridgeError> {
        let ipam = self.ipam.clone();
        Ok(tokio::task::spawn_blocking(move || f(ipam)).await??)
    }

    async fn ensure_bridge(&self) -> Result<u32, BridgeError> {
        let host = self.host().await?;
        let _dump = self.dumps.lock().await;
        let index = link::ensure_bridge(
            host,
            &BridgeSpec {
                name: &self.bridge,
                mtu: self.mtu,
                gateways: &self.ranges,
            },
        )
        .await?;
        // Forwarding for pod egress and hostPort traffic between pods; route_localnet so that hostPort
        // traffic from 127.0.0.1, DNATed to a pod, is not dropped as martian on the bridge.
        sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge), "1")?;
        if self.ranges.iter().any(|r| !r.is_ipv4()) {
            sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(index)
    }

    async fn apply_base_rules(&self, state: &mut NftState) -> Result<(), BridgeError> {
        if !state.base_applied {
            self.firewall.apply("base rules", &self.firewall.base_script()).await?;
            state.base_applied = true;
        }
        Ok(())
    }

    async fn setup_pod(&self, pod: &PodNetwork) -> Result<PodNetworkStatus, BridgeError> {
        check_pod_id(&pod.pod_id)?;
        let netns_file = netns::open(&pod.netns_path)?;
        let id = pod.pod_id.clone();
        let addrs = self.blocking(move |ipam| ipam.allocate(&id)).await?;
        let bridge_index = self.ensure_bridge().await?;
        {
            let mut state = self.nft.lock().await;
            self.apply_base_rules(&mut state).await?;
        }
        let host = self.host().await?;
        let veth = self.veth_name(&pod.pod_id);
        let create = || link::create_veth(host, &veth, POD_IFNAME, netns_file.as_fd(), bridge_index, self.mtu);
        if let Err(e) = create().await {
            // A retried setup: the pair from the earlier attempt is in the way; start it over.
            if !link::delete(host, &veth).await? {
                return Err(e.into());
            }
            create().await?;
        }
        let pod_nl = netns::netlink_in(&pod.netns_path).await?;
        link::configure_pod(&pod_nl, POD_IFNAME, &addrs).await?;
        drop(pod_nl);
        let ips: Vec<IpAddr> = addrs.iter().map(|(ip, _)| *ip).collect();
        let script = self.firewall.pod_script(&pod.pod_id, &pod.port_mappings, &ips)?;
        if !script.is_empty() {
            let mut state = self.nft.lock().await;
            // Recorded first: if the apply half-fails in some way nft does not report, teardown still looks.
            state.pods_with_rules.insert(pod.pod_id.clone());
            self.firewall.apply("add hostPort rules", &script).await?;
        }
        Ok(PodNetworkStatus {
            ips,
            interface: POD_IFNAME.into(),
        })
    }

    /// Removes everything of one pod; each step tolerates its part being already gone.
    async fn teardown_pod(&self, pod_id: &str) -> Result<(), BridgeError> {
        if check_pod_id(pod_id).is_err() {
            return Ok(()); // setup refused it before doing anything
        }
        {
            let mut state = self.nft.lock().await;
            if state.pods_with_rules.contains(pod_id) {
                let rules: Vec<_> = self
                    .firewall
                    .pod_rules()
                    .await?
                    .into_iter()
                    .filter(|r| r.pod_id == pod_id)
                    .collect();
                self.firewall
                    .apply("delete hostPort rules", &self.firewall.delete_script(&rules))
                    .await?;
                state.pods_with_rules.remove(pod_id);
            }
        }
        let host = self.host().await?;
        link::delete(host, &self.veth_name(pod_id)).await?;
        let id = pod_id.to_string();
        let released = self.blocking(move |ipam| ipam.release(&id)).await?;
        debug!(pod_id, ?released, "pod network torn down");
        Ok(())
    }

    async fn reconcile_pods(&self, live: &[String]) -> Result<(), BridgeError> {
        let live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        {
            let mut state = self.nft.lock().await;
            let rules = self.firewall.pod_rules().await?;
            let (stale, kept): (Vec<_>, Vec<_>) = rules.into_iter().partition(|r| !live.contains(r.pod_id.as_str()));
            if !stale.is_empty() {
                info!(
                    rules = stale.len(),
                    "removing hostPort rules of pods that no longer exist"
                );
                self.firewall
                    .apply("delete stale hostPort rules", &self.firewall.delete_script(&stale))
                    .await?;
            }
            state.pods_with_rules = kept.into_iter().map(|r| r.pod_id).collect();
        }
        let host = self.host().await?;
        if let Some(bridge_index) = link::index_of(host, &self.bridge).await? {
            let keep: HashSet<String> = live.iter().map(|p| self.veth_name(p)).collect();
            let ports = {
                let _dump = self.dumps.lock().await;
                link::ports_of(host, bridge_index).await?
            };
            for port in ports {
                if port.starts_with(VETH_PREFIX) && !keep.contains(&port) {
                    info!(veth = %port, "removing the veth of a pod that no longer exists");
                    link::delete(host, &port).await?;
                }
            }
        }
        for pod_id in self.blocking(|ipam| ipam.pods()).await? {
            if !live.contains(pod_id.as_str()) {
                info!(pod_id, "releasing the addresses of a pod that no longer exists");
                self.teardown_pod(&pod_id).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Network for BridgeNetwork {
    async fn readiness(&self) -> Readiness {
        Readiness::ready()
    }

    async fn setup(&self, pod: &PodNetwork) -> PluginResult<PodNetworkStatus> {
        let started = Instant::now();
        let status = self.setup_pod(pod).await.inspect_err(|e| {
            warn!(pod_id = %pod.pod_id, error = %e, "bridge setup failed; teardown will clean up");
        })?;
        debug!(pod_id = %pod.pod_id, ips = ?status.ips, elapsed = ?started.elapsed(), "pod network set up");
        Ok(status)
    }

    async fn teardown(&self, pod: &PodNetwork) -> PluginResult<()> {
        Ok(self.teardown_pod(&pod.pod_id).await?)
    }

    async fn pod_status(&self, pod: &PodNetwork) -> PluginResult<Option<PodNetworkStatus>> {
        let id = pod.pod_id.clone();
        let ips = self.blocking(move |ipam| ipam.addresses_of(&id)).await?;
        Ok((!ips.is_empty()).then(|| PodNetworkStatus {
            ips,
            interface: POD_IFNAME.into(),
        }))
    }

    async fn update_pod_cidr(&self, cidr: &str) -> PluginResult<()> {
        // The bridge's range comes from berth's config: changing it under running pods would strand them.
        if !cidr.is_empty() && cidr.parse::<Cidr>().ok() != self.ranges.first().copied() {
            info!(pod_cidr = cidr, configured = %self.ranges[0], "ignoring the kubelet pod CIDR: bridge.cidr is used");
        }
        Ok(())
    }

    async fn reconcile(&self, live_pods: &[String]) -> PluginResult<()> {
        Ok(self.reconcile_pods(live_pods).await?)
    }
}

fn check_pod_id(id: &str) -> Result<(), BridgeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BridgeError::PodId(id.to_string()))
    }
}

fn sysctl(path: &str, value: &str) -> Result<(), BridgeError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| BridgeError::Sysctl {
        path: path.to_string(),
        source,
    })
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        let ok = BridgeConfig::default();
        assert!(BridgeNetwork::new(&ok, store.clone()).is_ok());
        for bad in [
            BridgeConfig {
                cidr: "fd00::/64".into(),
                ..ok.clone()
            },
            BridgeConfig {
                cidr_v6: "10.0.0.0/8".into(),
                ..ok.clone()
            },
            BridgeConfig {
                bridge: "a-very-long-bridge-name".into(),
                ..ok.clone()
            },
            BridgeConfig { mtu: 10, ..ok.clone() },
        ] {
            assert!(BridgeNetwork::new(&bad, store.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn veth_names_fit_and_differ() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        let n = BridgeNetwork::new(&BridgeConfig::default(), store).unwrap();
        let a = n.veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 14);
        assert_ne!(a, n.veth_name("other"));
        assert_eq!(
            a,
            n.veth_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert!(check_pod_id("bad\"id").is_err());
    }
}
