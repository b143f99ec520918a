//! Pod networking end to end over CRI: the namespaces containers of one pod share (loopback, hostname, IPC,
//! and PID when asked), pod-to-pod and pod-to-gateway TCP, hostPorts from the host's loopback, a clean host
//! after many pod cycles, and the same connectivity through the CNI plugin with Debian's plugins.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_core::store::{Store, Table};
use berth_cri::api::runtime_service_client::RuntimeServiceClient;
use berth_cri::api::{
    CreateContainerRequest, ExecSyncRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode,
    NamespaceOption, NetworkConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortMapping,
    Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, RuntimeConfig, StartContainerRequest, StatusRequest,
    StopPodSandboxRequest, UpdateRuntimeConfigRequest,
};
use berth_integration::{Berthd, BerthdOptions, ensure_test_images, ok_stdout, unique};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const DEBIAN_CNI: &str = "/usr/lib/cni";

/// A CRI client of one berthd, with the pods it ran (removed on drop, so a failed test leaves no pod's veth,
/// rules or CNI state behind).
struct Cri<'a> {
    b: &'a Berthd,
    rt: RuntimeServiceClient<Channel>,
    pods: Vec<String>,
}

/// What a pod is asked for.
#[derive(Default)]
struct PodSpec {
    pid: Option<NamespaceMode>,
    ports: Vec<(u16, u16)>,
}

impl<'a> Cri<'a> {
    async fn new(b: &'a Berthd) -> Cri<'a> {
        Cri {
            b,
            rt: b.runtime().await.unwrap(),
            pods: Vec::new(),
        }
    }

    fn pod_config(&self, name: &str, spec: &PodSpec) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: unique("uid-"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            log_directory: self.b.dir.path().join("logs").join(name).display().to_string(),
            port_mappings: spec
                .ports
                .iter()
                .map(|(host, ctr)| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: i32::from(*ctr),
                    host_port: i32::from(*host),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: spec.pid.unwrap_or(NamespaceMode::Container) as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox; returns the id and the config (CreateContainer needs it again).
    async fn run_pod(&mut self, name: &str, spec: &PodSpec) -> (String, PodSandboxConfig) {
        let config = self.pod_config(name, spec);
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e:?}\n{}", self.b.log_text()))
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(id.clone());
        (id, config)
    }

    async fn pod_ip(&mut self, pod: &str) -> IpAddr {
        let status = self
            .rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let ip = status.network.unwrap_or_default().ip;
        ip.parse().unwrap_or_else(|_| panic!("pod {pod} has no IP: {ip:?}"))
    }

    async fn remove_pod(&mut self, pod: &str) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap();
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap();
        self.pods.retain(|p| p != pod);
    }

    /// Creates and starts a busybox container running `script` with the given PID namespace mode.
    async fn start(
        &mut self,
        pod: &(String, PodSandboxConfig),
        name: &str,
        script: &str,
        pid: NamespaceMode,
        mounts: Vec<Mount>,
    ) -> String {
        let mut config = berth_integration::cri::container(name, script);
        config.mounts = mounts;
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = pid as i32;
        }
        let id = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"))
            .into_inner()
            .container_id;
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e:?}"));
        id
    }

    /// ExecSync; returns (exit code, stdout, stderr).
    async fn exec(&mut self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let r = self
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e:?}"))
            .into_inner();
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    /// ExecSync that must succeed; its stdout.
    async fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> String {
        let (code, out, err) = self.exec(id, cmd).await;
        assert_eq!(code, 0, "{cmd:?} exited {code}: {out}{err}");
        out
    }

    /// Runs `nc` in container `id` against `addr` until it prints a line (the listener may still be
    /// starting), at most ~20 s; returns what it printed last.
    async fn nc_from(&mut self, id: &str, ip: IpAddr, port: u16) -> String {
        let (ip, port) = (ip.to_string(), port.to_string());
        let mut last = String::new();
        for _ in 0..100 {
            let (code, out, err) = self.exec(id, &["nc", "-w", "5", &ip, &port]).await;
            if code == 0 && !out.trim().is_empty() {
                return out.trim().to_string();
            }
            last = format!("exit {code}: {out}{err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    }

    /// NetworkReady is false naming `why`, and RunPodSandbox fails with FailedPrecondition naming it too.
    async fn assert_network_not_ready(&mut self, why: &str) {
        let (ready, reason, message) = self.network_condition().await;
        assert!(!ready, "NetworkReady while it should not be ({why})");
        assert_eq!(reason, "NetworkPluginNotReady");
        assert!(message.contains(why), "{message}");
        let e = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(self.pod_config("early", &PodSpec::default())),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(why), "{e:?}");
    }

    /// UpdateRuntimeConfig with a pod CIDR, as the kubelet sends it.
    async fn set_pod_cidr(&mut self, cidr: &str) {
        self.rt
            .update_runtime_config(UpdateRuntimeConfigRequest {
                runtime_config: Some(RuntimeConfig {
                    network_config: Some(NetworkConfig { pod_cidr: cidr.into() }),
                }),
            })
            .await
            .unwrap();
    }

    async fn network_condition(&mut self) -> (bool, String, String) {
        let status = self
            .rt
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let c = status
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .expect("a NetworkReady condition");
        (c.status, c.reason, c.message)
    }
}

impl Drop for Cri<'_> {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = self.b.crictl(&["rmp", "-f", pod]);
        }
    }
}

fn start_berthd(config: &str) -> Berthd {
    ensure_test_images();
    let b = Berthd::start(BerthdOptions {
        config: config.into(),
        ..Default::default()
    })
    .unwrap();
    ok_stdout(&b.crictl(&["pull", BUSYBOX]), "crictl pull");
    b
}

/// A random /24 in 10.<base..base+49>.x.0 and its prefix ("10.a.b."), for a pod CIDR no other test uses.
fn unique_pod_cidr(base: u32) -> (String, String) {
    let n = u32::from_str_radix(&unique("")[2..], 16).unwrap();
    let prefix = format!("10.{}.{}.", base + n % 50, (n >> 8) % 250);
    (format!("{prefix}0/24"), prefix)
}

/// A TCP port free on the host right now, from a range the kernel does not hand out as ephemeral.
fn free_host_port() -> u16 {
    loop {
        let n = u16::from_str_radix(&unique("")[2..], 16).unwrap_or(0);
        let port = 20000 + n % 10000;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// Connects from the host to `addr` and reads what the peer sends until it closes.
fn host_read(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// `host_read` retried while the pod's listener starts (at most ~20 s).
fn host_read_retry(addr: SocketAddr) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        match host_read(addr) {
            Ok(s) if !s.is_empty() => return s,
            Ok(_) => last = "connected, read nothing".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

/// The IPv4 address on `link` in the host netns (the bridge's gateway address).
fn link_ipv4(link: &str) -> IpAddr {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", link])
        .output()
        .unwrap();
    let text = ok_stdout(&out, "ip addr show");
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("{link} has no IPv4 address: {text}"));
    cidr.split('/').next().unwrap().parse().unwrap()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A shell loop serving `hostname` on `port` to every connection.
fn hostname_server(port: u16) -> String {
    format!("exec nc -ll -p {port} -e hostname")
}

// ---- one pod: the namespaces its containers share ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_loopback_hostname_and_ipc() {
    let b = start_berthd("");
    let mut cri = Cri::new(&b).await;
    let pod = cri.run_pod("duo", &PodSpec::default()).await;
    // busybox has no ipcmk: the host's util-linux one (it needs only libc, which the image has).
    let ipcmk = vec![Mount {
        container_path: "/bin/ipcmk".into(),
        host_path: "/usr/bin/ipcmk".into(),
        readonly: true,
        ..Default::default()
    }];
    let a = cri
        .start(
            &pod,
            "a",
            "exec nc -ll -p 7001 -e echo from-a",
            NamespaceMode::Container,
            ipcmk,
        )
        .await;
    let c = cri
        .start(&pod, "c", "exec sleep 1000", NamespaceMode::Container, vec![])
        .await;

    // Loopback: c reaches a's listener on 127.0.0.1.
    let got = cri.nc_from(&c, "127.0.0.1".parse().unwrap(), 7001).await;
    assert_eq!(got, "from-a");

    // One hostname, the pod's.
    for id in [&a, &c] {
        assert_eq!(cri.exec_ok(id, &["hostname"]).await.trim(), "duo-host");
        assert_eq!(cri.exec_ok(id, &["cat", "/etc/hostname"]).await.trim(), "duo-host");
    }

    // IPC: a SysV shared memory segment made in a is listed in c.
    let made = cri.exec_ok(&a, &["ipcmk", "-M", "4096"]).await;
    let shmid = made
        .trim()
        .strip_prefix("Shared memory id: ")
        .unwrap_or_else(|| panic!("ipcmk said {made:?}"))
        .to_string();
    let listed = cri.exec_ok(&c, &["ipcs", "-m"]).await;
    let ids: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert!(
        ids.contains(&shmid.as_str()),
        "shmid {shmid} not in c's ipcs -m:\n{listed}"
    );

    // …and not in another pod (its own IPC, UTS and loopback).
    let other = cri.run_pod("solo", &PodSpec::default()).await;
    let o = cri
        .start(&other, "o", "exec sleep 1000", NamespaceMode::Container, vec![])
        .await;
    let listed = cri.exec_ok(&o, &["ipcs", "-m"]).await;
    let ids: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert!(
        !ids.contains(&shmid.as_str()),
        "another pod sees shmid {shmid}:\n{listed}"
    );
    assert_eq!(cri.exec_ok(&o, &["hostname"]).await.trim(), "solo-host");
    let (code, out, _) = cri.exec(&o, &["nc", "-w", "2", "127.0.0.1", "7001"]).await;
    assert!(
        code != 0 || out.trim().is_empty(),
        "another pod reached duo's loopback: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_namespace_pod_shows_its_containers_processes_a_private_one_does_not() {
    let b = start_berthd("");
    let mut cri = Cri::new(&b).await;
    for (mode, name) in [(NamespaceMode::Pod, "shared"), (NamespaceMode::Container, "private")] {
        let pod = cri
            .run_pod(
                name,
                &PodSpec {
                    pid: Some(mode),
                    ..Default::default()
                },
            )
            .await;
        let _a = cri.start(&pod, "a", "exec sleep 1234", mode, vec![]).await;
        let c = cri.start(&pod, "c", "exec sleep 1000", mode, vec![]).await;
        let (code, out, err) = cri.exec(&c, &["pgrep", "-f", "sleep 1234"]).await;
        let own_init = cri.exec_ok(&c, &["cat", "/proc/1/cmdline"]).await.replace('\0', " ");
        match mode {
            NamespaceMode::Pod => {
                assert_eq!(code, 0, "c does not see a's process in a shared-PID pod: {out}{err}");
                // PID 1 is the pod's infra process, not either container.
                assert!(!own_init.contains("sleep"), "PID 1 of a shared-PID pod: {own_init:?}");
            }
            _ => {
                assert_eq!(code, 1, "c sees a's process in a private-PID pod: {out}{err}");
                assert_eq!(own_init.trim(), "sleep 1000");
            }
        }
    }
}

// ---- pods on the node: pod to pod, to the gateway, hostPorts ----

/// Pod A reaches pod B's IP and a host listener on the gateway; the host reaches B through
/// 127.0.0.1:hostPort. Returns B's pod id and hostPort, B still running.
async fn check_connectivity(cri: &mut Cri<'_>, gateway: IpAddr) -> (String, u16) {
    let host_port = free_host_port();
    let pa = cri.run_pod("pa", &PodSpec::default()).await;
    let pb = cri
        .run_pod(
            "pb",
            &PodSpec {
                ports: vec![(host_port, 8080)],
                ..Default::default()
            },
        )
        .await;
    let a = cri
        .start(&pa, "a", "exec sleep 1000", NamespaceMode::Container, vec![])
        .await;
    let b = cri
        .start(&pb, "b", &hostname_server(8080), NamespaceMode::Container, vec![])
        .await;
    let (ip_a, ip_b) = (cri.pod_ip(&pa.0).await, cri.pod_ip(&pb.0).await);
    assert_ne!(ip_a, ip_b);

    // Pod to pod.
    assert_eq!(cri.nc_from(&a, ip_b, 8080).await, "pb-host");

    // Pod to the gateway: a listener on the host's bridge address.
    let listener = TcpListener::bind((gateway, 0)).unwrap();
    let gw_port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(b"from-the-host\n").unwrap();
        peer.ip()
    });
    assert_eq!(cri.nc_from(&a, gateway, gw_port).await, "from-the-host");
    assert_eq!(server.join().unwrap(), ip_a, "the gateway saw another source address");

    // hostPort from the host's loopback, from another pod, and from the pod itself (hairpin), the last two
    // through the host's bridge address.
    assert_eq!(
        host_read_retry(SocketAddr::from(([127, 0, 0, 1], host_port))),
        "pb-host"
    );
    assert_eq!(cri.nc_from(&a, gateway, host_port).await, "pb-host");
    assert_eq!(cri.nc_from(&b, gateway, host_port).await, "pb-host");
    (pb.0, host_port)
}

/// Removes the pod and checks its hostPort no longer answers.
async fn remove_and_check_host_port_gone(cri: &mut Cri<'_>, pod: &str, host_port: u16) {
    cri.remove_pod(pod).await;
    let after = host_read(SocketAddr::from(([127, 0, 0, 1], host_port)));
    assert!(
        !matches!(&after, Ok(s) if !s.is_empty()),
        "hostPort still answers: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_pods_reach_each_other_the_gateway_and_host_ports() {
    let b = start_berthd("");
    let mut cri = Cri::new(&b).await;
    let probe = cri.run_pod("probe", &PodSpec::default()).await;
    let gateway = link_ipv4(&b.bridge);
    cri.remove_pod(&probe.0).await;

    let (pb, host_port) = check_connectivity(&mut cri, gateway).await;
    let table = format!("berth_{}", b.bridge);
    let rules = run("nft", &["list", "table", "inet", &table]);
    assert!(
        rules.contains(&format!("berth-pod:{pb}")) && rules.contains(&format!("dport {host_port} ")),
        "no hostPort rule for the pod:\n{rules}"
    );
    remove_and_check_host_port_gone(&mut cri, &pb, host_port).await;
    let rules = run("nft", &["list", "table", "inet", &table]);
    assert!(!rules.contains(&pb), "hostPort rules left after teardown:\n{rules}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bridge_cidr_the_bridge_takes_the_kubelet_pod_cidr_and_keeps_it_across_restarts() {
    let mut b = start_berthd("");
    // The harness gives every berthd a CIDR: run this one again with `bridge.cidr` empty.
    b.stop_with(Signal::SIGTERM, Duration::from_secs(20));
    let config_path = b.dir.path().join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let line = config.lines().find(|l| l.starts_with("cidr = ")).unwrap().to_string();
    std::fs::write(&config_path, config.replace(&line, "cidr = \"\"")).unwrap();
    b.respawn("no-cidr.log").unwrap();
    let mut cri = Cri::new(&b).await;

    cri.assert_network_not_ready("UpdateRuntimeConfig").await;

    let (pod_cidr, prefix) = unique_pod_cidr(150);
    cri.set_pod_cidr(&pod_cidr).await;
    assert!(cri.network_condition().await.0);
    let pod = cri.run_pod("first", &PodSpec::default()).await;
    let ip = cri.pod_ip(&pod.0).await;
    assert!(ip.to_string().starts_with(&prefix), "pod IP {ip} is not in {pod_cidr}");
    assert_eq!(link_ipv4(&b.bridge).to_string(), format!("{prefix}1"));
    cri.pods.clear(); // kept running across the restart
    drop(cri);

    // Restarted, it has the CIDR before the kubelet sends one, and a different one later is ignored.
    b.stop_with(Signal::SIGTERM, Duration::from_secs(20));
    b.respawn("restarted.log").unwrap();
    let mut cri = Cri::new(&b).await;
    assert!(cri.network_condition().await.0);
    cri.set_pod_cidr("10.249.249.0/24").await;
    let second = cri.run_pod("second", &PodSpec::default()).await;
    let ip2 = cri.pod_ip(&second.0).await;
    assert!(
        ip2.to_string().starts_with(&prefix),
        "pod IP {ip2} is not in {pod_cidr}"
    );
    assert_ne!(ip, ip2);
    let first = cri.pod_ip(&pod.0).await;
    assert_eq!(first, ip, "the first pod's IP changed across the restart");
    cri.pods.push(pod.0);
}

// ---- many pod cycles leave nothing behind ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pod_cycles_leave_no_veth_pin_rule_or_address() {
    let mut b = start_berthd("");
    let table = format!("berth_{}", b.bridge);
    let state = b.state().display().to_string();
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut ips = HashSet::new();
    {
        let mut cri = Cri::new(&b).await;
        for i in 0..200u16 {
            // Every fourth pod maps a hostPort, so rules are made and removed too.
            let spec = PodSpec {
                ports: if i % 4 == 0 { vec![(41000 + i, 80)] } else { vec![] },
                ..Default::default()
            };
            let (id, _) = cri.run_pod(&format!("cycle{i}"), &spec).await;
            ips.insert(cri.pod_ip(&id).await);
            if i == 0 {
                // What the checks below look for exists while a pod runs.
                let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
                for kind in ["netns", "ipcns", "utsns"] {
                    assert!(
                        mounts.contains(&format!("{state}/{kind}/{id} ")),
                        "no {kind} pin:\n{mounts}"
                    );
                }
                let links = run("ip", &["-o", "link"]);
                assert!(links.contains(&format!(" master {} ", b.bridge)), "no veth:\n{links}");
                let rules = run("nft", &["list", "table", "inet", &table]);
                assert!(rules.contains(&format!("berth-pod:{id}")), "no hostPort rule:\n{rules}");
            }
            cri.remove_pod(&id).await;
            ids.push(id);
        }
    }
    let elapsed = started.elapsed();
    println!(
        "200 RunPodSandbox/StopPodSandbox/RemovePodSandbox cycles over CRI: {elapsed:?} ({} distinct pod IPs)",
        ips.len()
    );

    let links = run("ip", &["-o", "link"]);
    let ports: Vec<&str> = links
        .lines()
        .filter(|l| l.contains(&format!(" master {} ", b.bridge)))
        .collect();
    assert_eq!(ports, Vec::<&str>::new(), "veths left on the bridge");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let pins: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            ["netns", "ipcns", "utsns"]
                .iter()
                .any(|k| l.contains(&format!("{state}/{k}/")))
        })
        .collect();
    assert_eq!(pins, Vec::<&str>::new(), "namespace pins left mounted");
    for kind in ["netns", "ipcns", "utsns"] {
        let left: Vec<_> = std::fs::read_dir(b.state().join(kind))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "pin files left in {kind}: {left:?}");
    }
    // Other tests' tables may hold rules of their own pods: look for ours, and in our table for any.
    let ruleset = run("nft", &["list", "ruleset"]);
    assert!(ruleset.contains(&format!("table inet {table}")), "{ruleset}");
    let named: Vec<&String> = ids.iter().filter(|id| ruleset.contains(id.as_str())).collect();
    assert_eq!(named, Vec::<&String>::new(), "rules of removed pods left:\n{ruleset}");
    let rules = run("nft", &["list", "table", "inet", &table]);
    assert!(!rules.contains("berth-pod:"), "hostPort rules left:\n{rules}");

    // The store, read once berthd is stopped (redb has one writer).
    b.stop_with(Signal::SIGTERM, Duration::from_secs(20));
    let store = Store::open(&b.root().join("meta.redb")).unwrap();
    let allocations: Vec<(String, serde_json::Value)> = store.list(Table::IpAllocations).unwrap();
    assert_eq!(allocations, vec![], "IP allocations left in the store");
}

// ---- the CNI plugin with Debian's plugins ----

fn cni_config(dir: &Path) -> String {
    format!(
        "[plugins]\nnetwork = \"cni\"\n[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{DEBIAN_CNI}\"]\n",
        dir.join("net.d").display()
    )
}

/// Debian's bridge + host-local + portmap + loopback on this berthd's bridge name (so the harness removes
/// the bridge). host-local keeps its state in the test dir and has no range of its own: the kubelet's pod
/// CIDR, which berth passes as `ipRanges`, is its only one (host-local would add it to a configured one).
fn debian_conflist(b: &Berthd) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("berthit{}", &b.bridge[2..]),
        "plugins": [
            {"type": "bridge", "bridge": b.bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "capabilities": {"ipRanges": true},
             "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": b.dir.path().join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "loopback"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_with_debian_plugins_is_ready_once_configured_and_connects_pods_and_host_ports() {
    if !Path::new(DEBIAN_CNI).join("bridge").exists() {
        eprintln!("skipped: {DEBIAN_CNI} has no CNI plugins (Debian containernetworking-plugins)");
        return;
    }
    ensure_test_images();
    let tmp = tempfile::Builder::new().prefix("berth-cni").tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("net.d")).unwrap();
    let b = start_berthd(&cni_config(tmp.path()));
    let mut cri = Cri::new(&b).await;

    // No conflist yet: not ready, with the reason.
    cri.assert_network_not_ready("no CNI network config").await;

    // The conflist names no subnet: pods get addresses only if the kubelet's pod CIDR (UpdateRuntimeConfig)
    // reaches host-local.
    let (pod_cidr, prefix) = unique_pod_cidr(200);
    std::fs::write(
        tmp.path().join("net.d/10-berthit.conflist"),
        debian_conflist(&b).to_string(),
    )
    .unwrap();
    let (ready, reason, message) = cri.network_condition().await;
    assert!(ready, "{reason}: {message}");
    cri.set_pod_cidr(&pod_cidr).await;

    let probe = cri.run_pod("probe", &PodSpec::default()).await;
    let ip = cri.pod_ip(&probe.0).await;
    assert!(
        ip.to_string().starts_with(&prefix),
        "pod IP {ip} is not in the pod CIDR {pod_cidr}"
    );
    let gateway = link_ipv4(&b.bridge);
    assert_eq!(gateway.to_string(), format!("{prefix}1"));
    cri.remove_pod(&probe.0).await;

    let (pb, host_port) = check_connectivity(&mut cri, gateway).await;
    let nat = run("iptables-save", &["-t", "nat"]);
    assert!(
        nat.contains(&pb) && nat.contains(&format!("--dport {host_port} ")),
        "no portmap rule for the pod:\n{nat}"
    );
    remove_and_check_host_port_gone(&mut cri, &pb, host_port).await;
    let nat = run("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains(&pb), "portmap rules left after teardown:\n{nat}");
    let pods: Vec<String> = cri.pods.clone();
    for p in pods {
        cri.remove_pod(&p).await;
    }
    let held: Vec<_> = std::fs::read_dir(b.dir.path().join("ipam"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("10."))
        .collect();
    assert_eq!(held, Vec::<String>::new(), "host-local still holds addresses");
}
