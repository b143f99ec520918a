//! The shared snapshotter suite against the native (copying) snapshotter.

use std::path::Path;
use std::sync::Arc;

use berth_core::plugin::snapshot::Snapshotter;
use berth_snapshot_native::NativeSnapshotter;

fn native(root: &Path) -> Arc<dyn Snapshotter> {
    Arc::new(NativeSnapshotter::open(root).unwrap())
}

berth_images::snapshotter_conformance!(native);

#[test]
fn registers_under_its_name_and_root() {
    let mut registry = berth_core::Registry::new();
    berth_snapshot_native::register(&mut registry).unwrap();
    let kind = berth_core::plugin::PluginKind::Snapshotter;
    assert_eq!(registry.available(kind), ["native"]);
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
    assert_eq!(ctx.plugin_root(kind, "native"), dir.path().join("snapshotter/native"));
    let snap = berth_snapshot_native::NativeSnapshotter::open(&ctx.plugin_root(kind, "native")).unwrap();
    drop(snap);
    assert!(dir.path().join("snapshotter/native/snapshots").is_dir());
}
