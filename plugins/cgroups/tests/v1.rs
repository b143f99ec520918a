//! Real cgroup v1 (and hybrid) tests: this build host. Skipped, with a message, on a pure cgroup2 host.

mod common;

use std::time::Duration;

use berth_core::plugin::resources::{CgroupMode, DeviceRule, LinuxResources};
use common::*;

fn fixture() -> Option<Fixture> {
    Fixture::new(&[CgroupMode::V1, CgroupMode::Hybrid])
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
    assert_eq!(fx.read("cpu", &c, "cpu.cfs_quota_us"), "20000");
}

#[test]
fn cpuset_pins_the_process_to_cpu_1() {
    let Some(fx) = fixture() else { return };
    cpuset_pins_the_process(&fx);
}

#[test]
fn memory_update_is_live_and_refused_updates_change_nothing() {
    let Some(fx) = fixture() else { return };
    update_is_live_and_atomic(&fx, ("memory", "memory.limit_in_bytes"));
}

/// v1 refuses a memory limit below what the cgroup holds (nothing to reclaim without swap): InvalidArgument, and
/// the old limit stays.
#[test]
fn memory_limit_below_usage_is_refused_on_v1() {
    let Some(fx) = fixture() else { return };
    let (_pod, c) = fx.container(LinuxResources {
        memory_limit_in_bytes: 64 * MIB,
        ..Default::default()
    });
    let _p = fx.spawn(&c, "dd if=/dev/zero bs=20M count=1 2>/dev/null | sleep 60");
    assert!(eventually(Duration::from_secs(10), || fx
        .cg
        .stats(&c)
        .unwrap()
        .memory_rss
        >= 20 << 20));
    let e = fx
        .cg
        .update(
            &c,
            &LinuxResources {
                memory_limit_in_bytes: 8 * MIB,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, berth_cgroups::CgroupError::Refused { .. }), "{e}");
    assert_eq!(fx.read("memory", &c, "memory.limit_in_bytes"), (64 * MIB).to_string());
}

#[test]
fn unified_settings_are_refused_on_v1() {
    let Some(fx) = fixture() else { return };
    let pod = fx.pod("pod");
    let mut r = LinuxResources::default();
    r.unified.insert("memory.high".into(), "1000000".into());
    let e = fx.cg.create_container(&pod, "ctr", &r).unwrap_err();
    assert!(matches!(e, berth_cgroups::CgroupError::Invalid { .. }), "{e}");
    assert!(fx.cg.list(&pod).unwrap().is_empty(), "nothing created");
}

/// The devices allow-list: /dev/zero is allowed by default, /dev/kmsg (c 1:11) only when requested.
#[test]
fn devices_allow_list_is_enforced() {
    let Some(fx) = fixture() else { return };
    let pod = fx.pod("pod");
    let open = "head -c1 /dev/zero >/dev/null && echo zero-ok; (: < /dev/kmsg) 2>/dev/null && echo kmsg-ok; true";
    let c = fx
        .cg
        .create_container(&pod, "plain", &LinuxResources::default())
        .unwrap();
    let out = fx.spawn_with(&c, open, std::process::Stdio::piped()).output();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["zero-ok"], "{out}");
    let list = fx.read("devices", &c, "devices.list");
    assert!(list.contains("c 1:3 rwm") && !list.contains("a *:* rwm"), "{list}");

    let kmsg = LinuxResources {
        devices: vec![DeviceRule {
            allow: true,
            kind: 'c',
            major: Some(1),
            minor: Some(11),
            access: "r".into(),
        }],
        ..Default::default()
    };
    let c = fx.cg.create_container(&pod, "kmsg", &kmsg).unwrap();
    let out = fx.spawn_with(&c, open, std::process::Stdio::piped()).output();
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["zero-ok", "kmsg-ok"],
        "{out}"
    );
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

/// berth's cgroups are absolute from each hierarchy's root: here berthd's memory cgroup is nested
/// (`/process_api/<hash>`), yet the container's memory cgroup is `/berth-test-…/pod/ctr`, like every other one.
#[test]
fn memory_cgroup_is_not_nested_under_the_daemons() {
    let Some(fx) = fixture() else { return };
    let (_pod, c) = fx.container(LinuxResources::default());
    let out = fx
        .spawn_with(&c, "cat /proc/self/cgroup", std::process::Stdio::piped())
        .output();
    let memory = out.lines().find(|l| l.contains(":memory:")).expect(&out);
    assert!(memory.ends_with(&format!(":memory:{}", c.as_str())), "{out}");
    for l in out.lines() {
        assert!(l.ends_with(c.as_str()), "{l} (in {out})");
    }
    let mem_dir = fx.dir("memory", &c);
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    println!(
        "the test process's own cgroups:\n{own}container dir: {}",
        mem_dir.display()
    );
    assert!(
        mem_dir
            .to_string_lossy()
            .starts_with("/sys/fs/cgroup/memory/berth-test-"),
        "{}",
        mem_dir.display()
    );
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

/// `berthd check`'s lines on this host: hybrid, the v1 hierarchies, hugetlb on cgroup2, the nested memory cgroup.
#[test]
fn check_report_describes_this_host() {
    let Some(fx) = fixture() else { return };
    let lines = fx.cg.check_lines();
    println!("{}", lines.join("\n"));
    assert!(
        lines[0].starts_with("cgroup mode: hybrid") || lines[0] == "cgroup mode: v1",
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cgroup v1 memory at /sys/fs/cgroup/memory")),
        "{lines:?}"
    );
    let config = berth_core::config::CgroupsConfig::default();
    assert_eq!(berth_cgroups::check(&config)[0], lines[0]);
}
