//! The CRI ImageService through a real berthd, crictl, and the air-gapped import.

use std::process::Command;

use berth_integration::{Berthd, BerthdOptions, built, ensure_test_images, ok_stdout};

#[test]
fn pull_list_inspect_remove_with_crictl() {
    ensure_test_images();
    let b = Berthd::start(BerthdOptions::default()).unwrap();
    let image = "docker.io/library/busybox:1.36";
    ok_stdout(&b.crictl(&["pull", "busybox:1.36"]), "crictl pull (short name)");
    let list = ok_stdout(&b.crictl(&["images", "-o", "json"]), "crictl images");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let tags: Vec<&str> = list["images"][0]["repoTags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tags, [image]);
    let inspect = ok_stdout(&b.crictl(&["inspecti", image]), "crictl inspecti");
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert!(
        inspect["info"]["imageSpec"]["rootfs"]["diff_ids"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{inspect}"
    );
    let fs = ok_stdout(&b.crictl(&["imagefsinfo", "-o", "json"]), "crictl imagefsinfo");
    let fs: serde_json::Value = serde_json::from_str(&fs).unwrap();
    // Images (blobs and layers) and containers' writable layers, both in the snapshotter's root.
    let root = b.root().join("snapshotter/overlayfs").display().to_string();
    for (kind, min_bytes) in [("imageFilesystems", 1u64), ("containerFilesystems", 0)] {
        let usage = &fs["status"][kind][0];
        assert_eq!(usage["fsId"]["mountpoint"], root.as_str(), "{kind}: {fs}");
        let used: u64 = usage["usedBytes"]["value"].as_str().map_or(0, |v| v.parse().unwrap());
        assert!(used >= min_bytes, "{kind}: {fs}");
    }
    ok_stdout(&b.crictl(&["rmi", image]), "crictl rmi");
    // Removing what is gone already is fine; an image that never existed is not found by inspecti.
    assert!(
        ok_stdout(&b.crictl(&["images", "-q"]), "crictl images")
            .trim()
            .is_empty()
    );
    assert!(!b.crictl(&["inspecti", image]).status.success());
}

#[test]
fn berthd_images_import_takes_an_oci_archive() {
    ensure_test_images();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "docker://127.0.0.1:5000/library/busybox:latest",
        ])
        .arg(format!(
            "oci-archive:{}:docker.io/library/busybox:imported",
            archive.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Import into a root no daemon runs on, then serve it.
    let mut b = Berthd::spawn(BerthdOptions::default()).unwrap();
    b.stop_with(nix::sys::signal::Signal::SIGKILL, std::time::Duration::from_secs(5));
    let out = Command::new(built("berthd"))
        .arg("--config")
        .arg(b.dir.path().join("config.toml"))
        .arg("--root")
        .arg(b.root())
        .arg("--state")
        .arg(b.state())
        .args(["images", "import"])
        .arg(&archive)
        .output()
        .unwrap();
    let printed = ok_stdout(&out, "berthd images import");
    assert!(printed.contains("docker.io/library/busybox:imported"), "{printed}");
    b.respawn("served.log").unwrap();
    let images = ok_stdout(&b.crictl(&["images"]), "crictl images");
    assert!(
        images.contains("docker.io/library/busybox") && images.contains("imported"),
        "{images}"
    );
}
