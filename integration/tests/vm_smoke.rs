//! berthd on a pure cgroup v2 node: run inside the qemu VM (`hack/vm-test.sh` as the cargo runner, see
//! hack/test.sh); skipped, with a message, on a v1 or hybrid host.
//!
//! No registry in the VM: the busybox image is imported from the OCI layout that hack/make-test-images.sh
//! builds (copied into the guest with BERTH_VM_EXTRA). Pods use the host network (the guest has no nft).
//! One pod, two containers under memory and pids limits: one allocates past its limit and is OOMKilled, the
//! other runs while its stats are read; then removal leaves no cgroup.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_cri::api::runtime_service_client::RuntimeServiceClient;
use berth_cri::api::{
    ContainerConfig, ContainerMetadata, ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec, LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatsRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use berth_integration::{built, kill_shims_of, uds_channel, unique};
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const LAYOUT_REF: &str = "e2e-test-images_busybox_1.29-2";
const MIB: i64 = 1 << 20;

/// The test images' OCI layout (hack/make-test-images.sh).
fn layout_dir() -> PathBuf {
    std::env::var_os("BERTH_TEST_IMAGES_WORKDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-test-images"))
        .join("oci-base")
}

/// An OCI layout tar holding only the busybox image, named as the tests name it.
fn busybox_tar(work: &Path) -> PathBuf {
    let src = layout_dir();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).expect("the test images' OCI layout")).unwrap();
    let mut desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == LAYOUT_REF)
        .expect("busybox in the layout")
        .clone();
    desc["annotations"] = serde_json::json!({ "io.containerd.image.name": IMAGE });
    let out = work.join("layout");
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |digest: &str| digest.strip_prefix("sha256:").unwrap().to_string();
    let manifest_digest = blob(desc["digest"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("blobs/sha256").join(&manifest_digest)).unwrap()).unwrap();
    let mut digests = vec![manifest_digest, blob(manifest["config"]["digest"].as_str().unwrap())];
    digests.extend(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| blob(l["digest"].as_str().unwrap())),
    );
    for d in digests {
        std::fs::copy(src.join("blobs/sha256").join(&d), blobs.join(&d)).unwrap();
    }
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let new_index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
    std::fs::write(out.join("index.json"), new_index.to_string()).unwrap();
    let tar = work.join("busybox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&out)
        .arg("-cf")
        .arg(&tar)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .unwrap();
    assert!(st.success(), "tar failed");
    tar
}

/// berthd's arguments for this test's private config, root, state and socket.
fn berthd(dir: &Path) -> Command {
    let mut c = Command::new(built("berthd"));
    c.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("berth.sock"));
    c
}

/// The berthd child and what it made, stopped and removed on drop (also when an assertion fails).
struct Daemon {
    child: Child,
    dir: PathBuf,
    parent: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_shims_of(&self.dir.join("state"));
        // Deepest first.
        let mut dirs: Vec<PathBuf> = walk(&self.parent);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs.iter().chain([&self.parent]) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Every cgroup below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn cgroup_file(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

async fn connect(socket: &Path, child: &mut Child, log: &Path) -> RuntimeServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "berthd exited {st}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(ch) = uds_channel(socket).await {
            return RuntimeServiceClient::new(ch);
        }
        assert!(
            Instant::now() < deadline,
            "berthd did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn container(name: &str, script: &str, memory: i64) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: memory,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn berthd_limits_reports_oom_and_stats_and_cleans_up_on_cgroup_v2() {
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        println!("skipped: this host does not run a pure cgroup v2 hierarchy (run it with hack/vm-test.sh)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let parent_name = unique("berth-smoke-");
    std::fs::write(
        dir.join("config.toml"),
        format!("[cgroups]\ndefault_parent = \"/{parent_name}\"\npids_limit = 64\n"),
    )
    .unwrap();
    let tar = busybox_tar(&dir);
    let out = berthd(&dir).args(["images", "import"]).arg(&tar).output().unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(IMAGE));

    let log = dir.join("berthd.log");
    let child = berthd(&dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        dir: dir.clone(),
        parent: Path::new("/sys/fs/cgroup").join(&parent_name),
    };
    let mut rt = connect(&dir.join("berth.sock"), &mut d.child, &log).await;

    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "smoke".into(),
            uid: unique("uid-"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: dir.join("logs").display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox: {e:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .into_inner()
        .pod_sandbox_id;
    let pod_dir = d.parent.join(&pod);
    assert!(pod_dir.is_dir(), "pod cgroup {} missing", pod_dir.display());

    let mut start = async |c: ContainerConfig| -> String {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e:?}"))
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "StartContainer: {e:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        id
    };
    // 32 MiB limit, a 64 MiB buffer.
    let hog = start(container(
        "hog",
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
        32 * MIB,
    ))
    .await;
    // 40 MiB touched and held, under 128 MiB.
    let holder = start(container(
        "holder",
        "dd if=/dev/zero bs=40M count=1 2>/dev/null | sleep 1000",
        128 * MIB,
    ))
    .await;

    // The limits in the container cgroups.
    let holder_dir = pod_dir.join(&holder);
    assert_eq!(cgroup_file(&holder_dir, "memory.max"), (128 * MIB).to_string());
    assert_eq!(cgroup_file(&holder_dir, "pids.max"), "64");

    // OOMKilled, 137.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = rt
            .container_status(ContainerStatusRequest {
                container_id: hog.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.finished_at != 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the hog did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );

    // Stats of the running container and of the pod.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = rt
            .container_stats(ContainerStatsRequest {
                container_id: holder.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let ws = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        if ws >= 40 << 20 {
            break s;
        }
        assert!(Instant::now() < deadline, "working set stayed below 40 MiB: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("holder stats: {stats:?}");
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let pod_stats = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    println!(
        "pod process count {:?}, memory {:?}",
        pod_stats.process, pod_stats.memory
    );
    assert!(pod_stats.memory.unwrap().working_set_bytes.unwrap().value >= 40 << 20);
    assert!(pod_stats.process.unwrap().process_count.unwrap().value >= 2);
    assert_eq!(pod_stats.containers.len(), 2);
    assert!(
        pod_stats.network.is_none(),
        "a host-network pod has no counters of its own"
    );

    // Removal: no cgroup left under the parent.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert!(!pod_dir.exists(), "pod cgroup left");
    assert_eq!(walk(&d.parent), Vec::<PathBuf>::new(), "cgroups left under the parent");
}
