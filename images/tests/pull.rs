//! Pulls from an in-test registry on 127.0.0.1 through hosts.toml mirrors, with each snapshotter: the
//! rootfs matches the image; bad blobs, other platforms and malicious layers fail cleanly; remove + GC
//! frees exactly the unshared layers; auth; import.

mod common;

use std::io::Write;

use berth_core::Table;
use berth_core::model::{ChainId, Image};
use berth_images::snapshot_testsuite::{LayerBuilder, base_layer, check_rootfs, mount_all, second_layer};
use berth_images::{ErrorKind, PullAuth, runtime_config};
use common::{Auth, Compress, Env, Registry, mirror, push_image, push_index};
use serde_json::json;

macro_rules! with_each_snapshotter {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn overlayfs() {
                super::$name("overlayfs").await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                super::$name("native").await
            }
        }
    )*};
}

with_each_snapshotter!(
    oci_index_gzip_zstd_rootfs_matches,
    docker_manifest_list_uncompressed,
    bad_blobs_and_platforms_fail_cleanly,
    malicious_layers_fail_and_canary_is_untouched,
    remove_then_gc_keeps_shared_layers,
    import_oci_layout_and_docker_save,
);

fn runtime() -> serde_json::Value {
    json!({"User": "1000:1000", "Env": ["PATH=/bin", "A=b"], "Entrypoint": ["/bin/tool"], "Cmd": ["-x"],
        "WorkingDir": "/home/user", "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}},
        "StopSignal": "SIGQUIT", "Labels": {"l": "v"}})
}

async fn check_mounted_rootfs(env: &Env, image: &Image, key: &str) {
    let mounts = env.snap.prepare(key, image.chain_ids.last()).await.unwrap();
    let m = mount_all(&mounts, &env.mnt()).unwrap();
    check_rootfs(m.target());
    drop(m);
    env.snap.remove(key).await.unwrap();
}

async fn oci_index_gzip_zstd_rootfs_matches(snapshotter: &str) {
    let reg = Registry::start().await;
    let env = Env::new(snapshotter);
    mirror(&env.hosts_dir(), "docker.io", &[&format!("http://{}", reg.addr)]);
    let amd = push_image(
        &reg,
        "library/busybox",
        None,
        &[(base_layer(), Compress::Gzip), (second_layer(), Compress::Zstd)],
        runtime(),
        false,
    );
    let arm = push_image(
        &reg,
        "library/busybox",
        None,
        &[(b"x".to_vec(), Compress::None)],
        json!({}),
        false,
    );
    let index = push_index(
        &reg,
        "library/busybox",
        "latest",
        &[(&arm.manifest, "linux", "arm64"), (&amd.manifest, "linux", "amd64")],
        false,
    );

    let image = env.images.pull("busybox", &PullAuth::default()).await.unwrap();
    assert_eq!(image.id, amd.config);
    assert_eq!(image.repo_tags, ["docker.io/library/busybox:latest"]);
    assert_eq!(image.repo_digests, [format!("docker.io/library/busybox@{index}")]);
    assert_eq!(image.manifest_digest, amd.manifest);
    assert_eq!(image.chain_ids, ChainId::from_diff_ids(&amd.diff_ids));
    assert!(image.size > 0);
    // The mirror was asked, with the upstream's namespace; the arm64 layer never was.
    let reqs = reg.requests();
    assert!(
        reqs.iter()
            .any(|r| r.contains("/v2/library/busybox/manifests/latest?ns=docker.io")),
        "{reqs:?}"
    );
    assert!(!reqs.iter().any(|r| r.contains(&arm.layers[0])));

    for name in [
        "busybox",
        "docker.io/library/busybox:latest",
        &image.id,
        image.id.trim_start_matches("sha256:"),
        &format!("busybox@{index}"),
    ] {
        let found = env
            .images
            .status(name)
            .unwrap()
            .unwrap_or_else(|| panic!("status {name}"));
        assert_eq!(found.id, image.id, "{name}");
    }
    assert!(env.images.status("busybox:other").unwrap().is_none());
    assert_eq!(env.images.list(None).unwrap().len(), 1);
    assert_eq!(env.images.list(Some("busybox")).unwrap().len(), 1);
    assert!(env.images.list(Some("nothere")).unwrap().is_empty());

    let rc = runtime_config(&image).unwrap();
    assert_eq!(rc.entrypoint, ["/bin/tool"]);
    assert_eq!(rc.cmd, ["-x"]);
    assert_eq!(rc.env, ["PATH=/bin", "A=b"]);
    assert_eq!(rc.working_dir, "/home/user");
    assert_eq!(rc.uid_or_username(), (Some(1000), String::new()));
    assert_eq!(rc.stop_signal, "SIGQUIT");
    assert!(rc.exposed_ports.contains_key("80/tcp") && rc.volumes.contains_key("/data"));
    assert_eq!(rc.labels["l"], "v");

    let verbose = env.images.verbose_info(&image).unwrap();
    let info: serde_json::Value = serde_json::from_str(&verbose["info"]).unwrap();
    assert_eq!(info["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        info["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(info["imageSpec"]["config"]["StopSignal"], "SIGQUIT");

    check_mounted_rootfs(&env, &image, "c1").await;
    let fs = env.images.fs_info().await.unwrap();
    assert!(fs.images.bytes > 0 && fs.images.inodes > 10, "{fs:?}");
    // The container snapshot "c1" (removed by the check) holds nothing now.
    assert_eq!(fs.containers, berth_core::plugin::snapshot::Usage::default(), "{fs:?}");

    // Pulling again downloads no layer and keeps one record.
    reg.clear_requests();
    let again = env
        .images
        .pull("docker.io/library/busybox:latest", &PullAuth::default())
        .await
        .unwrap();
    assert_eq!(again.id, image.id);
    assert!(
        !reg.requests().iter().any(|r| r.contains("/blobs/")),
        "{:?}",
        reg.requests()
    );
    assert_eq!(env.store.list::<Image>(Table::Images).unwrap().len(), 1);
}

async fn docker_manifest_list_uncompressed(snapshotter: &str) {
    let reg = Registry::start().await;
    let env = Env::new(snapshotter);
    // A dead mirror first: the next one is used.
    mirror(
        &env.hosts_dir(),
        "registry.k8s.io",
        &["http://127.0.0.1:9", &format!("http://{}", reg.addr)],
    );
    let img = push_image(
        &reg,
        "e2e-test-images/busybox",
        None,
        &[(base_layer(), Compress::None), (second_layer(), Compress::Gzip)],
        runtime(),
        true,
    );
    push_index(
        &reg,
        "e2e-test-images/busybox",
        "1.29-2",
        &[(&img.manifest, "linux", "amd64")],
        true,
    );
    let image = env
        .images
        .pull("registry.k8s.io/e2e-test-images/busybox:1.29-2", &PullAuth::default())
        .await
        .unwrap();
    assert_eq!(image.id, img.config);
    check_mounted_rootfs(&env, &image, "c").await;

    // A direct pull by digest from the loopback registry (plain http without any hosts.toml).
    let by_digest = format!("{}/e2e-test-images/busybox@{}", reg.addr, img.manifest);
    let same = env.images.pull(&by_digest, &PullAuth::default()).await.unwrap();
    assert_eq!(same.id, image.id);
    assert!(
        same.repo_digests
            .contains(&format!("{}/e2e-test-images/busybox@{}", reg.addr, img.manifest))
    );
    assert_eq!(env.images.list(None).unwrap().len(), 1);
}

async fn bad_blobs_and_platforms_fail_cleanly(snapshotter: &str) {
    let reg = Registry::start().await;
    let env = Env::new(snapshotter);
    let img = push_image(
        &reg,
        "t/bad",
        Some("1"),
        &[(base_layer(), Compress::Gzip), (second_layer(), Compress::Gzip)],
        runtime(),
        false,
    );
    let name = format!("{}/t/bad:1", reg.addr);
    let nothing_left = |env: &Env| {
        assert!(env.images.list(None).unwrap().is_empty());
        let (blobs, ingest) = env.content_files();
        assert_eq!(ingest, 0, "no half blob in ingest");
        blobs
    };

    // A blob whose bytes do not match its digest (same size).
    let mut wrong = reg.requests().len().to_le_bytes().to_vec();
    wrong.resize(common::compress(&second_layer(), Compress::Gzip).0.len(), 7);
    reg.corrupt(&img.layers[1], wrong);
    let err = env.images.pull(&name, &PullAuth::default()).await.unwrap_err();
    assert!(err.to_string().contains(&img.layers[1]), "{err}");
    assert!(err.to_string().contains("digest"), "{err}");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let blobs = nothing_left(&env);
    assert!(!env.images.content().has(&img.layers[1]));
    assert!(blobs <= 3, "manifest, config and the good layer at most");

    // A truncated blob.
    reg.heal();
    reg.truncate(&img.layers[1], 10);
    let err = env.images.pull(&name, &PullAuth::default()).await.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(!env.images.content().has(&img.layers[1]));
    nothing_left(&env);
    assert!(
        !env.snap
            .has_layer(&ChainId::from_diff_ids(&img.diff_ids)[1])
            .await
            .unwrap()
    );

    // The next pull succeeds.
    reg.heal();
    let image = env.images.pull(&name, &PullAuth::default()).await.unwrap();
    check_mounted_rootfs(&env, &image, "c").await;

    // An index with another platform only.
    let arm = push_image(
        &reg,
        "t/arm",
        None,
        &[(b"x".to_vec(), Compress::None)],
        json!({}),
        false,
    );
    push_index(&reg, "t/arm", "1", &[(&arm.manifest, "linux", "arm64")], false);
    let err = env
        .images
        .pull(&format!("{}/t/arm:1", reg.addr), &PullAuth::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no manifest for linux/amd64") && err.to_string().contains("linux/arm64"),
        "{err}"
    );
    assert!(env.images.status(&format!("{}/t/arm:1", reg.addr)).unwrap().is_none());
    // A single manifest whose config says arm64.
    let config = common::config_json(&[berth_core::model::sha256_digest(b"x")], json!({}), "arm64");
    let config_digest = reg.put_blob(&config);
    let layer = reg.put_blob(b"x");
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}]}))
    .unwrap();
    reg.put_manifest("t/arm", Some("single"), mt, &manifest);
    let err = env
        .images
        .pull(&format!("{}/t/arm:single", reg.addr), &PullAuth::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    assert!(!env.images.content().has(&layer), "nothing of it is downloaded");

    // Not found anywhere.
    let err = env
        .images
        .pull(&format!("{}/t/none:1", reg.addr), &PullAuth::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // A digest reference whose manifest does not hash to it.
    let wrong_digest = format!("{}/t/bad@sha256:{}", reg.addr, "0".repeat(64));
    assert!(env.images.pull(&wrong_digest, &PullAuth::default()).await.is_err());
}

async fn malicious_layers_fail_and_canary_is_untouched(snapshotter: &str) {
    let reg = Registry::start().await;
    let env = Env::new(snapshotter);
    let canary = env.dir.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), b"keep").unwrap();
    let c = canary.display().to_string();
    let evil: Vec<(&str, Vec<u8>)> = vec![
        (
            "traversal",
            LayerBuilder::new().raw_file("../../../../canary/pwned", b"x").build(),
        ),
        (
            "absolute",
            LayerBuilder::new().raw_file(&format!("{c}/pwned"), b"x").build(),
        ),
        (
            "symlink",
            LayerBuilder::new()
                .symlink("s", &c)
                .file("s/pwned", b"x", 0o644)
                .build(),
        ),
        (
            "hardlink",
            LayerBuilder::new()
                .raw_link(tar::EntryType::Link, "h", &format!("{c}/keep"))
                .build(),
        ),
    ];
    for (what, layer) in evil {
        push_image(
            &reg,
            "t/evil",
            Some(what),
            &[(base_layer(), Compress::Gzip), (layer, Compress::Gzip)],
            json!({}),
            false,
        );
        let err = env
            .images
            .pull(&format!("{}/t/evil:{what}", reg.addr), &PullAuth::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("layer entry"), "{what}: {err}");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{what}: {err}");
        assert!(env.images.list(None).unwrap().is_empty(), "{what}");
    }
    let names: Vec<_> = std::fs::read_dir(&canary)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"]);
    assert_eq!(std::fs::read(canary.join("keep")).unwrap(), b"keep");
    let walked = env.snap.walk().await.unwrap();
    assert_eq!(walked.len(), 1, "only the base layer, shared by all: {walked:?}");
    let report = env.images.gc().await.unwrap();
    assert_eq!(report.layers_removed.len(), 1);
    assert!(env.snap.walk().await.unwrap().is_empty());
}

async fn remove_then_gc_keeps_shared_layers(snapshotter: &str) {
    let reg = Registry::start().await;
    let env = Env::new(snapshotter);
    let shared = base_layer();
    let only_a = LayerBuilder::new().file("a", b"a", 0o644).build();
    let only_b = LayerBuilder::new().file("b", b"b", 0o644).build();
    let a = push_image(
        &reg,
        "t/a",
        Some("1"),
        &[(shared.clone(), Compress::Gzip), (only_a, Compress::Gzip)],
        json!({}),
        false,
    );
    let b = push_image(
        &reg,
        "t/b",
        Some("1"),
        &[(shared, Compress::Gzip), (only_b, Compress::Gzip)],
        json!({}),
        false,
    );
    let ia = env
        .images
        .pull(&format!("{}/t/a:1", reg.addr), &PullAuth::default())
        .await
        .unwrap();
    reg.clear_requests();
    let ib = env
        .images
        .pull(&format!("{}/t/b:1", reg.addr), &PullAuth::default())
        .await
        .unwrap();
    assert!(
        !reg.requests().iter().any(|r| r.contains(&b.layers[0])),
        "the shared layer is not downloaded again"
    );
    assert_eq!(ia.chain_ids[0], ib.chain_ids[0]);
    assert_eq!(env.snap.walk().await.unwrap().len(), 3);

    assert!(env.images.remove(&format!("{}/t/a:1", reg.addr)).await.unwrap());
    assert!(
        !env.images.remove(&format!("{}/t/a:1", reg.addr)).await.unwrap(),
        "idempotent"
    );
    assert!(!env.images.remove(&ia.id).await.unwrap());
    assert!(!env.snap.has_layer(&ia.chain_ids[1]).await.unwrap());
    assert!(env.snap.has_layer(&ib.chain_ids[0]).await.unwrap());
    assert!(env.snap.has_layer(&ib.chain_ids[1]).await.unwrap());
    for gone in [&a.layers[1], &a.config, &a.manifest] {
        assert!(!env.images.content().has(gone), "{gone}");
    }
    assert!(env.images.content().has(&b.layers[0]));
    // B still works, and a container over it keeps its layers through GC.
    let mounts = env.snap.prepare("cb", ib.chain_ids.last()).await.unwrap();
    {
        let m = mount_all(&mounts, &env.mnt()).unwrap();
        assert_eq!(std::fs::read(m.target().join("b")).unwrap(), b"b");
        assert!(m.target().join("etc/passwd").exists());
    }
    assert!(env.images.remove(&ib.id).await.unwrap());
    assert_eq!(env.snap.walk().await.unwrap().len(), 3, "in use by the container");
    env.snap.remove("cb").await.unwrap();
    env.images.gc().await.unwrap();
    assert!(env.snap.walk().await.unwrap().is_empty());
    assert_eq!(env.content_files(), (0, 0));
}

#[tokio::test]
async fn auth_basic_and_bearer_token() {
    for auth in [
        Auth::Basic("u".into(), "p".into()),
        Auth::Bearer {
            user: "u".into(),
            pass: "p".into(),
            token: "tok-123".into(),
        },
    ] {
        let reg = Registry::start().await;
        let env = Env::new("overlayfs");
        let name = push_private(&reg);
        reg.set_auth(auth.clone());
        let err = env.images.pull(&name, &PullAuth::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{auth:?}: {err}");
        let bad = PullAuth {
            username: "u".into(),
            password: "wrong".into(),
            ..Default::default()
        };
        assert!(env.images.pull(&name, &bad).await.is_err());
        let good = PullAuth {
            auth: "dTpw".into(), // base64("u:p"), as kubelet passes docker config auths
            ..Default::default()
        };
        let image = env
            .images
            .pull(&name, &good)
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert_eq!(image.chain_ids.len(), 1);
        if let Auth::Bearer { token, .. } = &auth {
            assert!(reg.requests().iter().any(|r| r.starts_with("GET /token?")));
            // CRI's registry_token is that bearer token itself: sent as it is, no token service asked.
            env.images.remove(&name).await.unwrap();
            reg.clear_requests();
            let bearer = PullAuth {
                registry_token: token.clone(),
                ..Default::default()
            };
            env.images.pull(&name, &bearer).await.unwrap();
            assert!(
                !reg.requests().iter().any(|r| r.contains("/token")),
                "{:?}",
                reg.requests()
            );
            let stale = PullAuth {
                registry_token: "stale".into(),
                ..Default::default()
            };
            env.images.remove(&name).await.unwrap();
            let err = env.images.pull(&name, &stale).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        }
    }
}

/// A one-layer image `t/private:1` (to be put behind auth); returns its name.
fn push_private(reg: &Registry) -> String {
    push_image(
        reg,
        "t/private",
        Some("1"),
        &[(base_layer(), Compress::Gzip)],
        json!({}),
        false,
    );
    format!("{}/t/private:1", reg.addr)
}

#[tokio::test]
async fn identity_token_is_traded_for_an_access_token() {
    let reg = Registry::start().await;
    let env = Env::new("overlayfs");
    let name = push_private(&reg);
    reg.set_auth(Auth::Identity {
        refresh: "refresh-abc".into(),
        token: "access-xyz".into(),
    });
    let identity = |t: &str| PullAuth {
        identity_token: t.into(),
        ..Default::default()
    };
    let err = env.images.pull(&name, &identity("wrong")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    reg.clear_requests();
    let image = env.images.pull(&name, &identity("refresh-abc")).await.unwrap();
    assert_eq!(image.chain_ids.len(), 1);
    assert!(
        reg.requests().iter().any(|r| r == "POST /token"),
        "{:?}",
        reg.requests()
    );
}

#[tokio::test]
async fn decompression_bomb_stops_at_the_limit() {
    let reg = Registry::start().await;
    let limits = berth_core::plugin::snapshot::UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };
    let env = Env::with_limits("overlayfs", limits);
    let bomb = LayerBuilder::new().file("zeros", &vec![0u8; 8 << 20], 0o644).build();
    push_image(&reg, "t/bomb", Some("1"), &[(bomb, Compress::Gzip)], json!({}), false);
    let err = env
        .images
        .pull(&format!("{}/t/bomb:1", reg.addr), &PullAuth::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit of 1048576 bytes"), "{err}");
    assert!(env.snap.walk().await.unwrap().is_empty());
}

#[tokio::test]
async fn pulls_an_image_of_120_layers() {
    let reg = Registry::start().await;
    let env = Env::new("overlayfs");
    let layers: Vec<(Vec<u8>, Compress)> = (0..120)
        .map(|i| {
            let l = LayerBuilder::new()
                .file(&format!("f{i:03}"), format!("{i}").as_bytes(), 0o644)
                .file("top", format!("{i}").as_bytes(), 0o644)
                .build();
            (l, Compress::Gzip)
        })
        .collect();
    push_image(&reg, "t/tall", Some("1"), &layers, json!({}), false);
    let image = env
        .images
        .pull(&format!("{}/t/tall:1", reg.addr), &PullAuth::default())
        .await
        .unwrap();
    assert_eq!(image.chain_ids.len(), 120);
    let mounts = env.snap.prepare("c", image.chain_ids.last()).await.unwrap();
    let m = mount_all(&mounts, &env.mnt()).unwrap();
    assert_eq!(std::fs::read(m.target().join("top")).unwrap(), b"119");
    assert_eq!(std::fs::read(m.target().join("f000")).unwrap(), b"0");
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

async fn import_oci_layout_and_docker_save(snapshotter: &str) {
    let env = Env::new(snapshotter);
    let (l1, l2) = (base_layer(), second_layer());
    let (gz, _) = common::compress(&l1, Compress::Gzip);
    let diff_ids = vec![
        berth_core::model::sha256_digest(&l1),
        berth_core::model::sha256_digest(&l2),
    ];
    let config = common::config_json(&diff_ids, runtime(), "amd64");
    let d = berth_core::model::sha256_digest;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(&config), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(&gz), "size": gz.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(&l2), "size": l2.len()},
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(&manifest), "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "docker.io/library/imported:1", "org.opencontainers.image.ref.name": "1"}}]}))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", d(b).trim_start_matches("sha256:"));
    let oci = tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        (&blob(&manifest), &manifest),
        (&blob(&config), &config),
        (&blob(&gz), &gz),
        (&blob(&l2), &l2),
    ]);
    let path = env.dir.path().join("oci.tar");
    std::fs::File::create(&path).unwrap().write_all(&oci).unwrap();
    let images = env.images.import(&path).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, d(&config));
    assert_eq!(images[0].repo_tags, ["docker.io/library/imported:1"]);
    let image = env.images.status("imported:1").unwrap().unwrap();
    check_mounted_rootfs(&env, &image, "c-oci").await;

    // docker save (classic layout): uncompressed layer tars in directories, config by file name.
    let env = Env::new(snapshotter);
    let docker_manifest = serde_json::to_vec(&json!([{"Config": "cfg.json",
        "RepoTags": ["saved:2", "quay.io/x/saved:3"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]))
    .unwrap();
    let saved = tar_of(&[
        ("manifest.json", &docker_manifest),
        ("cfg.json", &config),
        ("l1/layer.tar", &l1),
        ("l2/layer.tar", &l2),
    ]);
    let path = env.dir.path().join("saved.tar");
    std::fs::write(&path, &saved).unwrap();
    let images = env.images.import(&path).await.unwrap();
    assert_eq!(images[0].id, d(&config));
    let mut tags = images[0].repo_tags.clone();
    tags.sort();
    assert_eq!(tags, ["docker.io/library/saved:2", "quay.io/x/saved:3"]);
    let image = env.images.status("quay.io/x/saved:3").unwrap().unwrap();
    check_mounted_rootfs(&env, &image, "c-saved").await;
    assert!(env.images.verbose_info(&image).unwrap()["info"].contains("rootfs.diff.tar"));

    // A corrupt archive (a blob named for another digest) is refused.
    let broken = tar_of(&[("index.json", &index), (&blob(&manifest), b"not the manifest")]);
    std::fs::write(&path, &broken).unwrap();
    assert!(env.images.import(&path).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_leaves_no_half_blob_and_the_next_succeeds() {
    let reg = Registry::start().await;
    let env = Env::new("overlayfs");
    let big = LayerBuilder::new()
        .file("first", b"1", 0o644)
        .file("big", &vec![7u8; 1 << 20], 0o644)
        .build();
    let img = push_image(
        &reg,
        "t/slow",
        Some("1"),
        &[(base_layer(), Compress::Gzip), (big, Compress::None)],
        json!({}),
        false,
    );
    reg.stall(&img.layers[1], 4096);
    let name = format!("{}/t/slow:1", reg.addr);
    let anonymous = PullAuth::default();
    let pull = env.images.pull(&name, &anonymous);
    let snapshots = env.dir.path().join("root/snapshotter/overlayfs/snapshots");
    let unpacking = || {
        std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "tmp"))
    };
    let watch = async {
        // The layer is being unpacked while its blob is still downloading (stalled after 4 KiB).
        loop {
            if let Some(dir) = unpacking()
                && dir.join("fs/first").exists()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = pull => panic!("the pull cannot finish while a blob stalls"),
        r = tokio::time::timeout(std::time::Duration::from_secs(5), watch) => r.expect("unpacking starts during the download"),
    }
    // The aborted download drops its ingest file.
    let mut ingest = usize::MAX;
    for _ in 0..50 {
        ingest = env.content_files().1;
        if ingest == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ingest, 0);
    for _ in 0..50 {
        if unpacking().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(unpacking(), None, "the half-unpacked layer is dropped");
    assert!(!env.images.content().has(&img.layers[1]));
    assert!(env.images.list(None).unwrap().is_empty());
    reg.heal();
    let image = env.images.pull(&name, &PullAuth::default()).await.unwrap();
    assert_eq!(image.chain_ids.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_everything() {
    let reg = Registry::start().await;
    let env = Env::new("overlayfs");
    let img = push_image(
        &reg,
        "t/same",
        Some("1"),
        &[(base_layer(), Compress::Gzip), (second_layer(), Compress::Gzip)],
        json!({}),
        false,
    );
    let name = format!("{}/t/same:1", reg.addr);
    let anonymous = PullAuth::default();
    let (a, b) = tokio::join!(env.images.pull(&name, &anonymous), env.images.pull(&name, &anonymous));
    assert_eq!(a.unwrap().id, b.unwrap().id);
    assert_eq!(env.snap.walk().await.unwrap().len(), 2);
    assert_eq!(env.images.list(None).unwrap().len(), 1);
    let prefix = &img.config["sha256:".len().."sha256:".len() + 12];
    assert_eq!(env.images.status(prefix).unwrap().unwrap().id, img.config);
    check_mounted_rootfs(&env, &env.images.status(&name).unwrap().unwrap(), "c").await;
}
