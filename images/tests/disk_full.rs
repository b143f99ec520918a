//! Disk full: berth's root on a small tmpfs. A pull that runs out of space fails with the kernel's
//! ENOSPC named, keeps no half blob, no half layer and no image record, and pulls work again once space is
//! freed (by GC here). Uses the project's local registry (skipped with a message when it is not up).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_core::model::sha256_digest;
use berth_core::plugin::snapshot::UnpackLimits;
use berth_images::PullAuth;
use common::Env;

const ADDR: &str = "127.0.0.1:5000";

/// A tmpfs mounted on a temp dir; lazily unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "berth-test-enospc",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Every snapshot directory name under `snapshots` (numbers, or `<n>.tmp` / `<n>.rm` while in flight).
fn snapshot_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("root/snapshotter/overlayfs/snapshots"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_fills_the_disk_fails_cleanly_and_works_once_space_is_freed() {
    if std::net::TcpStream::connect(ADDR).is_err() {
        eprintln!("SKIP: no local registry on {ADDR}");
        return;
    }
    let fs = Tmpfs::mount("64m");
    let env = Env::in_dir(
        tempfile::tempdir_in(fs.0.path()).unwrap(),
        "overlayfs",
        UnpackLimits::default(),
    );
    let root = env.dir.path().to_path_buf();

    // ~200 MB of layers (4 × 50 MB gzip): the 64 MiB disk fills mid-stream.
    let big = format!("{ADDR}/berth-test/big:latest");
    let err = env.images.pull(&big, &PullAuth::default()).await.unwrap_err();
    let text = err.to_string();
    eprintln!("disk full: {text}");
    assert!(
        text.contains("No space left on device"),
        "the error should say the disk is full: {text}"
    );
    assert!(env.images.list(None).unwrap().is_empty());

    // Nothing half-written stays: no ingest file, every blob whole (its bytes match its digest), and the
    // unpacks still running when the pull failed drop their unfinished layer directories.
    let started = Instant::now();
    while snapshot_dirs(&root).iter().any(|d| d.contains('.')) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            snapshot_dirs(&root)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, ingest) = env.content_files();
    assert_eq!(ingest, 0, "an ingest file survived the failed pull");
    for digest in env.images.content().list().unwrap() {
        let bytes = env.images.content().read(&digest).unwrap();
        assert_eq!(sha256_digest(&bytes), digest, "a half blob is visible");
    }

    // Space freed (GC takes the blobs and layers of the failed pull): a pull works again.
    env.images.gc().await.unwrap();
    assert!(snapshot_dirs(&root).is_empty(), "{:?}", snapshot_dirs(&root));
    let small = format!("{ADDR}/berth-test/busybox:latest");
    let image = env.images.pull(&small, &PullAuth::default()).await.unwrap();
    assert!(!image.chain_ids.is_empty());
    drop(env);
}
