//! The latency and memory driver of `hack/bench.sh`: talks CRI to one runtime (berthd or containerd) over its
//! unix socket and writes one JSON file of raw samples, which `hack/bench-report.py` turns into the table.
//!
//! A gRPC client in-process rather than timed `crictl` calls: crictl costs a Go process start, a config read
//! and a fresh connection per call (tens of ms, about as much as the operations measured), while this client
//! keeps one HTTP/2 connection open, as kubelet does, and times only the RPC.
//!
//! What it measures, in this order (the runtime should have just started and must have no pods):
//! 1. the daemon's memory idle (then the pods' images are pulled, untimed);
//! 2. `--pods` pods one after the other, each with one container: RunPodSandbox latency (pod ready) and
//!    CreateContainer + StartContainer latency; daemon and shim memory sampled at a few pod counts while they
//!    stay up; then all are removed;
//! 3. `--rounds` rounds of `--concurrent` pods started at once, the same two latencies, removed after each round;
//! 4. exec probes: `--probe-pods` pods of one container each, ExecSync `true` in every container every second
//!    for `--probe-secs` seconds (kubelet's exec liveness probe); the CPU time the daemon and the shims spent
//!    on them (the shims' reaped children included: berth's exec processes, containerd's `runc exec`) and the
//!    ExecSync latencies;
//! 5. a cold pull (+ unpack) of `--pull-image`: wall time, and the daemon's peak RSS during it (`VmHWM` after
//!    resetting it through `/proc/PID/clear_refs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_cri::api::image_service_client::ImageServiceClient;
use berth_cri::api::runtime_service_client::RuntimeServiceClient;
use berth_cri::api::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    PodSandboxConfig, PodSandboxMetadata, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use berth_integration::procfs::{self, Cpu};
use clap::Parser;
use serde_json::{Value, json};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "CRI latency and memory driver of hack/bench.sh")]
struct Args {
    /// The runtime's CRI socket.
    #[arg(long)]
    socket: PathBuf,
    /// The daemon's pid (berthd, containerd).
    #[arg(long)]
    daemon_pid: i32,
    /// A string every per-pod shim has in its command line and nothing else does but the daemon (berth-shim:
    /// `--state DIR`; containerd-shim-runc-v2: `-address SOCKET`).
    #[arg(long, allow_hyphen_values = true)]
    shim_match: String,
    /// The image of the pods' containers (pulled untimed before the pods).
    #[arg(long)]
    image: String,
    /// More images pulled untimed before the pods (containerd's pause image).
    #[arg(long, value_delimiter = ',')]
    prepull: Vec<String>,
    /// The image of the cold pull; empty skips that step.
    #[arg(long, default_value = "")]
    pull_image: String,
    /// Pods started one after the other.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods started at once per round.
    #[arg(long, default_value_t = 20)]
    concurrent: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pod counts at which memory is sampled during the sequential run (the last pod count always is).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,25,50")]
    mem_at: Vec<usize>,
    /// Pods (one container each) of the exec probe phase; 0 skips it.
    #[arg(long, default_value_t = 20)]
    probe_pods: usize,
    /// Seconds of probing: one ExecSync `true` per container per second.
    #[arg(long, default_value_t = 30)]
    probe_secs: u64,
    /// Cgroup parent of the pods (each pod gets `<parent>/pod<N>`).
    #[arg(long)]
    cgroup_parent: String,
    /// Where the pods' log directories go.
    #[arg(long)]
    log_dir: PathBuf,
    /// Per-RPC timeout, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[arg(long)]
    out: PathBuf,
}

struct Cri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    timeout: Duration,
}

/// One pod of the run: its ids and its two latencies.
struct Started {
    pod: String,
    container: String,
    pod_ms: f64,
    container_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Cri {
    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => bail!("{what}: {} ({:?})", s.message(), s.code()),
            Err(_) => bail!("{what}: no answer in {:?}", self.timeout),
        }
    }

    async fn pull(&self, image: &str) -> anyhow::Result<Duration> {
        let mut img = self.img.clone();
        let t = Instant::now();
        self.call(
            &format!("PullImage {image}"),
            img.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await?;
        Ok(t.elapsed())
    }

    /// RunPodSandbox, then CreateContainer + StartContainer of one `sleep` container.
    async fn start_pod(&self, args: &Args, tag: &str) -> anyhow::Result<Started> {
        let mut rt = self.rt.clone();
        let logs = args.log_dir.join(tag);
        std::fs::create_dir_all(&logs)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("bench-{tag}"),
                uid: format!("uid-bench-{tag}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: format!("bench-{tag}"),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod-{tag}", args.cgroup_parent),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = Instant::now();
        let pod = self
            .call(
                "RunPodSandbox",
                rt.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                }),
            )
            .await?
            .pod_sandbox_id;
        let pod_ms = ms(t.elapsed());
        let t = Instant::now();
        let container = self
            .call(
                "CreateContainer",
                rt.create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: "sleep".into(),
                            attempt: 0,
                        }),
                        image: Some(ImageSpec {
                            image: args.image.clone(),
                            ..Default::default()
                        }),
                        command: vec!["sleep".into(), "3600".into()],
                        log_path: "sleep.log".into(),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config),
                }),
            )
            .await?
            .container_id;
        self.call(
            "StartContainer",
            rt.start_container(StartContainerRequest {
                container_id: container.clone(),
            }),
        )
        .await?;
        Ok(Started {
            pod,
            container,
            pod_ms,
            container_ms: ms(t.elapsed()),
        })
    }

    /// ExecSync `true`, as an exec liveness probe; its latency.
    async fn probe(&self, container: &str) -> anyhow::Result<Duration> {
        let mut rt = self.rt.clone();
        let t = Instant::now();
        let r = self
            .call(
                "ExecSync",
                rt.exec_sync(ExecSyncRequest {
                    container_id: container.into(),
                    cmd: vec!["true".into()],
                    timeout: 10,
                }),
            )
            .await?;
        if r.exit_code != 0 {
            bail!("ExecSync true exited {}", r.exit_code);
        }
        Ok(t.elapsed())
    }

    /// StopContainer (no grace: `sleep` as pid 1 ignores SIGTERM), StopPodSandbox, RemovePodSandbox.
    async fn remove_pod(&self, s: &Started) -> anyhow::Result<()> {
        let mut rt = self.rt.clone();
        self.call(
            "StopContainer",
            rt.stop_container(StopContainerRequest {
                container_id: s.container.clone(),
                timeout: 0,
            }),
        )
        .await?;
        self.call(
            "StopPodSandbox",
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: s.pod.clone(),
            }),
        )
        .await?;
        self.call(
            "RemovePodSandbox",
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: s.pod.clone(),
            }),
        )
        .await?;
        Ok(())
    }
}

/// Memory figures of one process, in kB.
#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    anon: u64,
    hwm: u64,
}

fn kb_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mem_of(pid: i32) -> anyhow::Result<Mem> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid} is gone"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Ok(Mem {
        rss: kb_field(&status, "VmRSS"),
        hwm: kb_field(&status, "VmHWM"),
        anon: kb_field(&status, "RssAnon"),
        pss: kb_field(&rollup, "Pss"),
    })
}

fn mem_json(m: Mem) -> Value {
    json!({ "rss_kb": m.rss, "pss_kb": m.pss, "anon_kb": m.anon })
}

/// Every process: pid → (ppid, comm, cmdline joined by spaces).
fn processes() -> HashMap<i32, (i32, String, String)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses: split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c.to_string()).unwrap_or_default();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        out.insert(pid, (ppid, comm, cmdline));
    }
    out
}

/// The per-pod shims among `procs`.
fn shims(args: &Args, procs: &HashMap<i32, (i32, String, String)>) -> Vec<i32> {
    let me = std::process::id() as i32;
    procs
        .iter()
        .filter(|(pid, (_, _, cmd))| **pid != args.daemon_pid && **pid != me && cmd.contains(&args.shim_match))
        .map(|(pid, _)| *pid)
        .collect()
}

/// The daemon, its per-pod shims and the infra (`pause`) processes those shims run.
fn sample_memory(args: &Args, pods: usize) -> anyhow::Result<Value> {
    let procs = processes();
    let shims = shims(args, &procs);
    let infra: Vec<i32> = procs
        .iter()
        .filter(|(_, (ppid, comm, _))| comm == "pause" && shims.contains(ppid))
        .map(|(pid, _)| *pid)
        .collect();
    let list = |pids: &[i32]| -> Vec<Value> { pids.iter().filter_map(|p| mem_of(*p).ok()).map(mem_json).collect() };
    Ok(json!({
        "pods": pods,
        "daemon": mem_json(mem_of(args.daemon_pid).context("the daemon died")?),
        "shims": list(&shims),
        "infra": list(&infra),
    }))
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let channel = berth_integration::uds_channel(&args.socket)
        .await
        .with_context(|| format!("connecting to {}", args.socket.display()))?;
    let cri = Cri {
        rt: RuntimeServiceClient::new(channel.clone()),
        img: ImageServiceClient::new(channel),
        timeout: Duration::from_secs(args.timeout),
    };
    let mut out = serde_json::Map::new();
    out.insert("idle".into(), sample_memory(&args, 0)?);

    for image in args.prepull.iter().chain([&args.image]).filter(|i| !i.is_empty()) {
        cri.pull(image).await?;
    }

    // Sequential pods, memory sampled while they run.
    let mut started = Vec::with_capacity(args.pods);
    let mut memory = vec![out["idle"].clone()];
    for i in 0..args.pods {
        started.push(
            cri.start_pod(&args, &format!("s{i}"))
                .await
                .with_context(|| format!("sequential pod {i}"))?,
        );
        let n = i + 1;
        if args.mem_at.contains(&n) || n == args.pods {
            // Let the shims settle (a just-started shim may still be growing its buffers).
            tokio::time::sleep(Duration::from_millis(500)).await;
            memory.push(sample_memory(&args, n)?);
        }
    }
    eprintln!("[bench] {} sequential pods up", args.pods);
    let sequential: Vec<Value> = started
        .iter()
        .map(|s| json!({ "pod_ms": s.pod_ms, "container_ms": s.container_ms }))
        .collect();
    for s in &started {
        cri.remove_pod(s).await?;
    }
    out.insert("sequential".into(), Value::Array(sequential));
    out.insert("memory".into(), Value::Array(memory));

    // Concurrent rounds.
    let cri = Arc::new(cri);
    let args = Arc::new(args);
    let mut concurrent = Vec::new();
    for r in 0..args.rounds {
        let tasks: Vec<_> = (0..args.concurrent)
            .map(|i| {
                let (cri, args) = (cri.clone(), args.clone());
                tokio::spawn(async move { cri.start_pod(&args, &format!("c{r}-{i}")).await })
            })
            .collect();
        let mut round = Vec::new();
        let mut first_err = None;
        for t in tasks {
            match t.await? {
                Ok(s) => round.push(s),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        let removals: Vec<_> = round
            .into_iter()
            .map(|s| {
                let cri = cri.clone();
                tokio::spawn(async move {
                    cri.remove_pod(&s).await?;
                    Ok::<_, anyhow::Error>(json!({ "pod_ms": s.pod_ms, "container_ms": s.container_ms }))
                })
            })
            .collect();
        for t in removals {
            concurrent.push(t.await??);
        }
        if let Some(e) = first_err {
            return Err(e.context(format!("concurrent round {r}")));
        }
    }
    eprintln!(
        "[bench] {} rounds of {} concurrent pods done",
        args.rounds, args.concurrent
    );
    out.insert("concurrent".into(), Value::Array(concurrent));
    out.insert("concurrency".into(), json!(args.concurrent));

    if args.probe_pods > 0 {
        out.insert("probes".into(), probe_phase(&cri, &args).await?);
    }

    // Last, so that what the pull leaves in the daemon's heap does not count as memory of the pods.
    if !args.pull_image.is_empty() {
        // "5" resets the peak RSS (VmHWM) to the current RSS (proc(5), Linux ≥ 4.0).
        std::fs::write(format!("/proc/{}/clear_refs", args.daemon_pid), "5").context("resetting the daemon's VmHWM")?;
        let before = mem_of(args.daemon_pid)?.rss;
        let took = cri.pull(&args.pull_image).await?;
        let m = mem_of(args.daemon_pid)?;
        eprintln!(
            "[bench] cold pull of {}: {:.0} ms, daemon peak RSS {} kB",
            args.pull_image,
            ms(took),
            m.hwm
        );
        out.insert(
            "pull".into(),
            json!({ "image": args.pull_image, "ms": ms(took), "peak_rss_kb": m.hwm, "rss_before_kb": before, "rss_after_kb": m.rss }),
        );
    }
    Ok(Value::Object(out))
}

/// CPU time of the daemon and of the shims (each with its reaped children).
fn runtime_cpu(args: &Args, shims: &[i32]) -> anyhow::Result<(Cpu, Cpu)> {
    let daemon = procfs::cpu(args.daemon_pid).context("the daemon died")?;
    Ok((daemon, shims.iter().filter_map(|p| procfs::cpu(*p)).sum()))
}

/// `--probe-pods` pods, each container probed with ExecSync `true` every second for `--probe-secs`.
async fn probe_phase(cri: &Arc<Cri>, args: &Arc<Args>) -> anyhow::Result<Value> {
    let mut pods = Vec::with_capacity(args.probe_pods);
    for i in 0..args.probe_pods {
        pods.push(
            cri.start_pod(args, &format!("p{i}"))
                .await
                .with_context(|| format!("probe pod {i}"))?,
        );
    }
    // A first exec per container outside the measurement (connections, first-use allocations).
    for s in &pods {
        cri.probe(&s.container).await?;
    }
    let shims = shims(args, &processes());
    let (daemon0, shims0) = runtime_cpu(args, &shims)?;
    let started = Instant::now();
    let n = pods.len();
    let tasks: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let (cri, args, id) = (cri.clone(), args.clone(), s.container.clone());
            tokio::spawn(async move {
                // Spread over the second, as kubelet's probe workers are.
                tokio::time::sleep(Duration::from_millis((k * 1000 / n) as u64)).await;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut lat = Vec::new();
                for _ in 0..args.probe_secs {
                    tick.tick().await;
                    lat.push(ms(cri.probe(&id).await?));
                }
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await? {
            Ok(l) => lat.extend(l),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let wall = started.elapsed();
    let (daemon1, shims1) = runtime_cpu(args, &shims)?;
    for s in &pods {
        cri.remove_pod(s).await?;
    }
    if let Some(e) = first_err {
        return Err(e.context("exec probes"));
    }
    let secs = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64();
    let (daemon_s, shims_s) = (
        secs(daemon1.total(), daemon0.total()),
        secs(shims1.total(), shims0.total()),
    );
    eprintln!(
        "[bench] {} exec probes in {:.1} s: daemon {daemon_s:.2} CPU-s, shims {shims_s:.2} CPU-s",
        lat.len(),
        wall.as_secs_f64()
    );
    let v = json!({
        "pods": n, "secs": args.probe_secs, "probes": lat.len(), "wall_s": wall.as_secs_f64(),
        "daemon_cpu_s": daemon_s, "shims_cpu_s": shims_s,
        "shims_children_cpu_s": secs(shims1.children, shims0.children),
        "exec_ms": lat,
    });
    Ok(v)
}

fn write(path: &Path, v: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let out = args.out.clone();
    match run(args).await.and_then(|v| write(&out, &v)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line, without a backtrace: the reason is what bench.sh shows.
            eprintln!("berth-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
