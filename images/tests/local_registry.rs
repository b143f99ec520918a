//! Against the project's local registry (`hack/local-registry.sh start`, `hack/make-test-images.sh`) through
//! the hosts directory `hack/mirror-config.sh` writes: every test image pulls under its upstream name, and the
//! fixture images unpack as their recipes say. Skipped (with a message) when 127.0.0.1:5000 does not answer.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_images::snapshot_testsuite::mount_all;
use berth_images::{PullAuth, runtime_config};
use common::Env;

const ADDR: &str = "127.0.0.1:5000";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn registry_up() -> bool {
    std::net::TcpStream::connect(ADDR).is_ok() && repo_root().join("hack/test-images.txt").is_file()
}

fn env_with_mirrors(snapshotter: &str) -> Env {
    let env = Env::new(snapshotter);
    let status = std::process::Command::new("bash")
        .arg(repo_root().join("hack/mirror-config.sh"))
        .arg(env.hosts_dir())
        .arg(ADDR)
        .status()
        .unwrap();
    assert!(status.success());
    env
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_test_image_pulls_under_its_upstream_name() {
    if !registry_up() {
        eprintln!("SKIP: no local registry on {ADDR} (hack/local-registry.sh start; hack/make-test-images.sh)");
        return;
    }
    let env = env_with_mirrors("overlayfs");
    let list = std::fs::read_to_string(repo_root().join("hack/test-images.txt")).unwrap();
    let auth = PullAuth::default();
    // berth-test/big (~200 MB, for benchmarks) takes a minute in a debug build: left to the benchmarks.
    let wanted = |l: &&str| !l.is_empty() && !l.starts_with('#') && !l.contains("berth-test/big");
    for name in list.lines().map(str::trim).filter(wanted) {
        let result = env.images.pull(name, &auth).await;
        if name.contains("arm64-only") {
            let err = result.expect_err(name);
            assert!(err.to_string().contains("arm64"), "{name}: {err}");
            continue;
        }
        let image = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!image.chain_ids.is_empty(), "{name}");
    }
    let id = |n: &str| env.images.status(n).unwrap().unwrap_or_else(|| panic!("{n}")).id;
    let tags = "gcr.io/k8s-staging-cri-tools/test-image-tags";
    assert_eq!(id(&format!("{tags}:1")), id(&format!("{tags}:2")));
    assert_eq!(id(&format!("{tags}:1")), id(&format!("{tags}:3")));
    assert_eq!(id("registry.k8s.io/pause:3.9"), id("k8s.gcr.io/pause:3.9"));
    assert_ne!(id("registry.k8s.io/pause:3.9"), id("registry.k8s.io/pause:3.6"));
    let user = |n: &str| {
        runtime_config(&env.images.status(n).unwrap().unwrap())
            .unwrap()
            .uid_or_username()
    };
    let staging = "gcr.io/k8s-staging-cri-tools";
    assert_eq!(
        user(&format!("{staging}/test-image-user-uid")),
        (Some(1002), String::new())
    );
    assert_eq!(
        user(&format!("{staging}/test-image-user-username")),
        (None, "www-data".into())
    );
    assert_eq!(
        user(&format!("{staging}/test-image-user-uid-group")),
        (Some(1003), String::new())
    );
    assert_eq!(user("registry.k8s.io/pause:3.9"), (Some(65535), String::new()));

    // critest's default image: applets are hard links of one busybox binary.
    let busybox = env
        .images
        .status("registry.k8s.io/e2e-test-images/busybox:1.29-2")
        .unwrap()
        .unwrap();
    let mounts = env.snap.prepare("busybox", busybox.chain_ids.last()).await.unwrap();
    let m = mount_all(&mounts, &env.mnt()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::symlink_metadata(m.target().join(p)).unwrap().ino();
    assert_eq!(ino("bin/ls"), ino("bin/sh"));
    assert!(
        std::fs::read_to_string(m.target().join("etc/passwd"))
            .unwrap()
            .contains("www-data:x:33:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_images_unpack_as_their_recipes_say() {
    if !registry_up() {
        eprintln!("SKIP: no local registry on {ADDR}");
        return;
    }
    for snapshotter in ["overlayfs", "native"] {
        let env = env_with_mirrors(snapshotter);
        let auth = PullAuth::default();
        let pull = |n: &'static str| {
            let images = env.images.clone();
            let auth = auth.clone();
            async move { images.pull(&format!("{ADDR}/berth-test/{n}"), &auth).await.unwrap() }
        };

        let whiteout = pull("whiteout:latest").await;
        let mounts = env.snap.prepare("w", whiteout.chain_ids.last()).await.unwrap();
        {
            let m = mount_all(&mounts, &env.mnt()).unwrap();
            let root = m.target();
            assert_eq!(
                names(&root.join("data")),
                ["added", "keep", "opaque"].map(String::from).into(),
                "{snapshotter}"
            );
            assert_eq!(
                names(&root.join("data/opaque")),
                ["+sorted-before-opq", "new"].map(String::from).into(),
                "{snapshotter}"
            );
            assert_eq!(
                std::fs::read_to_string(root.join("etc/berth-layer")).unwrap().trim(),
                "3"
            );
        }

        let many = pull("many-layers:latest").await;
        assert_eq!(many.chain_ids.len(), 120);
        let mounts = env.snap.prepare("m", many.chain_ids.last()).await.unwrap();
        {
            let m = mount_all(&mounts, &env.mnt()).unwrap();
            assert_eq!(
                std::fs::read_to_string(m.target().join("layers/top")).unwrap().trim(),
                "120"
            );
            assert_eq!(names(&m.target().join("layers")).len(), 120, "002..120 and top");
        }

        for mode in ["gzip", "zstd", "uncompressed", "mixed"] {
            let image = env
                .images
                .pull(&format!("{ADDR}/berth-test/compression:{mode}"), &auth)
                .await
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let key = format!("c-{mode}");
            let mounts = env.snap.prepare(&key, image.chain_ids.last()).await.unwrap();
            let m = mount_all(&mounts, &env.mnt()).unwrap();
            assert!(m.target().join("compression/one").is_file(), "{mode}");
            assert!(m.target().join("compression/two").is_file(), "{mode}");
            assert!(m.target().join("bin/sh").exists(), "{mode}");
        }

        let multi = pull("multiarch:latest").await;
        let mounts = env.snap.prepare("ma", multi.chain_ids.last()).await.unwrap();
        let m = mount_all(&mounts, &env.mnt()).unwrap();
        assert_eq!(
            std::fs::read_to_string(m.target().join("marker")).unwrap(),
            "linux/amd64"
        );
    }
}

/// A benchmark more than a test: `cargo test --release -p berth-images --test local_registry -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: pulls berth-test/big (~200 MB, built with make-test-images.sh --big)"]
async fn pull_throughput_of_the_big_image() {
    if !registry_up() {
        eprintln!("SKIP: no local registry on {ADDR}");
        return;
    }
    let env = env_with_mirrors("overlayfs");
    let started = std::time::Instant::now();
    let image = env
        .images
        .pull(&format!("{ADDR}/berth-test/big:latest"), &PullAuth::default())
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let usage = env.snap.fs_info().await.unwrap().layers;
    eprintln!(
        "pulled {} compressed bytes in {} layers, {} bytes unpacked, in {secs:.2} s ({:.1} MB/s unpacked)",
        image.size,
        image.chain_ids.len(),
        usage.bytes,
        usage.bytes as f64 / secs / 1e6
    );
}
