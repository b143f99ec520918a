//! Shared harness of the real-cgroup tests (`v1.rs` on this host, `v2.rs` in the cgroup2 VM): a test parent
//! cgroup with a unique name, removed on drop (processes killed first), and workloads started the way the shim
//! starts containers: the process writes itself into every `cgroup.procs` file before it execs the workload.
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_cgroups::{Cgroupfs, Layout};
use berth_core::plugin::resources::{CgroupMode, CgroupPath, LinuxResources};

pub const MIB: i64 = 1 << 20;

/// A manager whose default parent is `/berth-test-<unique>`, removed with everything in it on drop.
pub struct Fixture {
    pub cg: Cgroupfs,
    pub parent: CgroupPath,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    /// `None` (after printing why) when the host's cgroups are not in one of `modes`.
    pub fn new(modes: &[CgroupMode]) -> Option<Fixture> {
        let layout = Layout::detect(Path::new("/sys/fs/cgroup")).expect("cgroup detection");
        if !modes.contains(&layout.mode) {
            println!(
                "skipped: cgroup mode is {:?}, this test target needs {modes:?}",
                layout.mode
            );
            return None;
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!(
            "/berth-test-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let cg = Cgroupfs::new(layout, &name, 0).unwrap();
        Some(Fixture {
            cg,
            parent: CgroupPath(name),
        })
    }

    /// A fresh manager over the same parent, as after a daemon restart.
    pub fn restarted(&self) -> Cgroupfs {
        Cgroupfs::new(self.cg.layout().clone(), self.parent.as_str(), 0).unwrap()
    }

    pub fn pod(&self, id: &str) -> CgroupPath {
        self.cg.create_pod(id, "", &LinuxResources::default()).unwrap()
    }

    pub fn container(&self, r: LinuxResources) -> (CgroupPath, CgroupPath) {
        let pod = self.pod("pod");
        let c = self.cg.create_container(&pod, "ctr", &r).unwrap();
        (pod, c)
    }

    /// Starts `/bin/sh -c script` inside `path`.
    pub fn spawn(&self, path: &CgroupPath, script: &str) -> Proc {
        self.spawn_with(path, script, Stdio::null())
    }

    pub fn spawn_with(&self, path: &CgroupPath, script: &str, stdout: Stdio) -> Proc {
        let mut join = String::new();
        for f in self.cg.procs_files(path) {
            join.push_str(&format!("echo $$ > {} || exit 99; ", f.display()));
        }
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{join}{script}"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .expect("spawn /bin/sh");
        Proc { child: Some(child) }
    }

    /// Waits until `p` has joined `path` in every hierarchy (it writes itself in right after the spawn).
    pub fn joined(&self, p: &Proc, path: &CgroupPath) -> bool {
        eventually(Duration::from_secs(5), || {
            let own = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid())).unwrap_or_default();
            !own.is_empty() && own.lines().all(|l| l.ends_with(path.as_str()))
        })
    }

    /// Every directory of `path` across the hierarchies.
    pub fn dirs(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.cg
            .procs_files(path)
            .into_iter()
            .map(|f| f.parent().unwrap().to_path_buf())
            .collect()
    }

    /// The directory of `path` in the hierarchy carrying `controller`.
    pub fn dir(&self, controller: &str, path: &CgroupPath) -> PathBuf {
        let m = self
            .cg
            .layout()
            .mount_of(controller)
            .unwrap_or_else(|| panic!("no {controller} controller"));
        m.join(path.as_str().trim_start_matches('/'))
    }

    pub fn read(&self, controller: &str, path: &CgroupPath, file: &str) -> String {
        let p = self.dir(controller, path).join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(e) = self.cg.remove(&self.parent) {
            eprintln!("cleanup of {} failed: {e}", self.parent.as_str());
        }
    }
}

/// A spawned workload, killed on drop if still running.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(mut self) -> String {
        let child = self.child.take().unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The exit code a container runtime reports: the code, or 128 + the signal.
pub fn exit_code(s: ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios shared by v1.rs and v2.rs
// ---------------------------------------------------------------------------------------------------------------

/// 32 MiB limit, 64 MiB allocation: SIGKILL (137) and the OOM kill counted. A 128 MiB container running the
/// same allocation is the control: it exits 0 with no kill counted.
pub fn oom_kill_is_detected(fx: &Fixture) {
    let alloc = "exec dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null";
    let pod = fx.pod("pod");
    let small = LinuxResources {
        memory_limit_in_bytes: 32 * MIB,
        ..Default::default()
    };
    let c = fx.cg.create_container(&pod, "small", &small).unwrap();
    let status = fx
        .spawn(&c, alloc)
        .wait(Duration::from_secs(30))
        .expect("the allocation ends");
    assert_eq!(exit_code(status), 137, "{status:?}");
    assert!(fx.cg.oom_kills(&c).unwrap() >= 1, "OOM kill not counted");
    assert!(fx.cg.stats(&c).unwrap().oom_kills >= 1);

    let big = LinuxResources {
        memory_limit_in_bytes: 128 * MIB,
        ..Default::default()
    };
    let c = fx.cg.create_container(&pod, "big", &big).unwrap();
    let status = fx
        .spawn(&c, alloc)
        .wait(Duration::from_secs(30))
        .expect("the allocation ends");
    assert_eq!(exit_code(status), 0, "{status:?}");
    assert_eq!(fx.cg.oom_kills(&c).unwrap(), 0);
}

/// A fork bomb under pids.max 20: never more than 20 tasks, forks refused, the host can still fork, and the
/// cgroup is removable (every bomb process killed).
pub fn pids_limit_contains_a_fork_bomb(fx: &Fixture) {
    let (pod, c) = fx.container(LinuxResources {
        pids_limit: Some(20),
        ..Default::default()
    });
    assert_eq!(fx.read("pids", &c, "pids.max"), "20");
    let _bomb = fx.spawn(&c, "b() { b | b & }; b 2>/dev/null; sleep 60");
    let mut peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let n: u64 = fx.read("pids", &c, "pids.current").parse().unwrap();
        peak = peak.max(n);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(peak <= 20, "pids.current reached {peak}");
    assert!(peak >= 15, "the bomb never got near the limit ({peak})");
    let events = fx.read("pids", &c, "pids.events");
    let refused: u64 = events.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(refused > 0, "no fork refused: {events}");
    assert!(
        Command::new("/bin/true").status().unwrap().success(),
        "the host cannot fork"
    );
    fx.cg.remove(&pod).unwrap();
    for d in fx.dirs(&c) {
        assert!(!d.exists(), "{} left", d.display());
    }
}

/// cpu quota 20 ms per 100 ms: a busy loop gets about 0.2 core over 2 s.
pub fn cpu_quota_limits_a_busy_loop(fx: &Fixture) {
    let (_pod, c) = fx.container(LinuxResources {
        cpu_quota: 20_000,
        cpu_period: 100_000,
        ..Default::default()
    });
    let _p = fx.spawn(&c, "while :; do :; done");
    std::thread::sleep(Duration::from_millis(300));
    let s0 = fx.cg.stats(&c).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let s1 = fx.cg.stats(&c).unwrap();
    let cores = (s1.cpu_usage_ns - s0.cpu_usage_ns) as f64 / (s1.timestamp - s0.timestamp) as f64;
    println!(
        "busy loop under a 0.2 core quota: {cores:.3} cores, nano-cores {}",
        s1.cpu_usage_nano_cores
    );
    assert!(cores < 0.35, "{cores} cores");
    assert!(cores > 0.05, "the loop did not run ({cores} cores)");
    let nano = s1.cpu_usage_nano_cores as f64 / 1e9;
    assert!((nano - cores).abs() < 0.02, "nano-cores {nano} vs {cores}");
}

/// cpuset 1: the process's Cpus_allowed_list is 1.
pub fn cpuset_pins_the_process(fx: &Fixture) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 {
        println!("skipped: one CPU");
        return;
    }
    let (_pod, c) = fx.container(LinuxResources {
        cpuset_cpus: "1".into(),
        ..Default::default()
    });
    let out = fx
        .spawn_with(&c, "grep Cpus_allowed_list /proc/self/status", Stdio::piped())
        .output();
    assert_eq!(out.trim(), "Cpus_allowed_list:\t1");
}

/// Memory limit raised and lowered live; an update with one refused value changes nothing.
pub fn update_is_live_and_atomic(fx: &Fixture, limit_file: (&str, &str)) {
    let (controller, file) = limit_file;
    let (_pod, c) = fx.container(LinuxResources {
        memory_limit_in_bytes: 64 * MIB,
        cpu_shares: 512,
        ..Default::default()
    });
    let _p = fx.spawn(&c, "exec sleep 60");
    let mem = |m: i64| LinuxResources {
        memory_limit_in_bytes: m,
        ..Default::default()
    };
    fx.cg.update(&c, &mem(48 * MIB)).unwrap();
    assert_eq!(fx.read(controller, &c, file), (48 * MIB).to_string());
    fx.cg.update(&c, &mem(96 * MIB)).unwrap();
    assert_eq!(fx.read(controller, &c, file), (96 * MIB).to_string());
    assert_eq!(fx.cg.stats(&c).unwrap().memory_limit, 96 << 20);

    // The kernel refuses cpuset 99 after memory was already written: memory goes back to 96 MiB.
    let cpuset_before = fx.read("cpuset", &c, "cpuset.cpus");
    let bad = LinuxResources {
        memory_limit_in_bytes: 40 * MIB,
        cpuset_cpus: "99".into(),
        ..Default::default()
    };
    let e = fx.cg.update(&c, &bad).unwrap_err();
    assert!(matches!(e, berth_cgroups::CgroupError::Refused { .. }), "{e}");
    let e = berth_core::plugin::PluginError::from(e);
    assert!(matches!(e, berth_core::plugin::PluginError::InvalidArgument(_)), "{e}");
    assert_eq!(
        fx.read(controller, &c, file),
        (96 * MIB).to_string(),
        "old limit restored"
    );
    assert_eq!(fx.read("cpuset", &c, "cpuset.cpus"), cpuset_before);

    // Refused before any write.
    let e = fx
        .cg
        .update(
            &c,
            &LinuxResources {
                cpu_quota: 5,
                ..mem(8 * MIB)
            },
        )
        .unwrap_err();
    assert!(matches!(e, berth_cgroups::CgroupError::Invalid { .. }), "{e}");
    assert_eq!(fx.read(controller, &c, file), (96 * MIB).to_string());

    // A cgroup that does not exist.
    let gone = CgroupPath(format!("{}/nope/nope", fx.parent.as_str()));
    assert!(matches!(
        fx.cg.update(&gone, &mem(MIB)),
        Err(berth_cgroups::CgroupError::NotFound { .. })
    ));
}

/// 50 MiB touched and held: working set within a few MiB; CPU usage grows while a loop spins.
pub fn stats_follow_the_workload(fx: &Fixture) {
    let pod = fx.pod("pod");
    let r = LinuxResources::default();
    let mem = fx.cg.create_container(&pod, "mem", &r).unwrap();
    // dd fills its 50 MiB buffer, then blocks writing it to a pipe nobody reads.
    let _m = fx.spawn(&mem, "dd if=/dev/zero bs=50M count=1 2>/dev/null | sleep 60");
    let fifty = 50 << 20;
    let mut last = Default::default();
    let held = eventually(Duration::from_secs(10), || {
        last = fx.cg.stats(&mem).unwrap();
        last.memory_working_set >= fifty
    });
    assert!(held, "working set stayed at {:?}", last);
    std::thread::sleep(Duration::from_millis(300));
    let s = fx.cg.stats(&mem).unwrap();
    println!("50 MiB workload: {s:?}");
    assert!(
        s.memory_working_set >= fifty && s.memory_working_set < fifty + (6 << 20),
        "{s:?}"
    );
    assert!(s.memory_rss >= fifty, "{s:?}");
    assert!(s.memory_usage >= s.memory_working_set, "{s:?}");
    assert!(s.page_faults > 0, "{s:?}");
    assert!(s.pids >= 2, "{s:?}");

    let cpu = fx.cg.create_container(&pod, "cpu", &r).unwrap();
    let _c = fx.spawn(&cpu, "while :; do :; done");
    let s0 = fx.cg.stats(&cpu).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let s1 = fx.cg.stats(&cpu).unwrap();
    println!(
        "spinning: {} ns → {} ns, {} nano-cores",
        s0.cpu_usage_ns, s1.cpu_usage_ns, s1.cpu_usage_nano_cores
    );
    // A generous floor: the build host's two cores are shared with other builds.
    assert!(s1.cpu_usage_ns > s0.cpu_usage_ns + 100_000_000, "{s0:?} {s1:?}");
    assert!(s1.cpu_usage_nano_cores > 100_000_000, "{s1:?}");
    // The pod cgroup sees its containers' usage.
    let p = fx.cg.stats(&pod).unwrap();
    assert!(p.memory_working_set >= fifty, "{p:?}");
}

/// A pod with two running containers: removal kills them and leaves no cgroup in any hierarchy.
pub fn removal_leaves_nothing(fx: &Fixture) {
    let pod = fx.pod("pod");
    let a = fx.cg.create_container(&pod, "a", &LinuxResources::default()).unwrap();
    let b = fx.cg.create_container(&pod, "b", &LinuxResources::default()).unwrap();
    let mut pa = fx.spawn(&a, "exec sleep 600");
    let mut pb = fx.spawn(&b, "sleep 600; sleep 600");
    // The shell joined before its workload: it is in the container cgroup of every hierarchy.
    assert!(fx.joined(&pa, &a) && fx.joined(&pb, &b));
    fx.cg.remove(&pod).unwrap();
    assert_eq!(exit_code(pa.wait(Duration::from_secs(5)).unwrap()), 137);
    assert_eq!(exit_code(pb.wait(Duration::from_secs(5)).unwrap()), 137);
    for d in fx.dirs(&pod) {
        assert!(!d.exists(), "{} left", d.display());
    }
    assert!(fx.cg.list(&fx.parent).unwrap().is_empty());
    fx.cg.remove(&pod).unwrap();
}

/// After a crash mid-creation (some hierarchies only) and one with a live process, a restarted manager lists
/// both under the default parent and removes them.
pub fn leftovers_are_found_after_a_restart(fx: &Fixture) {
    let full = fx.pod("full");
    let c = fx
        .cg
        .create_container(&full, "ctr", &LinuxResources::default())
        .unwrap();
    let mut p = fx.spawn(&c, "exec sleep 600");
    assert!(fx.joined(&p, &c));
    // Half-made: only the first hierarchy got its directory before the "crash".
    let half = CgroupPath(format!("{}/half", fx.parent.as_str()));
    let first = fx.cg.layout().mounts()[0].join(half.as_str().trim_start_matches('/'));
    std::fs::create_dir(&first).unwrap();

    let restarted = fx.restarted();
    let found = restarted.list(&fx.parent).unwrap();
    assert_eq!(found, vec![full.clone(), half.clone()]);
    for path in &found {
        restarted.remove(path).unwrap();
    }
    assert_eq!(exit_code(p.wait(Duration::from_secs(5)).unwrap()), 137);
    assert!(!first.exists());
    assert!(restarted.list(&fx.parent).unwrap().is_empty());
}

/// A 2 MiB hugepage limit lands in the hugetlb controller's file, wherever it lives (v1 hierarchy, cgroup2
/// `unified` on a hybrid host, or v2).
pub fn hugepage_limit_is_written(fx: &Fixture) {
    if fx.cg.layout().mount_of("hugetlb").is_none() || !Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists()
    {
        println!("skipped: no hugetlb controller or no 2 MiB huge pages");
        return;
    }
    let mut r = LinuxResources::default();
    r.hugepage_limits.insert("2MB".into(), 4 << 20);
    let (_pod, c) = fx.container(r);
    let file = if fx.cg.layout().on_unified("hugetlb") {
        "hugetlb.2MB.max"
    } else {
        "hugetlb.2MB.limit_in_bytes"
    };
    assert_eq!(fx.read("hugetlb", &c, file), (4 << 20).to_string());
    let mut bad = LinuxResources::default();
    bad.hugepage_limits.insert("3MB".into(), 1);
    assert!(matches!(
        fx.cg.update(&c, &bad),
        Err(berth_cgroups::CgroupError::Invalid { .. })
    ));
}

/// Through the async plugin API: a kubelet-style parent is created when missing and adopted (limits untouched)
/// when present; containers, stats, OOM counter, listing and removal.
pub async fn plugin_api_with_a_kubelet_parent(fx: &Fixture) {
    use berth_core::plugin::Resources;
    let plugin = berth_cgroups::CgroupfsPlugin::new(fx.restarted());
    let kubelet_parent = format!("{}/kubepods/burstable/pod0f3a", fx.parent.as_str());
    let limits = LinuxResources {
        memory_limit_in_bytes: 256 * MIB,
        ..Default::default()
    };
    let pod = plugin.create_pod("sandbox1", &kubelet_parent, &limits).await.unwrap();
    assert_eq!(pod.as_str(), kubelet_parent);
    assert_eq!(
        plugin.stats(&pod).await.unwrap().memory_limit,
        256 << 20,
        "limits of a pod berth created"
    );
    // Created by "kubelet" (here: the call above) → adopted as is on a second sandbox with other limits.
    let again = LinuxResources {
        memory_limit_in_bytes: 128 * MIB,
        ..Default::default()
    };
    assert_eq!(
        plugin.create_pod("sandbox2", &kubelet_parent, &again).await.unwrap(),
        pod
    );
    assert_eq!(
        plugin.stats(&pod).await.unwrap().memory_limit,
        256 << 20,
        "an adopted pod keeps its limits"
    );
    // The default parent when the pod names none.
    let own = plugin
        .create_pod("sandbox3", "", &LinuxResources::default())
        .await
        .unwrap();
    assert_eq!(own.as_str(), format!("{}/sandbox3", fx.parent.as_str()));
    assert_eq!(plugin.default_parent(), fx.parent);

    let c = plugin
        .create_container(&pod, "c1", &LinuxResources::default())
        .await
        .unwrap();
    assert_eq!(plugin.procs_files(&c).len(), fx.cg.layout().mounts().len());
    assert_eq!(plugin.oom_kills(&c).await.unwrap(), 0);
    let e = plugin
        .create_pod("x", "kubepods-burstable.slice", &limits)
        .await
        .unwrap_err();
    assert!(matches!(e, berth_core::plugin::PluginError::InvalidArgument(_)), "{e}");
    assert!(!plugin.check().is_empty());
    assert_eq!(plugin.driver(), "cgroupfs");

    plugin.remove(&pod).await.unwrap();
    plugin.remove(&pod).await.unwrap();
    let e = plugin.stats(&c).await.unwrap_err();
    assert!(matches!(e, berth_core::plugin::PluginError::NotFound(_)), "{e}");
    plugin.remove(&own).await.unwrap();
    let left = plugin.list(&fx.parent).await.unwrap();
    assert_eq!(left, vec![CgroupPath(format!("{}/kubepods", fx.parent.as_str()))]);
}
