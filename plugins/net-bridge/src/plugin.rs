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
use std::sync::OnceLock;
use std::time::Instant;

use async_trait::async_trait;
use berth_core::config::BridgeConfig;
use berth_core::plugin::network::{Network, PodNetwork, PodNetworkStatus};
use berth_core::plugin::{PluginError, PluginResult, Readiness};
use berth_core::store::{Store, Table};
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
    #[error("no pod CIDR: bridge.cidr is empty and the kubelet has not sent one (UpdateRuntimeConfig) yet")]
    NoPodCidr,
    #[error("pod CIDR {0:?} from the kubelet: {1}")]
    PodCidr(String, String),
    #[error(transparent)]
    Store(#[from] berth_core::store::StoreError),
}

impl From<BridgeError> for PluginError {
    fn from(e: BridgeError) -> PluginError {
        match e {
            BridgeError::Config { .. } | BridgeError::ConfigValue { .. } | BridgeError::PodId(_) => {
                PluginError::InvalidArgument(e.to_string())
            }
            BridgeError::Nft(NftError::BadMapping { .. }) => PluginError::InvalidArgument(e.to_string()),
            BridgeError::Ipam(IpamError::Exhausted { .. }) | BridgeError::NoPodCidr => {
                PluginError::FailedPrecondition(e.to_string())
            }
            BridgeError::PodCidr(..) => PluginError::InvalidArgument(e.to_string()),
            BridgeError::Link(LinkError { what, source }) => PluginError::io(what, source),
            BridgeError::Sysctl { path, source } => PluginError::io(format!("write {path}"), source),
            other => PluginError::Internal(other.to_string()),
        }
    }
}

pub struct BridgeNetwork {
    bridge: String,
    mtu: u32,
    /// IPv4 first, then the optional IPv6 range: from `bridge.cidr`, or when that is empty, the kubelet's pod
    /// CIDR (kept in the store, so a restarted daemon has it before the kubelet sends it again).
    ranges: OnceLock<Vec<Cidr>>,
    /// `bridge.cidr_v6`, added to a pod CIDR from the kubelet that has no IPv6 range.
    configured_v6: Option<Cidr>,
    store: Store,
    masquerade: bool,
    table: String,
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
        let mut configured_v6 = None;
        if !config.cidr_v6.trim().is_empty() {
            let v6: Cidr = config.cidr_v6.parse().map_err(|source| BridgeError::Config {
                field: "bridge.cidr_v6",
                source,
            })?;
            if v6.is_ipv4() {
                return Err(bad("bridge.cidr_v6", format!("{v6} is not an IPv6 network")));
            }
            configured_v6 = Some(v6);
        }
        let network = BridgeNetwork {
            table: Firewall::new(&config.bridge, Vec::new(), config.masquerade).table,
            bridge: config.bridge.clone(),
            mtu: config.mtu,
            ranges: OnceLock::new(),
            configured_v6,
            store,
            masquerade: config.masquerade,
            host: OnceCell::new(),
            dumps: Mutex::new(()),
            nft: Mutex::new(NftState::default()),
        };
        let ranges = if config.cidr.trim().is_empty() {
            let kept: Option<String> = network.store.get(Table::Plugins, &network.pod_cidr_key())?;
            match kept {
                Some(cidr) => network.ranges_of_pod_cidr(&cidr)?,
                None => return Ok(network),
            }
        } else {
            let v4: Cidr = config.cidr.parse().map_err(|source| BridgeError::Config {
                field: "bridge.cidr",
                source,
            })?;
            if !v4.is_ipv4() {
                return Err(bad("bridge.cidr", format!("{v4} is not an IPv4 network")));
            }
            [Some(v4), configured_v6].into_iter().flatten().collect()
        };
        let _ = network.ranges.set(ranges);
        Ok(network)
    }

    /// The nftables table this plugin owns.
    pub fn nft_table(&self) -> &str {
        &self.table
    }

    fn pod_cidr_key(&self) -> String {
        format!("bridge:{}/pod_cidr", self.bridge)
    }

    /// The ranges of a kubelet pod CIDR (`v4` or `v4,v6`, either order); `bridge.cidr_v6` fills in a
    /// missing IPv6 range.
    fn ranges_of_pod_cidr(&self, cidr: &str) -> Result<Vec<Cidr>, BridgeError> {
        let bad = |m: String| BridgeError::PodCidr(cidr.to_string(), m);
        let parsed = cidr
            .split(',')
            .map(|c| c.trim().parse::<Cidr>().map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<Cidr>, _>>()?;
        let v4 = parsed.iter().find(|c| c.is_ipv4()).copied();
        let v6 = parsed.iter().find(|c| !c.is_ipv4()).copied().or(self.configured_v6);
        let Some(v4) = v4 else {
            return Err(bad("the bridge plugin needs an IPv4 range".into()));
        };
        Ok([Some(v4), v6].into_iter().flatten().collect())
    }

    /// The pod ranges, or NoPodCidr while there are none yet.
    fn ranges(&self) -> Result<&[Cidr], BridgeError> {
        self.ranges.get().map(Vec::as_slice).ok_or(BridgeError::NoPodCidr)
    }

    /// The allocator; without ranges it can still list and release what pods hold.
    fn ipam(&self) -> Ipam {
        let ranges = self.ranges.get().cloned().unwrap_or_default();
        Ipam::new(self.store.clone(), format!("bridge:{}", self.bridge), ranges)
    }

    /// The nftables rules; without ranges it can still list and delete pod rules.
    fn firewall(&self) -> Firewall {
        let ranges = self.ranges.get().cloned().unwrap_or_default();
        Firewall::new(&self.bridge, ranges, self.masquerade)
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
        let ipam = self.ipam();
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
                gateways: self.ranges()?,
            },
        )
        .await?;
        // Forwarding for pod egress and hostPort traffic between pods; route_localnet so that hostPort
        // traffic from 127.0.0.1, DNATed to a pod, is not dropped as martian on the bridge.
        sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge), "1")?;
        if self.ranges()?.iter().any(|r| !r.is_ipv4()) {
            sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(index)
    }

    async fn apply_base_rules(&self, state: &mut NftState) -> Result<(), BridgeError> {
        if !state.base_applied {
            let firewall = self.firewall();
            firewall.apply("base rules", &firewall.base_script()).await?;
            state.base_applied = true;
        }
        Ok(())
    }

    async fn setup_pod(&self, pod: &PodNetwork) -> Result<PodNetworkStatus, BridgeError> {
        check_pod_id(&pod.pod_id)?;
        self.ranges()?;
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
        let firewall = self.firewall();
        let script = firewall.pod_script(&pod.pod_id, &pod.port_mappings, &ips)?;
        if !script.is_empty() {
            let mut state = self.nft.lock().await;
            // Recorded first: if the apply half-fails in some way nft does not report, teardown still looks.
            state.pods_with_rules.insert(pod.pod_id.clone());
            firewall.apply("add hostPort rules", &script).await?;
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
                let firewall = self.firewall();
                let rules: Vec<_> = firewall
                    .pod_rules()
                    .await?
                    .into_iter()
                    .filter(|r| r.pod_id == pod_id)
                    .collect();
                firewall
                    .apply("delete hostPort rules", &firewall.delete_script(&rules))
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

    /// Takes the kubelet's pod CIDR when `bridge.cidr` is empty and none was taken before, and keeps it in
    /// the store. Once there are ranges they stay: changing them under running pods would strand them.
    async fn take_pod_cidr(&self, cidr: &str) -> Result<(), BridgeError> {
        if cidr.trim().is_empty() {
            return Ok(());
        }
        if let Some(current) = self.ranges.get() {
            if self.ranges_of_pod_cidr(cidr).ok().as_ref() != Some(current) {
                info!(pod_cidr = cidr, current = ?current, "ignoring the kubelet pod CIDR: the bridge keeps its range");
            }
            return Ok(());
        }
        let ranges = self.ranges_of_pod_cidr(cidr)?;
        let (store, key, value) = (self.store.clone(), self.pod_cidr_key(), cidr.to_string());
        tokio::task::spawn_blocking(move || store.put(Table::Plugins, &key, &value)).await??;
        info!(
            pod_cidr = cidr,
            "bridge.cidr is empty: the bridge uses the kubelet pod CIDR"
        );
        let _ = self.ranges.set(ranges);
        Ok(())
    }

    async fn reconcile_pods(&self, live: &[String]) -> Result<(), BridgeError> {
        let live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        {
            let mut state = self.nft.lock().await;
            let firewall = self.firewall();
            let rules = firewall.pod_rules().await?;
            let (stale, kept): (Vec<_>, Vec<_>) = rules.into_iter().partition(|r| !live.contains(r.pod_id.as_str()));
            if !stale.is_empty() {
                info!(
                    rules = stale.len(),
                    "removing hostPort rules of pods that no longer exist"
                );
                firewall
                    .apply("delete stale hostPort rules", &firewall.delete_script(&stale))
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
        match self.ranges() {
            Ok(_) => Readiness::ready(),
            Err(e) => Readiness::not_ready("NetworkPluginNotReady", e.to_string()),
        }
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
        Ok(self.take_pod_cidr(cidr).await?)
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

    #[tokio::test]
    async fn without_bridge_cidr_the_kubelet_pod_cidr_is_taken_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        let config = BridgeConfig {
            cidr: String::new(),
            cidr_v6: "fd00:5::/64".into(),
            ..BridgeConfig::default()
        };
        let n = BridgeNetwork::new(&config, store.clone()).unwrap();
        let r = n.readiness().await;
        assert!(!r.ready && r.message.contains("UpdateRuntimeConfig"), "{r:?}");
        assert!(matches!(n.ranges(), Err(BridgeError::NoPodCidr)));
        // Not IPv4, not a CIDR: refused, nothing taken.
        for bad in ["fd00:9::/64", "10.1.2.0/33", "nonsense"] {
            let e = n.update_pod_cidr(bad).await.unwrap_err();
            assert!(matches!(e, PluginError::InvalidArgument(_)), "{bad}: {e:?}");
        }
        assert!(!n.readiness().await.ready);
        n.update_pod_cidr("").await.unwrap();
        n.update_pod_cidr("10.7.3.0/24").await.unwrap();
        assert!(n.readiness().await.ready);
        let want: Vec<Cidr> = vec!["10.7.3.0/24".parse().unwrap(), "fd00:5::/64".parse().unwrap()];
        assert_eq!(n.ranges().unwrap(), &want[..]);
        // A later, different CIDR does not move the bridge under its pods.
        n.update_pod_cidr("10.8.0.0/24").await.unwrap();
        assert_eq!(n.ranges().unwrap(), &want[..]);
        drop(n);
        // A restarted daemon has it before the kubelet sends it again.
        let again = BridgeNetwork::new(&config, store).unwrap();
        assert_eq!(again.ranges().unwrap(), &want[..]);
        // The kubelet's own IPv6 range wins over bridge.cidr_v6.
        let dual = again.ranges_of_pod_cidr("fd00:6::/64, 10.9.0.0/16").unwrap();
        assert_eq!(
            dual,
            vec!["10.9.0.0/16".parse::<Cidr>().unwrap(), "fd00:6::/64".parse().unwrap()]
        );
    }
}
