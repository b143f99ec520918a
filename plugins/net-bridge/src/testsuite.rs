//! Test support shared by the network plugins' tests (feature `test-support`): pinned test namespaces,
//! unique names, small TCP/UDP servers and clients that run inside a namespace, and the connectivity checks
//! every network plugin must pass.
//!
//! Traffic goes only to loopback and to namespaces the test created. Every fixture removes what it made
//! when dropped, also when the test fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::plugin::Network;
use berth_core::plugin::network::{PodNetwork, PortMapping, Protocol};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A number that differs between tests of one run and between runs.
pub fn unique_number() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_mul(2_654_435_761) ^ nanos).wrapping_add(n.wrapping_mul(40_503))
}

/// `<prefix><hex>` of at most 15 characters (an interface name).
pub fn unique_name(prefix: &str) -> String {
    let mut s = format!("{prefix}{:08x}", unique_number());
    s.truncate(15);
    s
}

/// A /24 in 10.222.0.0/16, picked at random per call, not routed anywhere on the host; returns its CIDR.
pub fn unique_subnet() -> String {
    static TAKEN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..64 {
        let x = unique_number() % 250 + 3;
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if taken.contains(&x) {
            continue;
        }
        taken.push(x);
        let cidr = format!("10.222.{x}.0/24");
        let routes = Command::new("ip")
            .args(["-4", "route", "show", "10.222.0.0/16"])
            .output();
        if routes.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains(&format!("10.222.{x}."))) {
            return cidr;
        }
    }
    panic!("no free 10.222.x.0/24 for a test");
}

/// A TCP port free on the host's loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A network namespace pinned by a bind mount on a file of a temp dir, as the isolation plugin pins pods'.
pub struct TestNetns {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestNetns {
    pub fn new() -> std::io::Result<TestNetns> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("net");
        std::fs::File::create(&path)?;
        let target = path.clone();
        std::thread::spawn(move || -> nix::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .join()
        .expect("netns thread")
        .map_err(std::io::Error::from)?;
        Ok(TestNetns { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Unpinned and with no process left in it, the namespace and its links go away.
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

/// Runs `f` on a fresh thread inside the netns at `netns` (the host's when `None`).
pub fn in_netns<T: Send + 'static>(netns: Option<&Path>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(p) = netns {
            let f = std::fs::File::open(&p).expect("open netns");
            setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
        }
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A server on its own thread inside a namespace: TCP answers each connection with `<name> <peer addr>`;
/// UDP answers each datagram the same way. Stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn tcp(netns: Option<&Path>, bind: SocketAddr, name: &str) -> Server {
        let name = name.to_string();
        Server::spawn(netns, move |stop| {
            let listener = TcpListener::bind(bind).expect("bind the test server");
            listener.set_nonblocking(true).unwrap();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(format!("{name} {}", peer.ip()).as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }
        })
    }

    pub fn udp(netns: Option<&Path>, bind: SocketAddr, name: &str) -> Server {
        let name = name.to_string();
        Server::spawn(netns, move |stop| {
            let socket = UdpSocket::bind(bind).expect("bind the test server");
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                    }
                }
            }
        })
    }

    /// `make` binds (its panics reach the caller) and returns the serving loop.
    fn spawn<L: FnOnce() + Send + 'static>(
        netns: Option<&Path>,
        make: impl FnOnce(Arc<AtomicBool>) -> L + Send + 'static,
    ) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = netns.map(Path::to_path_buf);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Some(p) = netns {
                let f = std::fs::File::open(&p).expect("open netns");
                setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let serve = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make(flag)));
            let ok = serve.is_ok();
            let _ = tx.send(ok);
            if let Ok(serve) = serve {
                serve();
            }
        });
        assert!(rx.recv().unwrap_or(false), "the test server could not start");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `netns` (the host when `None`) and returns what the server said.
pub fn tcp_request(netns: Option<&Path>, to: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Sends one datagram from inside `netns` and returns the answer.
pub fn udp_request(netns: Option<&Path>, to: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 512];
        // UDP may lose the first datagram while neighbours resolve: a few tries.
        for _ in 0..6 {
            s.send_to(b"ping", to)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(std::io::ErrorKind::TimedOut.into())
    })
}

/// `ip -o link` of the host.
pub fn host_links() -> String {
    command_output("ip", &["-o", "link"])
}

/// `nft list ruleset` of the host.
pub fn nft_ruleset() -> String {
    command_output("nft", &["list", "ruleset"])
}

fn command_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("run a command");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes a host link when dropped (test bridges).
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Deletes an nftables table when dropped: `NftGuard("inet berth_x".into())`.
pub struct NftGuard(pub String);

impl Drop for NftGuard {
    fn drop(&mut self) {
        let _ = Command::new("nft").arg(format!("delete table {}", self.0)).output();
    }
}

/// A pod description for the plugin under test.
pub fn pod(id: &str, netns: &Path, ports: Vec<PortMapping>) -> PodNetwork {
    PodNetwork {
        pod_id: id.to_string(),
        name: format!("name-{id}"),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
        netns_path: netns.to_path_buf(),
        port_mappings: ports,
        ..Default::default()
    }
}

pub fn port(protocol: Protocol, host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        protocol,
        container_port,
        host_port,
        host_ip: String::new(),
    }
}

/// Two pods: TCP from pod A to every address of pod B, and to a listener of the host on the gateway.
pub async fn check_two_pods_and_gateway(net: &dyn Network, gateway: IpAddr) {
    let (a_ns, b_ns) = (TestNetns::new().unwrap(), TestNetns::new().unwrap());
    let (a_id, b_id) = (
        format!("pa{:08x}", unique_number()),
        format!("pb{:08x}", unique_number()),
    );
    let a = pod(&a_id, a_ns.path(), vec![]);
    let b = pod(&b_id, b_ns.path(), vec![]);
    let a_status = net.setup(&a).await.expect("setup pod A");
    let b_status = net.setup(&b).await.expect("setup pod B");
    assert_ne!(a_status.ips, b_status.ips);
    assert!(!b_status.ips.is_empty());
    {
        let _servers: Vec<Server> = b_status
            .ips
            .iter()
            .map(|ip| Server::tcp(Some(b_ns.path()), SocketAddr::new(*ip, 8080), "pod-b"))
            .collect();
        for ip in &b_status.ips {
            let answer = tcp_request(Some(a_ns.path()), SocketAddr::new(*ip, 8080))
                .unwrap_or_else(|e| panic!("pod A -> pod B {ip}: {e}"));
            let a_ip = a_status.ips.iter().find(|a| a.is_ipv4() == ip.is_ipv4()).unwrap();
            // Pod to pod is neither NATed nor masqueraded.
            assert_eq!(answer, format!("pod-b {a_ip}"));
        }
        let gw_port = free_port();
        let _host = Server::tcp(None, SocketAddr::new(gateway, gw_port), "host");
        let answer = tcp_request(Some(a_ns.path()), SocketAddr::new(gateway, gw_port))
            .unwrap_or_else(|e| panic!("pod A -> gateway {gateway}: {e}"));
        assert!(answer.starts_with("host "), "{answer}");
    }
    net.teardown(&a).await.expect("teardown A");
    net.teardown(&b).await.expect("teardown B");
}

/// hostPorts (TCP and UDP): 127.0.0.1:HOSTPORT on the host reaches the pod, so does the pod itself through
/// the gateway (hairpin), and nothing answers after teardown.
pub async fn check_host_ports(net: &dyn Network, gateway: IpAddr) {
    let ns = TestNetns::new().unwrap();
    let id = format!("ph{:08x}", unique_number());
    let (tcp_port, udp_port) = (free_port(), free_port());
    let p = pod(
        &id,
        ns.path(),
        vec![port(Protocol::Tcp, tcp_port, 8080), port(Protocol::Udp, udp_port, 5353)],
    );
    net.setup(&p).await.expect("setup");
    let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let _tcp = Server::tcp(Some(ns.path()), any, "pod");
    let _udp = Server::udp(Some(ns.path()), "0.0.0.0:5353".parse().unwrap(), "pod-udp");
    let local = |port| SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let answer = tcp_request(None, local(tcp_port)).expect("host 127.0.0.1:hostPort -> pod");
    assert!(answer.starts_with("pod "), "{answer}");
    let answer = udp_request(None, local(udp_port)).expect("host 127.0.0.1:hostPort/udp -> pod");
    assert!(answer.starts_with("pod-udp "), "{answer}");
    let answer = tcp_request(Some(ns.path()), SocketAddr::new(gateway, tcp_port)).expect("hairpin");
    assert!(answer.starts_with("pod "), "{answer}");
    net.teardown(&p).await.expect("teardown");
    // The pod's servers still listen: only the mapping is gone.
    let after = tcp_request(None, local(tcp_port));
    assert!(after.is_err(), "hostPort still answers after teardown: {after:?}");
    net.teardown(&p).await.expect("second teardown");
}
