//! Real cgroup v2 tests: run in the pure-cgroup2 VM (`hack/vm-test.sh` as the cargo runner). Skipped, with a
//! message, on a v1 or hybrid host.

mod common;

use berth_core::plugin::resources::{CgroupMode, LinuxResources};
use common::*;

fn fixture() -> Option<Fixture> {
    Fixture::new(&[CgroupMode::V2])
}

#[test]
fn oom_kill_at_32_mib_is_detected() {
    let Some(fx) = fixture() else { return };
    oom_kill_is_detected(&fx);
}

#[test]
fn pids_limit_of_20_contains_a_fork_bomb() {
    let Some(fx) = fixture() else { return };
    pids_limit_contains_a_fork_bomb(&fx);
}

#[test]
fn cpu_quota_of_0_2_core_holds_a_busy_loop() {
    let Some(fx) = fixture() else { return };
    cpu_quota_limits_a_busy_loop(&fx);
    let c = berth_core::plugin::resources::CgroupPath(format!("{}/pod/ctr", fx.parent.as_str()));
    assert_eq!(fx.read("cpu", &c, "cpu.max"), "20000 100000");
}

#[test]
fn cpuset_pins_the_process_to_cpu_1() {
    let Some(fx) = fixture() else { return };
    cpuset_pins_the_process(&fx);
}

#[test]
fn memory_update_is_live_and_refused_updates_change_nothing() {
    let Some(fx) = fixture() else { return };
    update_is_live_and_atomic(&fx, ("memory", "memory.max"));
}

#[test]
fn shares_and_unified_settings_are_written() {
    let Some(fx) = fixture() else { return };
    let mut r = LinuxResources {
        cpu_shares: 1024,
        memory_limit_in_bytes: 64 * MIB,
        ..Default::default()
    };
    r.unified.insert("memory.high".into(), (48 * MIB).to_string());
    let (_pod, c) = fx.container(r);
    assert_eq!(fx.read("cpu", &c, "cpu.weight"), "100");
    assert_eq!(fx.read("memory", &c, "memory.high"), (48 * MIB).to_string());
    let mut bad = LinuxResources::default();
    bad.unified.insert("nosuch.file".into(), "1".into());
    assert!(fx.cg.update(&c, &bad).is_err());
}

#[test]
fn stats_show_a_50_mib_working_set_and_growing_cpu() {
    let Some(fx) = fixture() else { return };
    stats_follow_the_workload(&fx);
}

#[test]
fn pod_removal_kills_and_leaves_no_cgroup() {
    let Some(fx) = fixture() else { return };
    removal_leaves_nothing(&fx);
}

#[test]
fn leftovers_of_a_crash_are_listed_and_removed_after_restart() {
    let Some(fx) = fixture() else { return };
    leftovers_are_found_after_a_restart(&fx);
}

/// Prints the real v2 files of a cgroup holding 50 MiB, the samples the unit tests parse.
#[test]
fn print_real_v2_samples() {
    let Some(fx) = fixture() else { return };
    let (_pod, c) = fx.container(LinuxResources::default());
    let _p = fx.spawn(&c, "dd if=/dev/zero bs=50M count=1 2>/dev/null | sleep 60");
    std::thread::sleep(std::time::Duration::from_secs(1));
    for f in [
        "memory.stat",
        "memory.current",
        "memory.events",
        "cpu.stat",
        "pids.current",
        "memory.max",
    ] {
        println!("== {f}\n{}", fx.read("memory", &c, f));
    }
}

#[test]
fn hugepage_limit_is_written_where_hugetlb_lives() {
    let Some(fx) = fixture() else { return };
    hugepage_limit_is_written(&fx);
}

#[tokio::test]
async fn plugin_api_creates_or_adopts_a_kubelet_parent() {
    let Some(fx) = fixture() else { return };
    plugin_api_with_a_kubelet_parent(&fx).await;
}

/// The eBPF device program: inside a container cgroup /dev/null works, a node of a device nobody asked for can
/// be made (mknod is allowed) but not opened (EPERM), and a requested device opens with the access asked for
/// only. The test process itself, outside these cgroups, opens the same nodes (the control).
#[test]
fn device_program_allows_defaults_and_requested_devices_only() {
    use berth_core::plugin::resources::DeviceRule;
    use std::process::Stdio;
    let Some(fx) = fixture() else { return };
    // Nodes go to a tempdir under /dev: the guest's /tmp is nodev.
    let dir = tempfile::tempdir_in("/dev").unwrap();
    let pod = fx.pod("pod");
    let plain = fx
        .cg
        .create_container(&pod, "plain", &LinuxResources::default())
        .unwrap();
    let kmsg_r = DeviceRule {
        allow: true,
        kind: 'c',
        major: Some(1),
        minor: Some(11),
        access: "r".into(),
    };
    let asked = fx
        .cg
        .create_container(
            &pod,
            "asked",
            &LinuxResources {
                devices: vec![kmsg_r],
                ..Default::default()
            },
        )
        .unwrap();
    // Each line: what, then the shell's own error message when it failed.
    let probe = |name: &str| {
        let node = dir.path().join(name);
        format!(
            "n={node}; \
             echo x > /dev/null && echo null:ok; \
             head -c 1 /dev/urandom > /dev/null && echo urandom:ok; \
             mknod $n c 1 11 && echo mknod:ok; \
             sh -c 'exec 3< $0' $n 2>&1 && echo read:ok; \
             sh -c 'exec 3> $0' $n 2>&1 && echo write:ok; true",
            node = node.display()
        )
    };
    let plain_out = fx.spawn_with(&plain, &probe("plain"), Stdio::piped()).output();
    println!("container without devices:\n{plain_out}");
    let asked_out = fx.spawn_with(&asked, &probe("asked"), Stdio::piped()).output();
    println!("container with c 1:11 r:\n{asked_out}");
    // The device program's refusal is EPERM.
    let refusals = |out: &str| out.lines().filter(|l| l.contains("Operation not permitted")).count();
    for out in [&plain_out, &asked_out] {
        assert!(out.contains("null:ok") && out.contains("urandom:ok"), "{out}");
        assert!(out.contains("mknod:ok"), "{out}");
        assert!(!out.contains("write:ok"), "{out}");
    }
    assert!(!plain_out.contains("read:ok"), "{plain_out}");
    assert_eq!(refusals(&plain_out), 2, "{plain_out}");
    assert_eq!(refusals(&asked_out), 1, "{asked_out}");
    assert!(asked_out.contains("read:ok"), "{asked_out}");
    // The control: the same node opens outside the containers' cgroups.
    std::fs::File::open(dir.path().join("plain")).expect("open the node outside the cgroup");
}

/// The pod's own processes (shim, infra) live in a leaf under the pod cgroup: with one running there, a new
/// container still gets the memory and pids controllers (v2's "no internal processes" rule would refuse them
/// if the pod cgroup itself held a process).
#[test]
fn a_running_pod_infra_process_does_not_block_container_limits() {
    let Some(fx) = fixture() else { return };
    let pod = fx.pod("pod");
    let infra = fx.cg.infra_path(&pod).unwrap();
    assert_ne!(infra, pod);
    let files = fx.cg.infra_procs_files(&pod);
    assert_eq!(files, fx.cg.procs_files(&infra));
    let p = fx.spawn(&infra, "exec sleep 60");
    assert!(fx.joined(&p, &infra));
    let c = fx
        .cg
        .create_container(
            &pod,
            "ctr",
            &LinuxResources {
                memory_limit_in_bytes: 48 * MIB,
                pids_limit: Some(30),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(fx.read("memory", &c, "memory.max"), (48 * MIB).to_string());
    assert_eq!(fx.read("pids", &c, "pids.max"), "30");
    fx.cg.remove(&pod).unwrap();
    assert!(fx.cg.list(&fx.parent).unwrap().is_empty());
}
