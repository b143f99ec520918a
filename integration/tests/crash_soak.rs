//! Crash soak: random pod, container, exec and image operations against a real berthd that is SIGKILLed at
//! random moments (mid-operation) and restarted. After every restart each container that was running before
//! the kill must still run and answer exec; operations not hit by a kill must succeed. At the end every pod
//! and image is removed, berthd shuts down cleanly, and nothing may be left: mounts, namespace pins, veths,
//! nft rules, cgroups, shims, zombies, store records (pods, containers, names, IPs, intents), blobs, snapshots.
//!
//! `cargo test` runs 200 operations; `hack/soak.sh` runs it for a duration: `BERTH_SOAK_SECS=1800`.
//! `BERTH_SOAK_OPS` sets the count, `BERTH_SOAK_SEED` replays a run, `BERTH_SOAK_REPORT` writes a JSON report.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_cri::api::runtime_service_client::RuntimeServiceClient;
use berth_cri::api::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig, ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use berth_integration::leaks;
use berth_integration::{Berthd, BerthdOptions, Rng, ensure_test_images, unique};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// Images only the pull/remove operations touch (no container uses them).
const SPARE_IMAGES: [&str; 3] = [
    "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-3:latest",
];
const MAX_PODS: usize = 5;
const MAX_CONTAINERS: usize = 8;

#[derive(Clone, Debug)]
enum Op {
    RunPod(String),
    CreateStart {
        pod: String,
        name: String,
        script: &'static str,
    },
    Exec(String),
    StopContainer(String),
    RemoveContainer(String),
    StopPod(String),
    RemovePod(String),
    Pull(&'static str),
    RemoveImage(&'static str),
}

/// What berthd reports, refreshed after every operation from List calls.
#[derive(Default)]
struct Model {
    ready_pods: Vec<String>,
    pods: Vec<String>,
    /// container id → (pod id, state)
    containers: BTreeMap<String, (String, i32)>,
}

impl Model {
    fn running(&self) -> Vec<String> {
        self.containers
            .iter()
            .filter(|(_, (_, s))| *s == ContainerState::ContainerRunning as i32)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn all_containers(&self) -> Vec<String> {
        self.containers.keys().cloned().collect()
    }
}

/// The log of every berthd of the run (one per restart), in the test's directory.
fn daemon_logs(b: &Berthd) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(b.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("berthd"))
        .map(|e| e.path())
        .collect()
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn pod_config(dir: &std::path::Path, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: unique("soak-uid-"),
            namespace: "soak".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: dir.join("logs").join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn choose(rng: &mut Rng, m: &Model, n: u64) -> Op {
    loop {
        let op = match rng.below(100) {
            0..=14 if m.pods.len() < MAX_PODS => Op::RunPod(format!("soak-{n}")),
            15..=39 if m.containers.len() < MAX_CONTAINERS && !m.ready_pods.is_empty() => Op::CreateStart {
                pod: rng.pick(&m.ready_pods).unwrap().clone(),
                name: format!("c-{n}"),
                script: if rng.below(4) == 0 {
                    "echo done; exit 3"
                } else {
                    "echo up; exec sleep 3600"
                },
            },
            40..=54 if !m.running().is_empty() => Op::Exec(rng.pick(&m.running()).unwrap().clone()),
            55..=62 if !m.running().is_empty() => Op::StopContainer(rng.pick(&m.running()).unwrap().clone()),
            63..=72 if !m.containers.is_empty() => Op::RemoveContainer(rng.pick(&m.all_containers()).unwrap().clone()),
            73..=77 if !m.ready_pods.is_empty() => Op::StopPod(rng.pick(&m.ready_pods).unwrap().clone()),
            78..=87 if !m.pods.is_empty() => Op::RemovePod(rng.pick(&m.pods).unwrap().clone()),
            88..=93 => Op::Pull(SPARE_IMAGES[rng.below(SPARE_IMAGES.len())]),
            94..=99 => Op::RemoveImage(SPARE_IMAGES[rng.below(SPARE_IMAGES.len())]),
            _ => continue,
        };
        return op;
    }
}

async fn run_op(
    mut rt: RuntimeServiceClient<Channel>,
    mut im: berth_cri::api::image_service_client::ImageServiceClient<Channel>,
    dir: std::path::PathBuf,
    op: Op,
) -> Result<(), tonic::Status> {
    match op {
        Op::RunPod(name) => {
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&dir, &name)),
                runtime_handler: String::new(),
            })
            .await?;
        }
        Op::CreateStart { pod, name, script } => {
            let sandbox = rt
                .pod_sandbox_status(berth_cri::api::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            let meta = sandbox.metadata.unwrap_or_default();
            let mut cfg = pod_config(&dir, &meta.name);
            cfg.metadata = Some(meta);
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata { name, attempt: 0 }),
                        image: Some(ImageSpec {
                            image: BUSYBOX.into(),
                            ..Default::default()
                        }),
                        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
                        log_path: format!("{}.log", unique("c")),
                        ..Default::default()
                    }),
                    sandbox_config: Some(cfg),
                })
                .await?
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest { container_id: id }).await?;
        }
        Op::Exec(id) => {
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["/bin/sh".into(), "-c".into(), "echo ok".into()],
                    timeout: 20,
                })
                .await?
                .into_inner();
            // The container may have exited on its own in between (the short-lived ones): then exec fails
            // with an error status, which is fine; a finished exec must have worked.
            if r.exit_code != 0 || r.stdout != b"ok\n" {
                return Err(tonic::Status::internal(format!(
                    "exec in {id}: exit {} stdout {:?} stderr {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                )));
            }
        }
        Op::StopContainer(id) => {
            rt.stop_container(StopContainerRequest {
                container_id: id,
                timeout: 2,
            })
            .await?;
        }
        Op::RemoveContainer(id) => {
            rt.remove_container(RemoveContainerRequest { container_id: id }).await?;
        }
        Op::StopPod(id) => {
            rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await?;
        }
        Op::RemovePod(id) => {
            rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await?;
        }
        Op::Pull(image) => {
            im.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        }
        Op::RemoveImage(image) => {
            im.remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
            })
            .await?;
        }
    }
    Ok(())
}

async fn refresh(rt: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<Model> {
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    let ctrs = rt
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    Ok(Model {
        ready_pods: pods
            .iter()
            .filter(|p| p.state == PodSandboxState::SandboxReady as i32)
            .map(|p| p.id.clone())
            .collect(),
        pods: pods.iter().map(|p| p.id.clone()).collect(),
        containers: ctrs.into_iter().map(|c| (c.id, (c.pod_sandbox_id, c.state))).collect(),
    })
}

/// The container an operation works on, if any: it may legitimately change state under a kill.
fn target(op: &Op, m: &Model) -> BTreeSet<String> {
    match op {
        Op::Exec(id) | Op::StopContainer(id) | Op::RemoveContainer(id) => [id.clone()].into(),
        Op::StopPod(p) | Op::RemovePod(p) => m
            .containers
            .iter()
            .filter(|(_, (pod, _))| pod == p)
            .map(|(id, _)| id.clone())
            .collect(),
        _ => BTreeSet::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_survives_random_kills_without_leaks() {
    ensure_test_images();
    let secs = env_num("BERTH_SOAK_SECS");
    let ops = env_num("BERTH_SOAK_OPS").unwrap_or(if secs.is_some() { u64::MAX } else { 200 });
    let seed = env_num("BERTH_SOAK_SEED").unwrap_or_else(|| {
        u64::from(std::process::id()) << 32 | u64::from(Instant::now().elapsed().subsec_nanos()) | 1
    });
    eprintln!("soak: seed {seed} (replay with BERTH_SOAK_SEED={seed})");
    let mut rng = Rng(seed);
    let deadline = secs.map(|s| Instant::now() + Duration::from_secs(s));

    let mut b = Berthd::start(BerthdOptions::default()).unwrap();
    let dir = b.dir.path().to_path_buf();
    let mut rt = b.runtime().await.unwrap();
    let mut im = b.images().await.unwrap();
    im.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    let (mut done, mut kills, mut restarts_checked) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let mut model = refresh(&mut rt).await.unwrap();
    let started = Instant::now();
    while done < ops && deadline.is_none_or(|d| Instant::now() < d) && failures.len() < 5 {
        let op = choose(&mut rng, &model, done);
        done += 1;
        let task = tokio::spawn(run_op(rt.clone(), im.clone(), dir.clone(), op.clone()));
        if rng.below(100) < 15 {
            // Kill mid-operation: after a random delay within the operation's usual span.
            let hit = target(&op, &model);
            let must_survive: BTreeSet<String> = model
                .running()
                .into_iter()
                .collect::<BTreeSet<_>>()
                .difference(&hit)
                .cloned()
                .collect();
            tokio::time::sleep(Duration::from_millis(rng.below(60) as u64)).await;
            b.stop_with(Signal::SIGKILL, Duration::from_secs(10));
            kills += 1;
            let _ = task.await;
            b.respawn(&format!("berthd-{kills}.log"))
                .unwrap_or_else(|e| panic!("restart after kill {kills}: {e}"));
            rt = b.runtime().await.unwrap();
            im = b.images().await.unwrap();
            model = refresh(&mut rt).await.unwrap();
            for id in &must_survive {
                let state = model.containers.get(id).map(|(_, s)| *s);
                // A short-lived container may have finished on its own; a long-running one must still run.
                let status = rt
                    .container_status(ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await
                    .map(|r| r.into_inner().status.unwrap_or_default());
                match status {
                    Ok(s) if s.state == ContainerState::ContainerRunning as i32 => {}
                    Ok(s) if s.exit_code == 3 => {}
                    other => failures.push(format!(
                        "after kill {kills} during {op:?}: container {id} was running, now {state:?} {other:?}"
                    )),
                }
            }
            // Not the container the killed operation was stopping: its stop may still be landing.
            let untouched: Vec<String> = model.running().into_iter().filter(|c| !hit.contains(c)).collect();
            if let Some(id) = rng.pick(&untouched).cloned() {
                if let Err(e) = run_op(rt.clone(), im.clone(), dir.clone(), Op::Exec(id.clone())).await {
                    // Unless it is a short-lived container that finished just now (its exit is recorded a
                    // moment after the shim refuses the exec).
                    let mut finished = false;
                    for _ in 0..20 {
                        finished = rt
                            .container_status(ContainerStatusRequest {
                                container_id: id.clone(),
                                verbose: false,
                            })
                            .await
                            .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.exit_code == 3));
                        if finished {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if !finished || e.code() == tonic::Code::Internal {
                        failures.push(format!("after kill {kills}: exec in surviving container {id}: {e}"));
                    }
                }
                restarts_checked += 1;
            }
        } else {
            match task.await.unwrap() {
                Ok(()) => {}
                // A short-lived container can exit between the model refresh and the exec or stop.
                Err(e) if matches!(op, Op::Exec(_)) && e.code() != tonic::Code::Internal => {}
                Err(e) => failures.push(format!("{op:?} failed without a kill: {e}")),
            }
            model = refresh(&mut rt).await.unwrap();
        }
        // A child that exited this instant is a zombie until the shim's loop reaps it: only a lasting one counts.
        let zombies = leaks::zombies_of_shims(&b);
        if !zombies.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let lasting: Vec<_> = leaks::zombies_of_shims(&b)
                .into_iter()
                .filter(|z| zombies.contains(z))
                .collect();
            if !lasting.is_empty() {
                failures.push(format!("after {op:?}: {lasting:?}"));
            }
        }
    }
    eprintln!(
        "soak: {done} operations, {kills} kills, {restarts_checked} restarts checked by exec, {:?}",
        started.elapsed()
    );

    // Remove everything, then a clean shutdown.
    model = refresh(&mut rt).await.unwrap();
    for pod in &model.pods {
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    for image in SPARE_IMAGES.iter().chain([&BUSYBOX]) {
        im.remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: (*image).into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    // Shims leave once their pod is gone; give them a moment.
    for _ in 0..300 {
        if leaks::shims_of(&b.state()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut found = leaks::host_leaks(&b);
    found.extend(leaks::storage_leaks(&b));
    let status = b.stop_with(Signal::SIGTERM, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "berthd did not shut down cleanly: {status:?}\n{}",
        b.log_text()
    );
    found.extend(leaks::store_leaks(&b));

    if let Ok(path) = std::env::var("BERTH_SOAK_REPORT") {
        let report = serde_json::json!({
            "seed": seed, "operations": done, "kills": kills, "restarts_checked_by_exec": restarts_checked,
            "seconds": started.elapsed().as_secs(), "failures": failures, "leaks": found,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        if !failures.is_empty() || !found.is_empty() {
            // The test's directory goes with it: keep the daemon logs next to the report for the diagnosis.
            let keep = std::path::PathBuf::from(format!("{path}.logs"));
            std::fs::create_dir_all(&keep).unwrap();
            for log in daemon_logs(&b) {
                let _ = std::fs::copy(&log, keep.join(log.file_name().unwrap()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "soak failures (seed {seed}):\n{}",
        failures.join("\n")
    );
    if !found.is_empty() {
        let mut logs = String::new();
        for log in daemon_logs(&b) {
            logs += &format!(
                "--- {}\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("leaks after the soak (seed {seed}):\n{}\n{logs}", found.join("\n"));
    }
}
