//! The bridge plugin against the real kernel: namespaces, veth, bridge and nftables, with unique names and
//! test-only address ranges. Needs root.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use berth_core::config::BridgeConfig;
use berth_core::plugin::Network;
use berth_core::plugin::network::Protocol;
use berth_core::store::{Store, Table};
use berth_net_bridge::testsuite::{
    self, LinkGuard, NftGuard, TestNetns, check_host_ports, check_two_pods_and_gateway, host_links, pod, port,
    unique_name, unique_number, unique_subnet,
};
use berth_net_bridge::{BridgeNetwork, Cidr, Ipam};

/// One test's node network: a unique bridge, subnet and nft table, all removed when dropped.
struct Env {
    dir: tempfile::TempDir,
    config: BridgeConfig,
    store: Store,
    net: BridgeNetwork,
    _guards: (NftGuard, LinkGuard),
}

impl Env {
    fn new(v6: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let config = BridgeConfig {
            bridge: unique_name("bt"),
            cidr: unique_subnet(),
            cidr_v6: if v6 {
                format!("fd00:bee:{:x}::/64", unique_number() & 0xffff)
            } else {
                String::new()
            },
            mtu: 1500,
            masquerade: true,
        };
        let net = BridgeNetwork::new(&config, store.clone()).unwrap();
        let guards = (
            NftGuard(format!("inet {}", net.nft_table())),
            LinkGuard(config.bridge.clone()),
        );
        Env {
            dir,
            config,
            store,
            net,
            _guards: guards,
        }
    }

    /// The plugin as a restarted daemon would build it: same config, same store.
    fn restarted(&self) -> BridgeNetwork {
        BridgeNetwork::new(&self.config, self.store.clone()).unwrap()
    }

    /// `nft list table` of this test's table only (tests run in parallel).
    fn rules(&self) -> String {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "inet", self.net.nft_table()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn gateway(&self) -> IpAddr {
        self.config.cidr.parse::<Cidr>().unwrap().gateway()
    }

    fn allocations(&self) -> Vec<(String, String)> {
        let prefix = format!("bridge:{}/", self.config.bridge);
        self.store
            .list::<String>(Table::IpAllocations)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect()
    }

    /// No veth of the pod, no rule, no allocation.
    fn assert_clean(&self, pod_ids: &[&str]) {
        let links = host_links();
        for id in pod_ids {
            let veth = self.net.veth_name(id);
            assert!(!links.contains(&format!(" {veth}@")), "veth {veth} of {id} left behind");
        }
        let rules = self.rules();
        assert!(!rules.contains("berth-pod:"), "hostPort rules left behind:\n{rules}");
        assert_eq!(self.allocations(), vec![], "IP allocations left behind");
    }
}

fn ports_of_bridge(bridge: &str) -> usize {
    host_links()
        .lines()
        .filter(|l| l.contains(&format!("master {bridge} ")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_reach_each_other_and_the_gateway() {
    let env = Env::new(false);
    check_two_pods_and_gateway(&env.net, env.gateway()).await;
    env.assert_clean(&[]);
    assert_eq!(ports_of_bridge(&env.config.bridge), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_reach_each_other_over_both_families() {
    let env = Env::new(true);
    let ns = TestNetns::new().unwrap();
    let p = pod(&format!("ds{:08x}", unique_number()), ns.path(), vec![]);
    let status = env.net.setup(&p).await.unwrap();
    assert_eq!(status.ips.len(), 2);
    assert!(status.ips[0].is_ipv4() && status.ips[1].is_ipv6(), "{:?}", status.ips);
    env.net.teardown(&p).await.unwrap();
    check_two_pods_and_gateway(&env.net, env.gateway()).await;
    env.assert_clean(&[&p.pod_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_reach_the_pod_from_loopback_and_by_hairpin() {
    let env = Env::new(false);
    check_host_ports(&env.net, env.gateway()).await;
    env.assert_clean(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_reports_latency_and_a_retry_keeps_the_address() {
    let env = Env::new(false);
    let ns = TestNetns::new().unwrap();
    let p = pod(&format!("rt{:08x}", unique_number()), ns.path(), vec![]);
    let t = Instant::now();
    let first = env.net.setup(&p).await.unwrap();
    let cold = t.elapsed();
    // A retried setup (e.g. after the caller timed out) recreates the pair and keeps the address.
    let t = Instant::now();
    let again = env.net.setup(&p).await.unwrap();
    let retry = t.elapsed();
    assert_eq!(first, again);
    assert_eq!(env.net.pod_status(&p).await.unwrap(), Some(first.clone()));
    let ns2 = TestNetns::new().unwrap();
    let p2 = pod(&format!("rt{:08x}", unique_number()), ns2.path(), vec![]);
    let t = Instant::now();
    env.net.setup(&p2).await.unwrap();
    let warm = t.elapsed();
    println!("bridge setup latency: first pod (bridge + nft table) {cold:?}, retry {retry:?}, next pod {warm:?}");
    env.net.teardown(&p).await.unwrap();
    env.net.teardown(&p2).await.unwrap();
    assert_eq!(env.net.pod_status(&p).await.unwrap(), None);
    env.assert_clean(&[&p.pod_id, &p2.pod_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cycles_leave_nothing_behind() {
    let env = Env::new(false);
    let ns = TestNetns::new().unwrap();
    let mut setup_times = Vec::new();
    let mut teardown_times = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("cy{i:03}{:08x}", unique_number());
        // Every other pod has hostPorts, so both teardown paths are cycled.
        let ports = if i % 2 == 0 {
            vec![port(Protocol::Tcp, 40000 + i, 80), port(Protocol::Udp, 40000 + i, 53)]
        } else {
            vec![]
        };
        let p = pod(&id, ns.path(), ports);
        let t = Instant::now();
        let status = env
            .net
            .setup(&p)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: setup: {e}"));
        setup_times.push(t.elapsed());
        assert_eq!(status.ips.len(), 1);
        let t = Instant::now();
        env.net
            .teardown(&p)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: teardown: {e}"));
        teardown_times.push(t.elapsed());
        ids.push(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    env.assert_clean(&ids);
    assert_eq!(ports_of_bridge(&env.config.bridge), 0);
    // Nothing left inside the reused pod netns either.
    let pod_links = testsuite::in_netns(Some(ns.path()), || {
        String::from_utf8(
            std::process::Command::new("ip")
                .args(["-o", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    });
    assert!(!pod_links.contains("eth0"), "{pod_links}");
    println!("200 cycles: setup {}", summary(&mut setup_times));
    println!("200 cycles: teardown {}", summary(&mut teardown_times));
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    format!("p50 {:?}, p90 {:?}, max {:?}", p(0.5), p(0.9), p(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_a_half_done_setup_leaks_nothing() {
    let env = Env::new(false);
    let ns = TestNetns::new().unwrap();
    // Fails at the hostPort rules, after the address, the veth and the pod side are done.
    let mut bad_port = port(Protocol::Tcp, 40999, 80);
    bad_port.host_ip = "::1".into();
    let late = pod(&format!("hl{:08x}", unique_number()), ns.path(), vec![bad_port]);
    let err = env.net.setup(&late).await.unwrap_err();
    assert!(err.to_string().contains("hostPort"), "{err}");
    assert!(host_links().contains(&format!(" {}@", env.net.veth_name(&late.pod_id))));
    assert_eq!(env.allocations().len(), 1);
    env.net.teardown(&late).await.unwrap();
    env.net.teardown(&late).await.unwrap();
    env.assert_clean(&[&late.pod_id]);

    // Fails at the veth: the "netns" is a plain file. The address was already allocated.
    let plain = env.dir.path().join("not-a-netns");
    std::fs::write(&plain, "").unwrap();
    let early = pod(&format!("he{:08x}", unique_number()), &plain, vec![]);
    env.net.setup(&early).await.unwrap_err();
    assert_eq!(env.allocations().len(), 1);
    env.net.teardown(&early).await.unwrap();
    env.assert_clean(&[&early.pod_id]);

    // A pod that never got anywhere, and one with an id setup would refuse.
    env.net.teardown(&pod("never-set-up", ns.path(), vec![])).await.unwrap();
    env.net.teardown(&pod("bad\"id", ns.path(), vec![])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_at_start_reclaims_what_dead_pods_held() {
    let env = Env::new(false);
    let (ns_live, ns_dead, ns_ports) = (
        TestNetns::new().unwrap(),
        TestNetns::new().unwrap(),
        TestNetns::new().unwrap(),
    );
    let n = unique_number();
    let live = pod(
        &format!("lv{n:08x}"),
        ns_live.path(),
        vec![port(Protocol::Tcp, 41001, 80)],
    );
    let dead = pod(&format!("dd{n:08x}"), ns_dead.path(), vec![]);
    let dead_ports = pod(
        &format!("dp{n:08x}"),
        ns_ports.path(),
        vec![port(Protocol::Tcp, 41002, 80)],
    );
    let live_ip = env.net.setup(&live).await.unwrap().ips;
    env.net.setup(&dead).await.unwrap();
    env.net.setup(&dead_ports).await.unwrap();
    // Half-built by a daemon that crashed right after allocating.
    let crashed = format!("cr{n:08x}");
    let ipam = Ipam::new(
        env.store.clone(),
        format!("bridge:{}", env.config.bridge),
        vec![env.config.cidr.parse().unwrap()],
    );
    ipam.allocate(&crashed).unwrap();
    assert_eq!(env.allocations().len(), 4);

    // berthd restarts: a new plugin instance over the same store; only `live` still exists.
    let restarted = env.restarted();
    restarted.reconcile(std::slice::from_ref(&live.pod_id)).await.unwrap();
    let links = host_links();
    assert!(links.contains(&format!(" {}@", restarted.veth_name(&live.pod_id))));
    for gone in [&dead.pod_id, &dead_ports.pod_id, &crashed] {
        assert!(!links.contains(&format!(" {}@", restarted.veth_name(gone))), "{gone}");
    }
    let rules = env.rules();
    assert!(rules.contains(&format!("berth-pod:{}", live.pod_id)));
    assert!(!rules.contains(&format!("berth-pod:{}", dead_ports.pod_id)));
    assert_eq!(env.allocations().len(), 1);
    // The live pod keeps its address, and a new pod never gets it.
    assert_eq!(restarted.pod_status(&live).await.unwrap().unwrap().ips, live_ip);
    let ns_new = TestNetns::new().unwrap();
    let fresh = pod(&format!("nw{n:08x}"), ns_new.path(), vec![]);
    assert_ne!(restarted.setup(&fresh).await.unwrap().ips, live_ip);
    // The restarted instance knows the live pod's rules (learned by reconcile) and removes them.
    restarted.teardown(&live).await.unwrap();
    restarted.teardown(&fresh).await.unwrap();
    env.assert_clean(&[&live.pod_id, &fresh.pod_id]);
}
