//! Shared helpers of the end-to-end tests: start a real berthd on a private root/state/socket, find the
//! built binaries, run crictl, and talk CRI over gRPC.

pub mod leaks;
pub mod procfs;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_cri::api::image_service_client::ImageServiceClient;
use berth_cri::api::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

/// `target/<profile>/` of the running test binary (it lives in `target/<profile>/deps/`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// A workspace binary or library built by `cargo build` (hack/test.sh builds them all first).
pub fn built(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// xorshift64*: the tests need a replayable sequence (print the seed), not quality randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// A short random suffix for names of kernel objects (bridges ≤ 15 chars).
pub fn unique(prefix: &str) -> String {
    let n: u32 = std::process::id() ^ Instant::now().elapsed().subsec_nanos() ^ rand_u32();
    format!("{prefix}{:06x}", n & 0xff_ffff)
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_ne_bytes(b)
}

/// How to start a berthd for a test.
#[derive(Default)]
pub struct BerthdOptions {
    /// Extra TOML appended to the generated config.
    pub config: String,
    pub args: Vec<String>,
    /// Extra environment, e.g. `BERTH_FAILPOINT` (the first berthd only: `respawn` starts a clean one).
    pub env: Vec<(String, String)>,
}

/// A berthd child on a temp root, state and socket; stopped (SIGTERM, then SIGKILL) and cleaned on drop.
pub struct Berthd {
    pub child: Option<Child>,
    /// The bridge and cgroup parent this berthd was given, removed at drop.
    pub bridge: String,
    pub cgroup_parent: String,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Berthd {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The config every test berthd gets: private names for what it creates on the host (bridge, CIDR,
    /// cgroups), and the local registry as the mirror of every upstream registry the tests name.
    pub fn base_config(dir: &Path, bridge: &str, cgroup_parent: &str) -> String {
        let n = rand_u32();
        format!(
            "[bridge]\nbridge = \"{bridge}\"\ncidr = \"10.{}.{}.0/24\"\n[cgroups]\ndefault_parent = \"{cgroup_parent}\"\n{}",
            100 + (n % 100),
            (n >> 8) % 250,
            mirror_config(dir)
        )
    }

    /// Spawns berthd without waiting for it.
    pub fn spawn(opts: BerthdOptions) -> anyhow::Result<Berthd> {
        let dir = tempfile::Builder::new().prefix("berth-it").tempdir()?;
        let socket = dir.path().join("berth.sock");
        let config = dir.path().join("config.toml");
        let (bridge, cgroup_parent) = (unique("bt"), format!("/{}", unique("berth-it-")));
        // BERTH_SHIM runs the suite on another shim build (e.g. hack/build-shim.sh's static one).
        let shim = std::env::var("BERTH_SHIM")
            .map(|path| format!("[isolation]\nshim_path = {path:?}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "{}{shim}{}",
                Self::base_config(dir.path(), &bridge, &cgroup_parent),
                opts.config
            ),
        )?;
        let log = dir.path().join("berthd.log");
        let child = Command::new(built("berthd"))
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .args(&opts.args)
            .env("RUST_LOG", "info")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::OpenOptions::new().append(true).open(&log)?)
            .spawn()
            .context("spawn berthd")?;
        Ok(Berthd {
            child: Some(child),
            bridge,
            cgroup_parent,
            dir,
            socket,
            log,
        })
    }

    /// Starts berthd and waits until it answers CRI Version.
    pub fn start(opts: BerthdOptions) -> anyhow::Result<Berthd> {
        let mut b = Berthd::spawn(opts)?;
        b.wait_ready(Duration::from_secs(30))?;
        Ok(b)
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("berthd exited early ({status}):\n{}", self.log_text());
            }
            if self.socket.exists() && self.crictl(&["version"]).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("berthd did not get ready in {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs crictl against this berthd.
    pub fn crictl(&self, args: &[&str]) -> Output {
        Command::new(crictl_path())
            .arg("--runtime-endpoint")
            .arg(self.endpoint())
            .arg("--image-endpoint")
            .arg(self.endpoint())
            .arg("--timeout")
            .arg("60s")
            .args(args)
            .output()
            .expect("run crictl")
    }

    /// Waits for berthd to exit by itself (a failpoint), at most `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal and waits for the exit, at most `timeout`.
    pub fn stop_with(&mut self, signal: Signal, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        uds_channel(&self.socket).await
    }

    pub async fn runtime(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    pub async fn images(&self) -> anyhow::Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(status) = self.stop_with(Signal::SIGTERM, Duration::from_secs(20))
            && status.signal().is_some()
        {
            eprintln!("berthd was killed at teardown; its log:\n{}", self.log_text());
        }
        // Shims of pods the test did not remove outlive berthd by design: they are this test's, by state dir.
        kill_shims_of(&self.state());
        // What a berthd keeps across restarts by design: remove it with the test.
        let _ = Command::new(repo_root().join("hack/cleanup-host.sh"))
            .args([&self.bridge, &self.cgroup_parent])
            .status();
        // Pinned namespaces and rootfs mounts of pods the test did not remove.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.path().display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// SIGKILLs the shims a berthd started on `state`.
pub fn kill_shims_of(state: &Path) {
    for pid in leaks::shims_of(state) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

impl Berthd {
    /// What pods and containers hold on the host that is still there (see [`leaks::host_leaks`]). Empty once
    /// every pod is removed (the bridge, nft table and the cgroup parent itself stay by design).
    pub fn host_leaks(&self) -> Vec<String> {
        leaks::host_leaks(self)
    }

    /// Records left in the metadata store: pods, containers, reserved names, intents, IP allocations. berthd
    /// must be stopped (the store has one writer).
    pub fn store_leaks(&self) -> Vec<String> {
        assert!(self.child.is_none(), "store_leaks needs berthd stopped");
        leaks::store_leaks(self)
    }

    /// Stops berthd (SIGTERM) and asserts that nothing of any pod is left, on the host or in the store.
    pub fn assert_no_leaks(&mut self) {
        let host = self.host_leaks();
        assert!(host.is_empty(), "left on the host: {host:#?}");
        self.stop_with(Signal::SIGTERM, Duration::from_secs(20));
        let store = self.store_leaks();
        assert!(store.is_empty(), "left in the store: {store:#?}");
    }
}

/// A gRPC channel over a unix socket.
pub async fn uds_channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://berth.invalid")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// crictl from PATH or /usr/local/bin (hack/install-deps.sh puts it there).
pub fn crictl_path() -> PathBuf {
    let dirs = std::env::var("BERTH_TOOLS_BIN").unwrap_or_else(|_| "/usr/local/bin".into());
    let p = Path::new(&dirs).join("crictl");
    if p.exists() { p } else { PathBuf::from("crictl") }
}

/// stdout as text, panicking with both streams when the command failed.
pub fn ok_stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository root (integration/ is one level down).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

static IMAGES: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// Starts the local registry (127.0.0.1 only) and pushes the test images, once per test binary; both scripts
/// are idempotent and fast when everything is there already.
pub fn ensure_test_images() {
    let r = IMAGES.get_or_init(|| {
        for script in ["local-registry.sh start", "make-test-images.sh"] {
            let mut parts = script.split(' ');
            let path = repo_root().join("hack").join(parts.next().unwrap());
            let out = Command::new(&path)
                .args(parts)
                .output()
                .map_err(|e| format!("{script}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{script} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("test images unavailable: {e}");
    }
}

/// Config for a berthd that pulls the upstream names critest and the tests use from the local registry.
pub fn mirror_config(dir: &Path) -> String {
    let certs = dir.join("mirrors");
    let out = Command::new(repo_root().join("hack/mirror-config.sh"))
        .arg(&certs)
        .output()
        .expect("mirror-config.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("[registry]\nconfig_path = \"{}\"\n", certs.display())
}

impl Berthd {
    /// Starts a new berthd on this one's config, root, state and socket (after a kill, say) and waits until
    /// it answers; its log goes to `<dir>/<log_name>`.
    pub fn respawn(&mut self, log_name: &str) -> anyhow::Result<()> {
        self.log = self.dir.path().join(log_name);
        let log = std::fs::File::create(&self.log)?;
        self.child = Some(
            Command::new(built("berthd"))
                .arg("--config")
                .arg(self.dir.path().join("config.toml"))
                .arg("--root")
                .arg(self.root())
                .arg("--state")
                .arg(self.state())
                .arg("--socket")
                .arg(&self.socket)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        self.wait_ready(Duration::from_secs(30))
    }
}

/// CRI configs as kubelet sends them, for tests that speak gRPC.
pub mod cri {
    use berth_cri::api::runtime_service_client::RuntimeServiceClient;
    use berth_cri::api::{
        Container, ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ExecSyncResponse,
        ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption,
        PodSandbox, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
        StartContainerRequest, StopPodSandboxRequest,
    };
    use tonic::Status;
    use tonic::transport::Channel;

    pub type Runtime = RuntimeServiceClient<Channel>;

    pub async fn run_pod(rt: &mut Runtime, config: &PodSandboxConfig) -> Result<String, Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        Ok(rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id)
    }

    pub async fn create(
        rt: &mut Runtime,
        pod: &str,
        sandbox: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        };
        Ok(rt.create_container(req).await?.into_inner().container_id)
    }

    pub async fn start(rt: &mut Runtime, id: &str) -> Result<(), Status> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        rt.start_container(req).await.map(drop)
    }

    /// RunPodSandbox + CreateContainer + StartContainer; returns (pod id, container id).
    pub async fn run_pod_with(
        mut rt: Runtime,
        sandbox: PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<(String, String), Status> {
        let pod = run_pod(&mut rt, &sandbox).await?;
        let id = create(&mut rt, &pod, &sandbox, config).await?;
        start(&mut rt, &id).await?;
        Ok((pod, id))
    }

    pub async fn pods(rt: &mut Runtime) -> Vec<PodSandbox> {
        let req = ListPodSandboxRequest { filter: None };
        rt.list_pod_sandbox(req)
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    pub async fn containers(rt: &mut Runtime) -> Vec<Container> {
        let req = ListContainersRequest { filter: None };
        rt.list_containers(req)
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    pub async fn remove_pod(rt: &mut Runtime, id: &str) {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        rt.remove_pod_sandbox(req).await.expect("RemovePodSandbox");
    }

    /// Stops and removes every pod.
    pub async fn remove_all_pods(rt: &mut Runtime) {
        for p in pods(rt).await {
            let req = StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            };
            rt.stop_pod_sandbox(req).await.expect("StopPodSandbox");
            remove_pod(rt, &p.id).await;
        }
    }

    /// ExecSync of `sh -c script`.
    pub async fn exec(rt: &mut Runtime, id: &str, script: &str) -> ExecSyncResponse {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 30,
        };
        rt.exec_sync(req).await.expect("ExecSync").into_inner()
    }

    /// The default test image.
    pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

    /// kubelet's default: one PID namespace per container, the pod's network and IPC.
    fn namespaces() -> NamespaceOption {
        NamespaceOption {
            pid: NamespaceMode::Container as i32,
            ..Default::default()
        }
    }

    /// A pod named `name` (uid `<name>-uid`) logging under `log_root/<name>`.
    pub fn pod(name: &str, log_root: &std::path::Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_root.join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A busybox container running `sh -c script`.
    pub fn container(name: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
