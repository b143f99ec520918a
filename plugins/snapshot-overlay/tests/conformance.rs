//! The shared snapshotter suite, plus what only overlay does: whiteouts as overlay whiteouts on disk.

use std::path::Path;
use std::sync::Arc;

use berth_core::plugin::snapshot::Snapshotter;
use berth_images::snapshot_testsuite::{Fixture, LayerBuilder, get_xattr, is_whiteout};
use berth_snapshot_overlay::OverlaySnapshotter;

fn overlay(root: &Path) -> Arc<dyn Snapshotter> {
    Arc::new(OverlaySnapshotter::open(root).unwrap())
}

berth_images::snapshotter_conformance!(overlay);

#[tokio::test]
async fn layers_hold_overlay_whiteouts_and_only_their_own_content() {
    let fx = Fixture::new(&overlay);
    let base = LayerBuilder::new()
        .dir("d", 0o755)
        .file("d/lower", b"l", 0o644)
        .file("gone", b"g", 0o644)
        .build();
    let top = LayerBuilder::new()
        .dir("d", 0o755)
        .opaque("d")
        .file("d/upper", b"u", 0o644)
        .whiteout("gone")
        .build();
    fx.apply(&[base, top]).await;
    // Layer directories are numbered in order of unpacking: 1 is the base, 2 the top.
    let l2 = fx.root().join("snapshots/2/fs");
    assert!(is_whiteout(&l2.join("gone")), "`.wh.gone` became a 0:0 char device");
    assert_eq!(
        get_xattr(&l2.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("d/lower").exists(), "a layer holds only its own content");
    assert!(!l2.join(".wh.gone").exists());
    assert!(!l2.join("d/.wh..wh..opq").exists());
    let l1 = fx.root().join("snapshots/1/fs");
    assert_eq!(std::fs::read(l1.join("d/lower")).unwrap(), b"l");
    assert!(get_xattr(&l1.join("d"), "trusted.overlay.opaque").is_none());
}

#[tokio::test]
async fn a_layer_cannot_forge_overlay_xattrs() {
    let fx = Fixture::new(&overlay);
    let layer = LayerBuilder::new()
        .file_xattrs("f", b"x", 0o644, &[("trusted.overlay.redirect", b"/etc")])
        .build();
    fx.apply(&[layer]).await;
    assert!(get_xattr(&fx.root().join("snapshots/1/fs/f"), "trusted.overlay.redirect").is_none());
}

#[test]
fn registers_under_its_name_and_root() {
    let mut registry = berth_core::Registry::new();
    berth_snapshot_overlay::register(&mut registry).unwrap();
    let kind = berth_core::plugin::PluginKind::Snapshotter;
    assert_eq!(registry.available(kind), ["overlayfs"]);
    let dir = tempfile::tempdir().unwrap();
    let config = berth_core::Config {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    let ctx = berth_core::InitContext {
        config: Arc::new(config),
        store: berth_core::Store::open(&dir.path().join("meta.redb")).unwrap(),
        events: berth_core::EventBus::new(16),
    };
    assert_eq!(
        ctx.plugin_root(kind, "overlayfs"),
        dir.path().join("snapshotter/overlayfs")
    );
    let snap = berth_snapshot_overlay::OverlaySnapshotter::open(&ctx.plugin_root(kind, "overlayfs")).unwrap();
    drop(snap);
    assert!(dir.path().join("snapshotter/overlayfs/snapshots").is_dir());
}
