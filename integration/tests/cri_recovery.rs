//! Restart recovery with berthd killed at named points of a create/start sequence (test failpoints), and
//! creates whose client gave up: each either completes or rolls back, and nothing is left behind.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use berth_cri::api::{
    ContainerConfig, ContainerState, CreateContainerRequest, PodSandboxState, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest,
};
use berth_integration::cri::{self, Runtime, create, run_pod, start};
use berth_integration::{Berthd, BerthdOptions, ensure_test_images, ok_stdout};

fn sleeper() -> ContainerConfig {
    cri::container("app", "exec sleep 3600")
}

fn start_with_failpoints(spec: &str) -> Berthd {
    ensure_test_images();
    let b = Berthd::start(BerthdOptions {
        env: vec![(berth_core::failpoint::ENV.into(), spec.into())],
        ..Default::default()
    })
    .unwrap();
    ok_stdout(&b.crictl(&["pull", cri::BUSYBOX]), "crictl pull");
    b
}

/// (id, state) of every pod, and of every container.
async fn inventory(rt: &mut Runtime) -> (Vec<(String, i32)>, Vec<(String, i32)>) {
    let pods = cri::pods(rt).await;
    let ctrs = cri::containers(rt).await;
    (
        pods.into_iter().map(|p| (p.id, p.state)).collect(),
        ctrs.into_iter().map(|c| (c.id, c.state)).collect(),
    )
}

/// Where the failpoint sits, so what the restarted berthd must show.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// Killed inside RunPodSandbox: the pod is rolled back.
    PodRolledBack,
    /// Killed inside CreateContainer: the pod stays, the container is rolled back.
    ContainerRolledBack,
    /// Killed after the shim started the container: it runs and is manageable.
    ContainerRunning,
}

/// Runs pod → create → start on a berthd that aborts at `point`, restarts it, and checks the outcome, that
/// the same names can be used again, and that once everything is removed nothing is left.
async fn kill_at(point: &str, expected: Outcome) {
    let mut b = start_with_failpoints(point);
    let mut rt = b.runtime().await.unwrap();
    let logs = b.dir.path().join("logs");
    let config = cri::pod("crash", &logs);
    let mut pod = None;
    let result = async {
        pod = Some(run_pod(&mut rt, &config).await?);
        let id = create(&mut rt, pod.as_deref().unwrap(), &config, sleeper()).await?;
        start(&mut rt, &id).await
    }
    .await;
    assert!(result.is_err(), "the failpoint {point} did not fire");
    let status = b
        .wait_exit(Duration::from_secs(30))
        .expect("berthd did not die at the failpoint");
    assert_eq!(status.signal(), Some(libc_sigabrt()), "{status:?}\n{}", b.log_text());
    b.respawn("after-crash.log").unwrap();

    let mut rt = b.runtime().await.unwrap();
    let (pods, ctrs) = inventory(&mut rt).await;
    match expected {
        Outcome::PodRolledBack => {
            assert!(pods.is_empty() && ctrs.is_empty(), "{pods:?} {ctrs:?}");
            let leaks = b.host_leaks();
            assert!(leaks.is_empty(), "left after the rollback: {leaks:#?}");
        }
        Outcome::ContainerRolledBack | Outcome::ContainerRunning => {
            let pod = pod.as_deref().unwrap();
            assert_eq!(pods, vec![(pod.to_string(), PodSandboxState::SandboxReady as i32)]);
            if expected == Outcome::ContainerRolledBack {
                assert!(ctrs.is_empty(), "{ctrs:?}");
                let left = std::fs::read_dir(b.state().join("containers")).map_or(0, |d| d.count());
                assert_eq!(left, 0, "container state left");
            } else {
                assert_eq!(ctrs.len(), 1, "{ctrs:?}");
                assert_eq!(ctrs[0].1, ContainerState::ContainerRunning as i32);
                let out = cri::exec(&mut rt, &ctrs[0].0, "echo alive").await;
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");
                rt.stop_container(StopContainerRequest {
                    container_id: ctrs[0].0.clone(),
                    timeout: 0,
                })
                .await
                .unwrap();
                let (_, ctrs) = inventory(&mut rt).await;
                assert_eq!(ctrs[0].1, ContainerState::ContainerExited as i32);
                rt.remove_container(berth_cri::api::RemoveContainerRequest {
                    container_id: ctrs[0].0.clone(),
                })
                .await
                .unwrap();
            }
        }
    }

    // The names are free again (or were never lost): the same pod and container names run fine.
    let pod = match expected {
        Outcome::PodRolledBack => run_pod(&mut rt, &config).await.unwrap(),
        _ => pod.unwrap(),
    };
    let id = create(&mut rt, &pod, &config, sleeper()).await.unwrap();
    start(&mut rt, &id).await.unwrap();
    cri::remove_pod(&mut rt, &pod).await;
    // No snapshot or blob outlives its image: a leaked container snapshot or view would keep its layers.
    ok_stdout(&b.crictl(&["rmi", cri::BUSYBOX]), "crictl rmi");
    b.assert_no_leaks();
    let storage = berth_integration::leaks::storage_leaks(&b);
    assert!(storage.is_empty(), "left in storage: {storage:#?}");
}

fn libc_sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}

#[tokio::test]
async fn killed_after_the_pod_intent_is_recorded() {
    kill_at("run_pod.after_intent", Outcome::PodRolledBack).await;
}

#[tokio::test]
async fn killed_after_the_pod_namespaces_are_pinned() {
    kill_at("run_pod.after_pin", Outcome::PodRolledBack).await;
}

#[tokio::test]
async fn killed_after_the_pod_network_is_set_up_before_the_commit() {
    kill_at("run_pod.after_network", Outcome::PodRolledBack).await;
}

#[tokio::test]
async fn killed_after_the_container_intent_is_recorded() {
    kill_at("create_container.after_intent", Outcome::ContainerRolledBack).await;
}

#[tokio::test]
async fn killed_while_reading_the_image_user_database() {
    kill_at("create_container.after_user_view", Outcome::ContainerRolledBack).await;
}

#[tokio::test]
async fn killed_after_the_container_dir_is_made_before_the_shim_has_it() {
    kill_at("isolation.create.before_shim", Outcome::ContainerRolledBack).await;
}

#[tokio::test]
async fn killed_after_the_shim_created_the_container_before_the_commit() {
    kill_at("create_container.after_create", Outcome::ContainerRolledBack).await;
}

#[tokio::test]
async fn killed_after_the_container_started_before_the_commit() {
    kill_at("start_container.after_start", Outcome::ContainerRunning).await;
}

/// A request that gives up after `ms` (kubelet's deadline, much shorter).
fn with_deadline<T>(msg: T, ms: u64) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_millis(ms));
    r
}

/// RunPodSandbox and CreateContainer whose client gives up half-way: the work still finishes, and kubelet's
/// retry with the same name gets the object (joining the run still going, or claiming the finished one); a
/// StartContainer whose client gave up is still recorded.
#[tokio::test]
async fn a_create_whose_client_gave_up_is_finished_and_handed_to_the_retry() {
    let mut b = start_with_failpoints(
        "run_pod.after_pin=sleep(2000),create_container.after_create=sleep(2000),start_container.after_start=sleep(2000)",
    );
    let mut rt = b.runtime().await.unwrap();
    let logs = b.dir.path().join("logs");
    let config = cri::pod("impatient", &logs);

    let req = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let e = rt.run_pod_sandbox(with_deadline(req, 300)).await.unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{e:?}"
    );
    // The retry comes while the first call still runs: it waits for it and gets its pod.
    let pod = run_pod(&mut rt, &config).await.unwrap();
    let (pods, _) = inventory(&mut rt).await;
    assert_eq!(pods, vec![(pod.clone(), PodSandboxState::SandboxReady as i32)]);

    let req = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(sleeper()),
        sandbox_config: Some(config.clone()),
    };
    let e = rt.create_container(with_deadline(req, 300)).await.unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{e:?}"
    );
    // This retry comes after the first call finished: it claims the container that call created.
    let mut finished = false;
    for _ in 0..100 {
        if b.log_text().contains("kept for its retry") {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished, "the abandoned create did not finish:\n{}", b.log_text());
    let id = create(&mut rt, &pod, &config, sleeper()).await.unwrap();
    let (_, ctrs) = inventory(&mut rt).await;
    assert_eq!(ctrs, vec![(id.clone(), ContainerState::ContainerCreated as i32)]);
    // Claimed once: a create with the name now is a duplicate.
    let e = create(&mut rt, &pod, &config, sleeper()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");

    // A StartContainer whose client gave up still records the start: the container becomes Running (not
    // Created forever, with its process running) and is manageable.
    let req = StartContainerRequest {
        container_id: id.clone(),
    };
    let e = rt.start_container(with_deadline(req, 300)).await.unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{e:?}"
    );
    let mut state = ContainerState::ContainerCreated as i32;
    for _ in 0..100 {
        state = inventory(&mut rt).await.1[0].1;
        if state != ContainerState::ContainerCreated as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, ContainerState::ContainerRunning as i32);
    let out = cri::exec(&mut rt, &id, "echo alive").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");

    cri::remove_pod(&mut rt, &pod).await;
    b.assert_no_leaks();
}
