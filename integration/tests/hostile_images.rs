//! Hostile images served by the local registry, pulled through CRI PullImage (crictl) from a real berthd:
//! each either works safely or fails with a clear error; a canary tree outside berth's root is never
//! written, /etc/shadow is not linked, and the disk use stays bounded (a 256 MiB unpack limit). The images
//! are built and pushed by `hack/push-hostile-images.py` (they aim at this test's canary directory).
//!
//! The 10 GiB sparse files (GNU and PAX encodings) are refused under that limit, which counts their real
//! size; under the default limit (64 GiB) they unpack with their holes, a few blocks on disk.

use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_integration::{Berthd, BerthdOptions};

const ADDR: &str = "127.0.0.1:5000";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Allocated bytes under `dir` (hard links counted once), and any character device other than the 0:0
/// overlay whiteout.
fn scan(dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>, bytes: &mut u64, devices: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if seen.insert((md.dev(), md.ino())) {
            *bytes += md.blocks() * 512;
        }
        if (md.file_type().is_char_device() || md.file_type().is_block_device()) && md.rdev() != 0 {
            devices.push(e.path().display().to_string());
        }
        if md.is_dir() {
            scan(&e.path(), seen, bytes, devices);
        }
    }
}

#[test]
fn hostile_images_through_pull_image_work_safely_or_fail_clearly() {
    if std::net::TcpStream::connect(ADDR).is_err() {
        eprintln!("SKIP: no local registry on {ADDR} (hack/local-registry.sh start)");
        return;
    }
    let canary = tempfile::Builder::new().prefix("berth-canary-").tempdir().unwrap();
    std::fs::write(canary.path().join("keep"), b"keep").unwrap();
    let shadow_before = std::fs::metadata("/etc/shadow").ok().map(|m| (m.nlink(), m.len()));
    let prefix = "berth-hostile";
    let out = Command::new("python3")
        .arg(repo_root().join("hack/push-hostile-images.py"))
        .args([ADDR, prefix])
        .arg(canary.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let b = Berthd::start(BerthdOptions {
        config: "[images]\nmax_layer_bytes = 268435456\n".into(),
        ..BerthdOptions::default()
    })
    .unwrap();
    // (case, Ok(()) = the pull works, Err(text) = it fails with an error containing text)
    let cases: [(&str, Result<(), &str>); 12] = [
        ("dotdot", Err("a path with a `..` component is refused")),
        ("absolute", Err("an absolute path is refused")),
        ("symlink", Err("goes through the symlink")),
        ("hardlink", Err("/etc/shadow\\\": an absolute target is refused")),
        // A device node is not created (skipped with a warning): the image works without it.
        ("chardev", Ok(())),
        // setuid bits stay inside the layer directory; whether they work is the container's matter.
        ("setuid", Ok(())),
        ("bomb", Err("more than the limit of 268435456 bytes")),
        // Their 10 GiB real size counts, not the 12 KiB of data blocks.
        ("sparse", Err("more than the limit of 268435456 bytes")),
        ("sparse-pax", Err("more than the limit of 268435456 bytes")),
        ("liar", Err("bytes, got")),
        ("bigenv", Ok(())),
        ("thousand", Ok(())),
    ];
    for (case, expected) in cases {
        let image = format!("{ADDR}/{prefix}/{case}:latest");
        let out = b.crictl(&["pull", &image]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match expected {
            Ok(()) => assert!(out.status.success(), "{case}: {stderr}"),
            Err(text) => {
                assert!(!out.status.success(), "{case}: pulled, should have failed");
                assert!(stderr.contains(text), "{case}: the error should say {text:?}: {stderr}");
            }
        }
    }
    let images = String::from_utf8_lossy(&b.crictl(&["images"]).stdout).to_string();
    for case in [
        "dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "bomb",
        "sparse",
        "sparse-pax",
        "liar",
    ] {
        assert!(
            !images.contains(&format!("{prefix}/{case}")),
            "{case} was recorded: {images}"
        );
    }
    let env = String::from_utf8_lossy(
        &b.crictl(&["inspecti", &format!("{ADDR}/{prefix}/bigenv:latest")])
            .stdout,
    )
    .to_string();
    assert!(env.len() > 1 << 20, "the 1 MiB variable is in the image config");

    // The canary and /etc/shadow are untouched.
    let names: Vec<_> = std::fs::read_dir(canary.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"]);
    assert_eq!(std::fs::read(canary.path().join("keep")).unwrap(), b"keep");
    assert_eq!(
        std::fs::metadata("/etc/shadow").ok().map(|m| (m.nlink(), m.len())),
        shadow_before
    );

    // Bounded disk use, no device node, and no unfinished layer left (unpacks of a failed pull end on
    // their own blocking threads: give them time).
    let snapshots = b.root().join("snapshotter/overlayfs/snapshots");
    let started = Instant::now();
    loop {
        let unfinished: Vec<String> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains('.'))
            .collect();
        if unfinished.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{unfinished:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut bytes, mut devices) = (0, Vec::new());
    scan(&b.root(), &mut Default::default(), &mut bytes, &mut devices);
    assert!(devices.is_empty(), "device nodes were created: {devices:?}");
    assert!(
        bytes < 64 << 20,
        "berth's root holds {bytes} bytes after the hostile pulls"
    );
    drop(b);

    sparse_files_keep_their_holes(prefix);
    assert_eq!(std::fs::read_dir(canary.path()).unwrap().count(), 1);
}

/// The files named `name` below `dir`.
fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_dir() {
            find_named(&e.path(), name, out);
        } else if e.file_name() == name {
            out.push(e.path());
        }
    }
}

/// Under the default unpack limit both 10 GiB sparse files are pulled; each is a 10 GiB file holding its
/// three 4 KiB blocks where they were, in a few allocated blocks (`st_blocks`, not the apparent size).
fn sparse_files_keep_their_holes(prefix: &str) {
    let b = Berthd::start(BerthdOptions::default()).unwrap();
    for case in ["sparse", "sparse-pax"] {
        let out = b.crictl(&["pull", &format!("{ADDR}/{prefix}/{case}:latest")]);
        assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut files = Vec::new();
    find_named(&b.root(), "sparse", &mut files);
    assert_eq!(files.len(), 2, "one unpacked file per layer: {files:?}");
    for path in files {
        let f = std::fs::File::open(&path).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), 10 << 30, "{}", path.display());
        assert!(
            md.blocks() * 512 < 1 << 20,
            "{}: {} bytes allocated",
            path.display(),
            md.blocks() * 512
        );
        let mut block = vec![0u8; 4096];
        for (at, text) in [(0, b"HEAD"), (5 << 30, b"MIDL"), ((10 << 30) - 4096, b"TAIL")] {
            f.read_exact_at(&mut block, at).unwrap();
            assert_eq!(block, text.repeat(1024), "{} at {at}", path.display());
        }
        f.read_exact_at(&mut block, 3 << 30).unwrap();
        assert!(
            block.iter().all(|b| *b == 0),
            "{}: a hole reads as zeros",
            path.display()
        );
    }
    let (mut bytes, mut devices) = (0, Vec::new());
    scan(&b.root(), &mut Default::default(), &mut bytes, &mut devices);
    assert!(
        bytes < 64 << 20,
        "berth's root holds {bytes} bytes after the sparse pulls"
    );
}
