//! The CRI RuntimeService end to end with real crictl: pods, containers, logs, exec, exit codes, error codes,
//! and restart recovery after kill -9.

use std::path::Path;
use std::time::Duration;

use berth_cri::api::{
    ContainerState, ContainerStatusRequest, ExecSyncRequest, LinuxContainerResources, Mount, NamespaceMode,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use berth_integration::{Berthd, BerthdOptions, cri, ensure_test_images, ok_stdout, unique};
use nix::sys::signal::Signal;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn write_json(dir: &Path, name: &str, v: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn pod_json(dir: &Path, name: &str) -> String {
    let logs = dir.join("logs").join(name);
    write_json(
        dir,
        &format!("{name}-pod.json"),
        serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": unique("uid-"), "attempt": 0},
            "hostname": format!("{name}-host"),
            "log_directory": logs.display().to_string(),
            "linux": {}
        }),
    )
}

fn ctr_json(dir: &Path, name: &str, script: &str) -> String {
    write_json(
        dir,
        &format!("{name}-ctr.json"),
        serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c", script],
            "log_path": format!("{name}.log"),
            // Its own PID namespace (CRI's default, 0, is the pod's shared one).
            "linux": {"security_context": {"namespace_options": {"pid": 1}}}
        }),
    )
}

fn inspect(b: &Berthd, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(&b.crictl(&["inspect", id]), "crictl inspect")).unwrap()
}

/// Polls `crictl inspect` until the container has exited.
fn wait_exited(b: &Berthd, id: &str) -> serde_json::Value {
    for _ in 0..200 {
        let v = inspect(b, id);
        if v["status"]["state"] == "CONTAINER_EXITED" {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("container {id} did not exit: {}", inspect(b, id));
}

fn start_berthd() -> Berthd {
    ensure_test_images();
    let b = Berthd::start(BerthdOptions::default()).unwrap();
    ok_stdout(&b.crictl(&["pull", BUSYBOX]), "crictl pull");
    b
}

fn run_container(b: &Berthd, dir: &Path, pod: &str, pod_cfg: &str, name: &str, script: &str) -> String {
    let ctr = ctr_json(dir, name, script);
    let id = ok_stdout(&b.crictl(&["create", pod, &ctr, pod_cfg]), "crictl create")
        .trim()
        .to_string();
    ok_stdout(&b.crictl(&["start", &id]), "crictl start");
    id
}

#[test]
fn a_scripted_crictl_flow_shows_what_kubelet_reads() {
    let b = start_berthd();
    let dir = b.dir.path().to_path_buf();
    let pod_cfg = pod_json(&dir, "web");
    let pod = ok_stdout(&b.crictl(&["runp", &pod_cfg]), "crictl runp")
        .trim()
        .to_string();

    // The pod: Ready, with an IP on the test bridge, and the metadata it was given.
    let pods = ok_stdout(&b.crictl(&["pods", "-o", "json"]), "crictl pods");
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    assert_eq!(pods["items"][0]["id"], pod);
    assert_eq!(pods["items"][0]["state"], "SANDBOX_READY");
    let status: serde_json::Value =
        serde_json::from_str(&ok_stdout(&b.crictl(&["inspectp", &pod]), "inspectp")).unwrap();
    assert_eq!(status["status"]["metadata"]["name"], "web");
    let ip = status["status"]["network"]["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10."), "pod IP {ip:?}");

    let id = run_container(
        &b,
        &dir,
        &pod,
        &pod_cfg,
        "hello",
        "echo hello from berth; exec sleep 1000",
    );
    let ps = ok_stdout(&b.crictl(&["ps", "-o", "json"]), "crictl ps");
    let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(ps["containers"][0]["id"], id);
    assert_eq!(ps["containers"][0]["state"], "CONTAINER_RUNNING");
    assert_eq!(ps["containers"][0]["podSandboxId"], pod);

    // Logs in the kubelet format, read back by crictl.
    let mut logs = String::new();
    for _ in 0..50 {
        logs = ok_stdout(&b.crictl(&["logs", &id]), "crictl logs");
        if !logs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(logs, "hello from berth\n");
    let log_file = dir.join("logs/web/hello.log");
    let line = std::fs::read_to_string(&log_file).unwrap();
    assert!(line.contains(" stdout F hello from berth"), "{line}");

    // ExecSync: the pod's hostname, PID 1 is the container's own process.
    let host = ok_stdout(
        &b.crictl(&["exec", "-s", &id, "cat", "/etc/hostname"]),
        "crictl exec -s",
    );
    assert_eq!(host.trim(), "web-host");
    let comm = ok_stdout(&b.crictl(&["exec", "-s", &id, "cat", "/proc/1/comm"]), "crictl exec -s");
    assert_eq!(comm.trim(), "sleep");
    // crictl exec -s exits 1 and names ExecSync's exit code.
    let out = b.crictl(&["exec", "-s", &id, "sh", "-c", "exit 5"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited with 5"),
        "{out:?}"
    );

    // Stop: sleep as PID 1 ignores SIGTERM, so SIGKILL after the timeout → 137.
    ok_stdout(&b.crictl(&["stop", "-t", "1", &id]), "crictl stop");
    let v = inspect(&b, &id);
    assert_eq!(v["status"]["state"], "CONTAINER_EXITED");
    assert_eq!(v["status"]["exitCode"], 137);
    assert_eq!(v["status"]["reason"], "Error");
    assert!(v["status"]["finishedAt"].as_str().is_some());
    assert_eq!(v["status"]["logPath"], log_file.display().to_string());

    ok_stdout(&b.crictl(&["rm", &id]), "crictl rm");
    ok_stdout(&b.crictl(&["stopp", &pod]), "crictl stopp");
    ok_stdout(&b.crictl(&["rmp", &pod]), "crictl rmp");
    let pods = ok_stdout(&b.crictl(&["pods", "-q"]), "crictl pods");
    assert!(pods.trim().is_empty(), "{pods}");
}

#[test]
fn exit_codes_and_reasons() {
    let b = start_berthd();
    let dir = b.dir.path().to_path_buf();
    let pod_cfg = pod_json(&dir, "codes");
    let pod = ok_stdout(&b.crictl(&["runp", &pod_cfg]), "crictl runp")
        .trim()
        .to_string();
    let three = run_container(&b, &dir, &pod, &pod_cfg, "three", "exit 3");
    let zero = run_container(&b, &dir, &pod, &pod_cfg, "zero", "true");
    let v = wait_exited(&b, &three);
    assert_eq!(
        (v["status"]["exitCode"].as_i64(), v["status"]["reason"].as_str()),
        (Some(3), Some("Error"))
    );
    let v = wait_exited(&b, &zero);
    assert_eq!(
        (v["status"]["exitCode"].as_i64(), v["status"]["reason"].as_str()),
        (Some(0), Some("Completed"))
    );
    ok_stdout(&b.crictl(&["rmp", "-f", &pod]), "crictl rmp -f");
}

#[tokio::test]
async fn error_codes_follow_the_cri() {
    let b = start_berthd();
    let mut rt = b.runtime().await.unwrap();
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let e = rt
        .container_status(ContainerStatusRequest {
            container_id: unknown.into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: unknown.into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    // Stop and Remove of what does not exist succeed: kubelet retries them.
    rt.stop_container(StopContainerRequest {
        container_id: unknown.into(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest {
        container_id: unknown.into(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: unknown.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: unknown.into(),
    })
    .await
    .unwrap();
    // A pod without a name is refused, naming the field.
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: String::new(),
                    uid: "u".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("metadata.name"), "{}", e.message());
}

#[test]
fn a_duplicate_pod_name_is_refused_naming_the_holder_and_released_after_removal() {
    let b = start_berthd();
    let dir = b.dir.path().to_path_buf();
    let cfg = pod_json(&dir, "dup");
    let first = ok_stdout(&b.crictl(&["runp", &cfg]), "crictl runp").trim().to_string();
    let out = b.crictl(&["runp", &cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AlreadyExists") && err.contains(&first), "{err}");
    ok_stdout(&b.crictl(&["rmp", "-f", &first]), "crictl rmp");
    let again = ok_stdout(&b.crictl(&["runp", &cfg]), "crictl runp after removal")
        .trim()
        .to_string();
    ok_stdout(&b.crictl(&["rmp", "-f", &again]), "crictl rmp");
}

#[test]
fn containers_survive_kill_9_of_berthd_and_stay_manageable() {
    let mut b = start_berthd();
    let dir = b.dir.path().to_path_buf();
    let pod_cfg = pod_json(&dir, "survivor");
    let pod = ok_stdout(&b.crictl(&["runp", &pod_cfg]), "crictl runp")
        .trim()
        .to_string();
    let long = run_container(&b, &dir, &pod, &pod_cfg, "long", "exec sleep 1000");
    let short = run_container(&b, &dir, &pod, &pod_cfg, "short", "sleep 2; exit 7");

    b.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    // `short` exits while no berthd runs.
    std::thread::sleep(Duration::from_secs(3));
    b.respawn("second.log").unwrap();

    let v = inspect(&b, &long);
    assert_eq!(v["status"]["state"], "CONTAINER_RUNNING", "{v}");
    let out = ok_stdout(
        &b.crictl(&["exec", "-s", &long, "echo", "still here"]),
        "exec after restart",
    );
    assert_eq!(out.trim(), "still here");
    let v = wait_exited(&b, &short);
    assert_eq!(v["status"]["exitCode"], 7, "{v}");
    ok_stdout(&b.crictl(&["stop", "-t", "0", &long]), "stop after restart");
    ok_stdout(&b.crictl(&["rmp", "-f", &pod]), "crictl rmp");
}

/// PodSandboxStats carries the pod's eth0 counters, read in the pod's netns: traffic from the pod to the
/// bridge gateway raises both directions.
#[tokio::test]
async fn pod_stats_count_the_pod_s_network_traffic() {
    use berth_cri::api::{ListPodSandboxStatsRequest, NetworkInterfaceUsage, PodSandboxStatsRequest};
    let b = start_berthd();
    let dir = b.dir.path().to_path_buf();
    let pod_cfg = pod_json(&dir, "net");
    let pod = ok_stdout(&b.crictl(&["runp", &pod_cfg]), "crictl runp")
        .trim()
        .to_string();
    let id = run_container(&b, &dir, &pod, &pod_cfg, "pinger", "exec sleep 1000");
    let status: serde_json::Value =
        serde_json::from_str(&ok_stdout(&b.crictl(&["inspectp", &pod]), "inspectp")).unwrap();
    let ip = status["status"]["network"]["ip"].as_str().unwrap().to_string();
    let gateway = format!("{}.1", ip.rsplit_once('.').unwrap().0);

    let mut rt = b.runtime().await.unwrap();
    let mut eth0 = async || -> NetworkInterfaceUsage {
        let s = rt
            .pod_sandbox_stats(PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let net = s
            .linux
            .unwrap()
            .network
            .expect("network stats of a pod with its own netns");
        assert!(net.timestamp > 0);
        assert!(net.interfaces.iter().all(|i| i.name != "lo"), "{net:?}");
        net.default_interface.expect("eth0")
    };
    let before = eth0().await;
    assert_eq!(before.name, "eth0");
    let out = b.crictl(&["exec", "-s", &id, "ping", "-c", "5", "-W", "2", &gateway]);
    println!("ping {gateway}: {}", String::from_utf8_lossy(&out.stdout));
    let after = eth0().await;
    let n = |x: &Option<berth_cri::api::UInt64Value>| x.as_ref().unwrap().value;
    println!("eth0 before {before:?}\neth0 after {after:?}");
    // Five echo requests of 84 bytes (IP) + 14 (Ethernet) out, as many replies back.
    assert!(
        n(&after.tx_bytes) >= n(&before.tx_bytes) + 5 * 98,
        "{before:?} → {after:?}"
    );
    assert!(
        n(&after.rx_bytes) >= n(&before.rx_bytes) + 5 * 98,
        "{before:?} → {after:?}"
    );
    assert_eq!(n(&after.rx_errors), 0);
    assert_eq!(n(&after.tx_errors), 0);

    // The list form carries the same.
    let list = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let mine = list
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == pod)
        .expect("the pod in ListPodSandboxStats");
    let net = mine.linux.as_ref().unwrap().network.as_ref().unwrap();
    assert!(n(&net.default_interface.as_ref().unwrap().tx_bytes) >= n(&after.tx_bytes));
    ok_stdout(&b.crictl(&["rmp", "-f", &pod]), "crictl rmp -f");
}

/// 50 pods started at once, each with a running container: all succeed, all listed with the right state and
/// owner, and once all are stopped and removed (at once too) nothing of them is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_pods_run_list_and_go_away_without_leaks() {
    const N: usize = 50;
    let mut b = start_berthd();
    let rt = b.runtime().await.unwrap();
    let logs = b.dir.path().join("logs");
    let mut tasks = Vec::new();
    for i in 0..N {
        let config = cri::pod(&format!("many-{i}"), &logs);
        let ctr = cri::container("sleeper", "exec sleep 3600");
        tasks.push(tokio::spawn(cri::run_pod_with(rt.clone(), config, ctr)));
    }
    let mut started = std::collections::BTreeMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (pod, ctr) = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("pod {i}: {e:?}\n{}", b.log_text()));
        started.insert(ctr, pod);
    }
    assert_eq!(started.len(), N);

    let mut rt = rt;
    let pods = cri::pods(&mut rt).await;
    assert_eq!(pods.len(), N);
    assert!(
        pods.iter().all(|p| p.state == PodSandboxState::SandboxReady as i32),
        "{pods:?}"
    );
    let ctrs = cri::containers(&mut rt).await;
    assert_eq!(ctrs.len(), N);
    for c in &ctrs {
        assert_eq!(c.state, ContainerState::ContainerRunning as i32, "{c:?}");
        assert_eq!(started.get(&c.id), Some(&c.pod_sandbox_id), "{c:?}");
    }
    let mut ips: Vec<String> = Vec::new();
    for p in &pods {
        let s = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        ips.push(s.status.unwrap().network.unwrap().ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), N, "every pod has its own IP");

    let mut tasks = Vec::new();
    for pod in started.values().cloned() {
        let mut rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let left = cri::pods(&mut rt).await;
    assert!(left.is_empty(), "{left:?}");
    b.assert_no_leaks();
}

/// The containers of a pod share one /dev/shm (the pod's 64 MiB tmpfs); another pod has its own; an IPC=NODE
/// pod sees the host's; the tmpfs goes with the pod.
#[tokio::test]
async fn containers_of_a_pod_share_its_dev_shm_and_no_one_else_does() {
    let mut b = start_berthd();
    let mut rt = b.runtime().await.unwrap();
    let logs = b.dir.path().join("logs");
    let (pod_a, one) = cri::run_pod_with(
        rt.clone(),
        cri::pod("shm-a", &logs),
        cri::container("one", "exec sleep 3600"),
    )
    .await
    .unwrap();
    let two = cri::create(
        &mut rt,
        &pod_a,
        &cri::pod("shm-a", &logs),
        cri::container("two", "exec sleep 3600"),
    )
    .await
    .unwrap();
    cri::start(&mut rt, &two).await.unwrap();
    let (pod_b, three) = cri::run_pod_with(
        rt.clone(),
        cri::pod("shm-b", &logs),
        cri::container("three", "exec sleep 3600"),
    )
    .await
    .unwrap();

    let w = cri::exec(&mut rt, &one, "echo shared > /dev/shm/marker").await;
    assert_eq!(w.exit_code, 0, "{w:?}");
    let r = cri::exec(&mut rt, &two, "cat /dev/shm/marker").await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "shared", "{r:?}");
    let other = cri::exec(&mut rt, &three, "test -e /dev/shm/marker").await;
    assert_eq!(other.exit_code, 1, "another pod sees the marker: {other:?}");
    let m = cri::exec(&mut rt, &two, "grep ' /dev/shm ' /proc/self/mountinfo").await;
    let m = String::from_utf8_lossy(&m.stdout).into_owned();
    assert!(m.contains("tmpfs") && m.contains("size=65536k"), "{m}");
    // It is the pod's tmpfs, under the pod's state dir.
    let shm = b.state().join("pods").join(&pod_a).join("shm");
    assert_eq!(std::fs::read_to_string(shm.join("marker")).unwrap().trim(), "shared");

    // An IPC=NODE pod uses the host's /dev/shm.
    let host_file = format!("berth-it-{}", unique(""));
    std::fs::write(Path::new("/dev/shm").join(&host_file), "host").unwrap();
    let mut host_ipc = cri::pod("shm-host", &logs);
    let ns = host_ipc
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .unwrap();
    ns.ipc = NamespaceMode::Node as i32;
    let (pod_h, four) = cri::run_pod_with(rt.clone(), host_ipc, cri::container("four", "exec sleep 3600"))
        .await
        .unwrap();
    let r = cri::exec(&mut rt, &four, &format!("cat /dev/shm/{host_file}")).await;
    let _ = std::fs::remove_file(Path::new("/dev/shm").join(&host_file));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "host", "{r:?}");

    cri::remove_pod(&mut rt, &pod_a).await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&shm.display().to_string()),
        "the pod's tmpfs is still mounted"
    );
    for pod in [pod_b, pod_h] {
        cri::remove_pod(&mut rt, &pod).await;
    }
    b.assert_no_leaks();
}

/// StopPodSandbox kills the containers at once (CRI: "forcibly terminated"; containerd uses no grace): a
/// container that ignores SIGTERM is exited when the call returns, and never saw a SIGTERM.
#[tokio::test]
async fn stop_pod_sandbox_kills_containers_without_a_grace_period() {
    let mut b = start_berthd();
    let mut rt = b.runtime().await.unwrap();
    let logs = b.dir.path().join("logs");
    let signals = b.dir.path().join("signals");
    std::fs::create_dir_all(&signals).unwrap();
    let mut ctr = cri::container(
        "stubborn",
        "trap 'echo TERM >> /signals/seen' TERM; while true; do sleep 0.1; done",
    );
    ctr.mounts.push(Mount {
        container_path: "/signals".into(),
        host_path: signals.display().to_string(),
        ..Default::default()
    });
    let (pod, id) = cri::run_pod_with(rt.clone(), cri::pod("stubborn", &logs), ctr)
        .await
        .unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: id,
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert!(!signals.join("seen").exists(), "the container got a SIGTERM first");
    cri::remove_pod(&mut rt, &pod).await;
    b.assert_no_leaks();
}

/// Status, start and exec of an unknown container are NotFound; a bad container config is InvalidArgument
/// naming the field.
#[tokio::test]
async fn unknown_containers_are_not_found_and_bad_configs_name_the_field() {
    let mut b = start_berthd();
    let mut rt = b.runtime().await.unwrap();
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let e = rt
        .start_container(StartContainerRequest {
            container_id: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rt
        .exec_sync(ExecSyncRequest {
            container_id: unknown.into(),
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let logs = b.dir.path().join("logs");
    let sandbox = cri::pod("bad-configs", &logs);
    let pod = cri::run_pod(&mut rt, &sandbox).await.unwrap();
    let good = || cri::container("bad", "true");
    let mut no_name = good();
    no_name.metadata.as_mut().unwrap().name.clear();
    let mut no_image = good();
    no_image.image = None;
    let mut relative_mount = good();
    relative_mount.mounts.push(Mount {
        container_path: "data".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    });
    let mut negative = good();
    negative.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: -1,
        ..Default::default()
    });
    for (config, field) in [
        (no_name, "metadata.name"),
        (no_image, "image.image"),
        (relative_mount, "mounts[0].container_path"),
        (negative, "memory_limit_in_bytes"),
    ] {
        let e = cri::create(&mut rt, &pod, &sandbox, config).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    let ctrs = cri::containers(&mut rt).await;
    assert!(ctrs.is_empty(), "{ctrs:?}");
    cri::remove_pod(&mut rt, &pod).await;
    b.assert_no_leaks();
}
