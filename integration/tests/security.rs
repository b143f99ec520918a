//! Socket and file security, and hostile mount and log paths, against a real berthd: the CRI socket is 0660
//! root, the streaming server listens on loopback, berth's own state is not world-writable, a log path cannot
//! leave the pod's log directory, and no mount destination reaches outside the container's rootfs or over its
//! /proc.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_cri::api::{ExecRequest, ImageSpec, PullImageRequest};
use berth_integration::{Berthd, BerthdOptions, ensure_test_images, ok_stdout, unique};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn write_json(dir: &Path, name: &str, v: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn pod(b: &Berthd, name: &str) -> (String, String) {
    let dir = b.dir.path();
    let cfg = write_json(
        dir,
        &format!("{name}-pod.json"),
        serde_json::json!({
            "metadata": {"name": name, "namespace": "sec", "uid": unique("uid-"), "attempt": 0},
            "log_directory": dir.join("logs").join(name).display().to_string(),
            "linux": {}
        }),
    );
    let id = ok_stdout(&b.crictl(&["runp", &cfg]), "crictl runp").trim().to_string();
    (id, cfg)
}

fn ctr(b: &Berthd, name: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "metadata": {"name": name},
        "image": {"image": BUSYBOX},
        "command": ["/bin/sh", "-c", "exec sleep 1000"],
        "log_path": format!("{name}.log"),
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    write_json(b.dir.path(), &format!("{name}-ctr.json"), v)
}

fn start() -> Berthd {
    ensure_test_images();
    let b = Berthd::start(BerthdOptions::default()).unwrap();
    ok_stdout(&b.crictl(&["pull", BUSYBOX]), "crictl pull");
    b
}

/// Every file and directory under `dir` (not crossing into other filesystems: pins and rootfs mounts) that
/// anyone may write.
fn world_writable(dir: &Path, dev: u64, found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.dev() != dev || m.file_type().is_symlink() {
            continue;
        }
        // A socket's mode bits do not grant connect on Linux for directories that block traversal; still, none
        // of berth's should be world-writable.
        if m.permissions().mode() & 0o002 != 0 {
            found.push(format!("{} ({:o})", p.display(), m.permissions().mode() & 0o7777));
        }
        if m.is_dir() {
            world_writable(&p, dev, found);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_streaming_and_state_files_are_not_open_to_others() {
    let b = start();
    let m = std::fs::metadata(&b.socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660, "CRI socket mode");
    assert_eq!((m.uid(), m.gid()), (0, 0), "CRI socket owner");

    let (pod_id, pod_cfg) = pod(&b, "files");
    let c = ctr(&b, "app", serde_json::json!({}));
    let id = ok_stdout(&b.crictl(&["create", &pod_id, &c, &pod_cfg]), "crictl create")
        .trim()
        .to_string();
    ok_stdout(&b.crictl(&["start", &id]), "crictl start");

    // The streaming server answers on loopback only, with a URL made for one use.
    let mut rt = b.runtime().await.unwrap();
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "streaming URL {url}");

    // berth's own state and metadata: nothing world-writable (image content inside snapshots may be, as the
    // image says: /tmp is 1777 in most images; the snapshot directories themselves are checked).
    let mut found = Vec::new();
    for dir in [b.state(), b.root()] {
        let dev = std::fs::metadata(&dir).unwrap().dev();
        let mut here = Vec::new();
        world_writable(&dir, dev, &mut here);
        found.extend(
            here.into_iter()
                .filter(|p| !p.contains("/fs/") && !p.contains("/upper/")),
        );
    }
    assert!(found.is_empty(), "world-writable state files:\n{}", found.join("\n"));
    let _ = b.crictl(&["rmp", "-f", &pod_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_paths_and_mount_destinations_stay_inside() {
    let b = start();
    let (pod_id, pod_cfg) = pod(&b, "paths");

    // A log path leaving the pod's log directory is refused, naming the field.
    for bad in ["../escape.log", "/var/log/escape.log", "a/../../escape.log"] {
        let c = ctr(&b, "log", serde_json::json!({"log_path": bad}));
        let out = b.crictl(&["create", &pod_id, &c, &pod_cfg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "log_path {bad:?} accepted");
        assert!(
            err.contains("InvalidArgument") && err.contains("log_path"),
            "log_path {bad:?}: {err}"
        );
    }
    assert!(!b.dir.path().join("logs/escape.log").exists());

    // A mount over /proc is refused.
    let host_dir = b.dir.path().join("host-src");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("marker"), "from the host\n").unwrap();
    let c = ctr(
        &b,
        "proc",
        serde_json::json!({"mounts": [{"host_path": host_dir.display().to_string(), "container_path": "/proc/sys"}]}),
    );
    let out = b.crictl(&["create", &pod_id, &c, &pod_cfg]);
    assert!(!out.status.success(), "a mount over /proc/sys was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"));

    // `..` in a destination stays inside the rootfs: the host's /tmp never sees the mount point.
    let canary = format!("berth-canary-{}", unique(""));
    let dest = format!("/../../../../tmp/{canary}");
    let c = ctr(
        &b,
        "dots",
        serde_json::json!({"mounts": [{"host_path": host_dir.display().to_string(), "container_path": dest}]}),
    );
    let id = ok_stdout(&b.crictl(&["create", &pod_id, &c, &pod_cfg]), "crictl create")
        .trim()
        .to_string();
    ok_stdout(&b.crictl(&["start", &id]), "crictl start");
    let seen = ok_stdout(
        &b.crictl(&["exec", "-s", &id, "cat", &format!("/tmp/{canary}/marker")]),
        "exec cat",
    );
    assert_eq!(seen.trim(), "from the host");
    assert!(
        !Path::new("/tmp").join(&canary).exists(),
        "the mount point escaped to the host's /tmp"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&canary),
        "the container's mount is in the host mount table"
    );

    // An image pulled by name with a path-like tag is a bad reference, not a path.
    let mut im = b.images().await.unwrap();
    let r = im
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: "127.0.0.1:5000/../../etc/passwd".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
    let _ = b.crictl(&["rmp", "-f", &pod_id]);
}
