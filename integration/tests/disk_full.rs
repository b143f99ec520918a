//! Disk full under the metadata store: berth's root, which holds meta.redb, on a small tmpfs. A write of the
//! store that hits ENOSPC fails the request with the kernel's error named; once space is freed berthd works
//! again without a restart (redb latches an I/O error until the database is reopened: the store reopens it),
//! kubelet's retries of the pod and the container that failed succeed, and a container from before the disk
//! filled is still managed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_cri::api::ListPodSandboxRequest;
use berth_integration::cri::{self, create, run_pod, start};
use berth_integration::{Berthd, BerthdOptions, ensure_test_images, ok_stdout};
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::signal::Signal;
use nix::sys::statvfs::statvfs;

/// Takes every free block of the file system of `dir` with one file (fallocate: tmpfs allocates the pages).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let file = std::fs::File::create(&path).unwrap();
    let fs = statvfs(dir).unwrap();
    let free = fs.blocks_available() as i64 * fs.fragment_size() as i64;
    fallocate(&file, FallocateFlags::empty(), 0, free).unwrap();
    assert_eq!(statvfs(dir).unwrap().blocks_available(), 0, "the file system is full");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn berthd_works_again_once_the_disk_of_its_metadata_store_has_space() {
    ensure_test_images();
    let mut b = Berthd::start(BerthdOptions::default()).unwrap();
    // Put the root on a tmpfs of its own: stop the fresh berthd, mount over its root (nothing there yet), start
    // it again. The harness unmounts every mount under its dir when it drops, this one included.
    b.stop_with(Signal::SIGTERM, Duration::from_secs(20));
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m,mode=0755", "berth-test-enospc"])
        .arg(b.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.respawn("berthd-tmpfs.log").unwrap();
    assert!(b.root().join("meta.redb").exists(), "the store is on the tmpfs");
    ok_stdout(&b.crictl(&["pull", cri::BUSYBOX]), "crictl pull");

    let mut rt = cri::Runtime::new(b.channel().await.unwrap());
    let logs = b.dir.path().join("logs");
    // A pod with a running container from before the disk filled.
    let steady = cri::pod("steady", &logs);
    let steady_id = run_pod(&mut rt, &steady).await.expect("RunPodSandbox");
    let before = create(
        &mut rt,
        &steady_id,
        &steady,
        cri::container("before", "exec sleep 1000"),
    )
    .await
    .expect("CreateContainer");
    start(&mut rt, &before).await.expect("StartContainer");

    let filler = fill(&b.root());

    // A container of the steady pod: its record or its snapshot does not fit.
    let during = || cri::container("during", "exec sleep 1000");
    let err = create(&mut rt, &steady_id, &steady, during())
        .await
        .expect_err("CreateContainer on a full disk");
    eprintln!("CreateContainer on the full disk: {err:?}");
    assert!(err.message().contains("No space left on device"), "{err:?}");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // A pull whose layers do not fit: the same code, through the image store's errors.
    let pull = b
        .images()
        .await
        .unwrap()
        .pull_image(berth_cri::api::PullImageRequest {
            image: Some(berth_cri::api::ImageSpec {
                image: "gcr.io/k8s-staging-cri-tools/test-image-1:latest".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("PullImage on a full disk");
    assert_eq!(pull.code(), tonic::Code::ResourceExhausted, "{pull:?}");

    // Pods until one of the store's commits needs a page the disk does not have (the first ones may fit in
    // pages the store's file already holds).
    let mut failed = None;
    for n in 0..40 {
        let sandbox = cri::pod(&format!("full-{n}"), &logs);
        if let Err(s) = run_pod(&mut rt, &sandbox).await {
            eprintln!("disk full after {n} pods");
            failed = Some((sandbox, s));
            break;
        }
    }
    let (sandbox, status) = failed.expect("no RunPodSandbox met the full disk");
    eprintln!("disk full: {status:?}");
    assert!(
        status.message().contains("metadata store") && status.message().contains("No space left on device"),
        "the error should name the store and the full disk: {status:?}"
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Still full: answers (errors or not), no panic, no dropped connection.
    let again = run_pod(&mut rt, &cri::pod("while-full", &logs)).await;
    eprintln!("while full: {again:?}");
    let listed = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await;
    eprintln!(
        "while full: ListPodSandbox answers {}",
        listed.as_ref().map_or_else(|s| format!("{s:?}"), |_| "OK".into())
    );
    for status in [again.err(), listed.err()].into_iter().flatten() {
        assert!(
            std::error::Error::source(&status).is_none(),
            "the connection broke: {status:?}"
        );
    }

    // Space back: the same berthd runs the pod kubelet retries, lists it, and runs a container in it.
    std::fs::remove_file(filler).unwrap();
    let pod = run_pod(&mut rt, &sandbox)
        .await
        .unwrap_or_else(|s| panic!("RunPodSandbox once space is back: {s:?}\n{}", b.log_text()));
    assert!(
        cri::pods(&mut rt).await.iter().any(|p| p.id == pod),
        "ListPodSandbox lists the new pod"
    );
    let id = create(&mut rt, &pod, &sandbox, cri::container("after", "exec sleep 1000"))
        .await
        .expect("CreateContainer once space is back");
    start(&mut rt, &id).await.expect("StartContainer once space is back");
    // kubelet's retry of the container that failed, and the one from before, still managed.
    let id = create(&mut rt, &steady_id, &steady, during())
        .await
        .expect("CreateContainer retried once space is back");
    start(&mut rt, &id).await.expect("StartContainer once space is back");
    let out = cri::exec(&mut rt, &before, "echo alive").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");
    assert!(
        b.log_text().contains("reopening after an I/O error"),
        "{}",
        b.log_text()
    );

    cri::remove_all_pods(&mut rt).await;
    // Nothing of a pod is left (the tmpfs is the test's: the harness unmounts it), in the store either.
    let ours = format!("mount {}", b.root().display());
    let host: Vec<String> = b.host_leaks().into_iter().filter(|l| *l != ours).collect();
    assert!(host.is_empty(), "left on the host: {host:#?}");
    b.stop_with(Signal::SIGTERM, Duration::from_secs(20));
    let store = b.store_leaks();
    assert!(store.is_empty(), "left in the store: {store:#?}");
}
