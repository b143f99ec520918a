//! Test harness: a temp state dir, a busybox-static rootfs, the plugin, and guards that stop shims and remove
//! everything even when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use berth_core::plugin::isolation::{ContainerSpec, Isolation, PodIsolation, Rootfs};
use berth_isolation::LinuxIsolation;
use berth_isolation::protocol::Request;
use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, Spec};

pub const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");

/// The shim under test: `BERTH_SHIM` when set (e.g. the static build of `hack/build-shim.sh`), else cargo's.
pub fn shim() -> PathBuf {
    std::env::var_os("BERTH_SHIM").map_or_else(|| PathBuf::from(SHIM), PathBuf::from)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A rootfs made of Debian's busybox-static: /bin/busybox plus a symlink per applet.
pub fn make_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    root
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub rootfs: PathBuf,
    pub iso: LinuxIsolation,
    pods: std::sync::Mutex<Vec<String>>,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("berth-iso-")
            .tempdir_in("/tmp")
            .unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let rootfs = make_rootfs(dir.path());
        let iso = LinuxIsolation::new(state.clone(), shim(), true);
        Env {
            dir,
            state,
            rootfs,
            iso,
            pods: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A fresh plugin instance over the same state dir (a restarted berthd).
    pub fn reopen(&self) -> LinuxIsolation {
        LinuxIsolation::new(self.state.clone(), shim(), true)
    }

    pub fn track_pod(&self, pod: &str) {
        self.pods.lock().unwrap().push(pod.to_string());
    }

    pub async fn pod(&self, hostname: &str) -> (String, berth_core::plugin::isolation::PodNamespaces) {
        let pod_id = unique("pod");
        self.track_pod(&pod_id);
        let ns = self
            .iso
            .pin_namespaces(&PodIsolation {
                pod_id: pod_id.clone(),
                hostname: hostname.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        (pod_id, ns)
    }

    pub fn container(&self, pod_id: &str, spec: Spec) -> ContainerSpec {
        let id = unique("ctr");
        ContainerSpec {
            log_path: Some(self.dir.path().join("logs").join(format!("{id}.log"))),
            id,
            pod_id: pod_id.into(),
            spec,
            rootfs: Rootfs::Path(self.rootfs.clone()),
            stdin: false,
            stdin_once: false,
            tty: false,
            cgroup_procs: Vec::new(),
        }
    }

    pub fn shim_pid(&self, pod_id: &str) -> u32 {
        std::fs::read_to_string(self.state.join("pods").join(pod_id).join("shim.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn pod_socket(&self, pod_id: &str) -> PathBuf {
        self.state.join("pods").join(pod_id).join("shim.sock")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop every shim this test started (they kill their containers), then unpin.
        for pod in self.pods.lock().unwrap().iter() {
            let socket = self.state.join("pods").join(pod).join("shim.sock");
            let pid: Option<i32> = std::fs::read_to_string(self.state.join("pods").join(pod).join("shim.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let _ = berth_isolation::client::call(&socket, &Request::Shutdown, Duration::from_secs(5));
            if let Some(pid) = pid {
                for _ in 0..200 {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            berth_isolation::pins::unpin(&self.state, pod);
        }
    }
}

pub fn caps(list: &[Capability]) -> oci_spec::runtime::LinuxCapabilities {
    let set: std::collections::HashSet<Capability> = list.iter().copied().collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set.clone())
        .inheritable(set.clone())
        .ambient(set)
        .build()
        .unwrap()
}

/// The default spec (all namespaces new, runc's mounts, masked and read-only paths, 3 capabilities,
/// no_new_privs) running `args`, with the RuntimeDefault seccomp profile.
pub fn spec(args: &[&str], hostname: &str) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some(hostname.into()));
    let process = spec.process_mut().as_mut().unwrap();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    let bounding = 1u64 << 29 | 1 << 5 | 1 << 10;
    let profile = berth_isolation::seccomp::SeccompProfile::RuntimeDefault
        .resolve(bounding)
        .unwrap();
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_seccomp(profile);
    linux.set_resources(None);
    spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
    spec
}

/// Replaces the pod-level namespaces of `spec` with the pinned ones.
pub fn join_pod(spec: &mut Spec, ns: &berth_core::plugin::isolation::PodNamespaces) {
    use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut list: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    for n in list.iter_mut() {
        let path = match n.typ() {
            LinuxNamespaceType::Network => ns.net.clone(),
            LinuxNamespaceType::Ipc => ns.ipc.clone(),
            LinuxNamespaceType::Uts => ns.uts.clone(),
            LinuxNamespaceType::Pid => ns.pid.clone(),
            _ => None,
        };
        if path.is_some() {
            n.set_path(path);
        }
    }
    linux.set_namespaces(Some(list));
    spec.set_hostname(None);
}

pub async fn exec_out(iso: &LinuxIsolation, id: &str, args: &[&str]) -> berth_core::plugin::isolation::ExecOutput {
    let exec = berth_core::plugin::isolation::ExecSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    iso.exec_sync(id, &exec, Some(Duration::from_secs(20)), 1 << 20)
        .await
        .unwrap()
}

pub async fn sh(iso: &LinuxIsolation, id: &str, script: &str) -> (i32, String) {
    let out = exec_out(iso, id, &["/bin/sh", "-c", script]).await;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.exit_code, text)
}

/// The text of a CRI log, reassembled per stream, after checking every line's format.
pub fn read_log(path: &Path) -> (String, String, Vec<(String, char, usize)>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut out, mut err, mut pieces) = (String::new(), String::new(), Vec::new());
    for line in text.split_inclusive('\n') {
        let line = line.strip_suffix('\n').expect("every record ends with a newline");
        let mut parts = line.splitn(4, ' ');
        let ts = parts.next().unwrap();
        assert_eq!(ts.len(), 30, "timestamp {ts:?}");
        assert!(
            ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
            "timestamp {ts:?}"
        );
        let stream = parts.next().unwrap();
        let tag = parts.next().unwrap();
        let body = parts.next().unwrap_or("");
        let tag_char = match tag {
            "F" => 'F',
            "P" => 'P',
            other => panic!("bad tag {other:?} in {line:?}"),
        };
        let target = match stream {
            "stdout" => &mut out,
            "stderr" => &mut err,
            other => panic!("bad stream {other:?}"),
        };
        target.push_str(body);
        if tag_char == 'F' {
            target.push('\n');
        }
        pieces.push((stream.to_string(), tag_char, body.len()));
    }
    (out, err, pieces)
}

pub async fn wait_exit(iso: &LinuxIsolation, id: &str) -> berth_core::plugin::isolation::ExitStatus {
    iso.wait(id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("container exited in time")
}

pub fn host_mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(rest) = stat.rsplit(')').next() else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] == "Z" && fields[1] == parent.to_string() {
            out.push(pid);
        }
    }
    out
}
