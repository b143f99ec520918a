//! Real containers (as root): namespaces, mounts, capabilities, seccomp, logs, exit codes, exec, cleanup.

mod common;

use std::time::Duration;

use berth_core::plugin::isolation::{ExecSpec, Isolation, ProcessState};
use common::*;
use oci_spec::runtime::Capability;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_sees_an_isolated_world() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let c = env.container(
        &pod,
        spec(&["sh", "-c", "echo pid=$$; hostname; exec sleep 1000"], "box-a"),
    );
    env.iso.create(&c).await.unwrap();
    let pid = env.iso.start(&c.id).await.unwrap();
    assert!(matches!(env.iso.state(&c.id).await.unwrap().state, ProcessState::Running { pid: p, .. } if p == pid));

    let (code, ps) = sh(&env.iso, &c.id, "ps -o pid,comm").await;
    assert_eq!(code, 0, "{ps}");
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(pids.contains(&"1"), "{ps}");
    assert!(pids.len() <= 4, "ps sees only the container's processes: {ps}");
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep")),
        "{ps}"
    );

    assert_eq!(sh(&env.iso, &c.id, "hostname").await.1.trim(), "box-a");
    // This kernel has no /proc/kcore; where it exists it is masked like the others.
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(
            sh(&env.iso, &c.id, "wc -c < /proc/kcore").await.1.trim(),
            "0",
            "kcore masked"
        );
    }
    assert!(!std::fs::read_to_string("/proc/timer_list").unwrap().is_empty());
    for masked in ["/proc/keys", "/proc/timer_list"] {
        let (_, n) = sh(&env.iso, &c.id, &format!("cat {masked} | wc -c")).await;
        assert_eq!(n.trim(), "0", "{masked} masked");
    }
    assert_eq!(
        sh(&env.iso, &c.id, "ls -A /sys/firmware | wc -l").await.1.trim(),
        "0",
        "/sys/firmware masked"
    );
    let (code, text) = sh(&env.iso, &c.id, "echo 1 > /proc/sys/vm/drop_caches").await;
    assert_ne!(code, 0, "writing /proc/sys must fail: {text}");
    let (_, status) = sh(&env.iso, &c.id, "grep Cap /proc/self/status").await;
    assert!(status.contains("CapEff:\t0000000020000420"), "{status}");
    assert!(status.contains("CapBnd:\t0000000020000420"), "{status}");
    assert_eq!(
        sh(&env.iso, &c.id, "ls /proc/1/fd | tr '\\n' ' '").await.1.trim(),
        "0 1 2"
    );
    let (code, text) = sh(&env.iso, &c.id, "unshare -U true").await;
    assert_ne!(code, 0, "unshare is blocked by RuntimeDefault: {text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    let (code, text) = sh(&env.iso, &c.id, "mount -t tmpfs none /tmp").await;
    assert_ne!(code, 0, "{text}");
    assert_eq!(sh(&env.iso, &c.id, "id -u").await.1.trim(), "0");
    let (_, nnp) = sh(&env.iso, &c.id, "grep NoNewPrivs /proc/self/status").await;
    assert!(nnp.contains('1'), "{nnp}");
    let (_, devs) = sh(&env.iso, &c.id, "ls /dev | tr '\\n' ' '").await;
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd", "stdin",
    ] {
        assert!(devs.split(' ').any(|x| x == d), "/dev lacks {d}: {devs}");
    }
    assert_eq!(sh(&env.iso, &c.id, "head -c 4 /dev/zero | wc -c").await.1.trim(), "4");

    // Host side: the container's mounts live only in its own mount namespace.
    let host = host_mountinfo();
    assert!(
        !host.contains(env.rootfs.to_str().unwrap()),
        "rootfs mount leaked to the host"
    );

    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    let exit = wait_exit(&env.iso, &c.id).await;
    assert_eq!(exit.code, 137);
    assert_eq!(exit.signal, Some(9));
    let (out, _, _) = read_log(c.log_path.as_ref().unwrap());
    assert_eq!(out, "pid=1\nbox-a\n");

    env.iso.delete(&c.id).await.unwrap();
    assert!(!env.state.join("containers").join(&c.id).exists(), "state dir left");
    let shim = env.shim_pid(&pod);
    env.iso.remove_pod(&pod).await.unwrap();
    assert!(!pid_alive(shim), "shim still running");
    assert!(!env.state.join("pods").join(&pod).exists(), "pod dir left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfined_allows_what_runtime_default_blocks() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let mut s = spec(&["sleep", "1000"], "box-u");
    s.linux_mut().as_mut().unwrap().set_seccomp(None);
    let c = env.container(&pod, s);
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let (code, text) = sh(&env.iso, &c.id, "unshare -U true && echo ok").await;
    assert_eq!((code, text.trim()), (0, "ok"));
    let (_, seccomp) = sh(&env.iso, &c.id, "grep Seccomp: /proc/self/status").await;
    assert!(seccomp.contains('0'), "{seccomp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_profile_is_applied() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    // RuntimeDefault-like but with `mkdir`/`mkdirat` returning EACCES.
    let profile_path = env.dir.path().join("profile.json");
    let default = berth_isolation::seccomp::runtime_default(1 << 29 | 1 << 5 | 1 << 10);
    let mut json = serde_json::to_value(&default).unwrap();
    let allow = json["syscalls"][0]["names"].as_array_mut().unwrap();
    allow.retain(|n| n != "mkdir" && n != "mkdirat");
    json["syscalls"].as_array_mut().unwrap().push(serde_json::json!({
        "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13
    }));
    std::fs::write(&profile_path, json.to_string()).unwrap();
    let profile = berth_isolation::seccomp::SeccompProfile::Localhost(profile_path)
        .resolve(1 << 29 | 1 << 5 | 1 << 10)
        .unwrap();
    let mut s = spec(&["sleep", "1000"], "box-l");
    s.linux_mut().as_mut().unwrap().set_seccomp(profile);
    let c = env.container(&pod, s);
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let (code, text) = sh(&env.iso, &c.id, "mkdir /tmp/x").await;
    assert_ne!(code, 0);
    assert!(text.contains("Permission denied"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_no_zombies() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let c = env.container(&pod, spec(&["sh", "-c", "exit 3"], "box-e"));
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let exit = wait_exit(&env.iso, &c.id).await;
    assert_eq!((exit.code, exit.signal), (3, None));
    let state = env.iso.state(&c.id).await.unwrap();
    assert!(matches!(state.state, ProcessState::Exited { exit: e, .. } if e.code == 3));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state.join("containers").join(&c.id).join("exit.json")).unwrap())
            .unwrap();
    assert_eq!(saved["code"], 3);

    // Orphans: the init forks two background sleeps and exits; the PID namespace dies with it.
    let orphans = env.container(
        &pod,
        spec(&["sh", "-c", "sleep 1000 & sleep 1000 & sleep 0.2; exit 0"], "box-o"),
    );
    env.iso.create(&orphans).await.unwrap();
    env.iso.start(&orphans.id).await.unwrap();
    assert_eq!(wait_exit(&env.iso, &orphans.id).await.code, 0);
    let shim = env.shim_pid(&pod);
    let mut zombies = zombies_of(shim);
    for _ in 0..50 {
        if zombies.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        zombies = zombies_of(shim);
    }
    assert!(zombies.is_empty(), "zombies under the shim: {zombies:?}");
    for id in [&c.id, &orphans.id] {
        env.iso.delete(id).await.unwrap();
    }
    env.iso.remove_pod(&pod).await.unwrap();
    assert!(!pid_alive(shim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_one_shim_and_the_pod_namespaces() {
    let env = Env::new();
    let (pod, ns) = env.pod("pod-host").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut s = spec(&["sleep", "1000"], "ignored");
        join_pod(&mut s, &ns);
        let c = env.container(&pod, s);
        env.iso.create(&c).await.unwrap();
        env.iso.start(&c.id).await.unwrap();
        ids.push(c.id);
    }
    let shim = env.shim_pid(&pod);
    let shims: Vec<String> = std::fs::read_dir(env.state.join("pods"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(shims, vec![pod.clone()]);
    let mut netns = Vec::new();
    for id in &ids {
        let state = env.iso.state(id).await.unwrap();
        let ProcessState::Running { pid, .. } = state.state else {
            panic!("not running")
        };
        assert_eq!(parent_of(pid), shim, "container init is a child of the one pod shim");
        assert_eq!(sh(&env.iso, id, "hostname").await.1.trim(), "pod-host");
        netns.push(sh(&env.iso, id, "readlink /proc/self/ns/net").await.1);
    }
    assert_eq!(netns[0], netns[1]);
    let pinned = std::fs::read_link(format!("/proc/{}/ns/net", std::process::id())).unwrap();
    assert_ne!(netns[0].trim(), pinned.to_string_lossy(), "pod netns is not the host's");
    for id in &ids {
        // PID 1 without a SIGTERM handler ignores SIGTERM: SIGKILL.
        env.iso.kill(id, libc::SIGKILL).await.unwrap();
        assert_eq!(wait_exit(&env.iso, id).await.code, 137);
        env.iso.delete(id).await.unwrap();
    }
    env.iso.unpin_namespaces(&pod).await.unwrap();
    assert!(!host_mountinfo().contains(&pod), "pins left mounted");
    env.iso.remove_pod(&pod).await.unwrap();
    assert!(!pid_alive(shim));
}

/// A test's own cgroup dir in one cgroup v1 hierarchy, removed once its processes are gone.
struct RmCgroup(std::path::PathBuf);

impl RmCgroup {
    fn create(hierarchy: &str) -> RmCgroup {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(unique("berth-test"));
        std::fs::create_dir(&dir).unwrap();
        RmCgroup(dir)
    }
}

impl Drop for RmCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_joins_the_container_and_supports_a_tty() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let cg = RmCgroup::create("pids");
    let cgroup = cg.0.clone();
    let script = "for n in pid mnt net uts ipc; do readlink /proc/self/ns/$n; done; grep pids /proc/self/cgroup; \
                  hostname; exec sleep 1000";
    let mut c = env.container(&pod, spec(&["sh", "-c", script], "box-x"));
    c.cgroup_procs = vec![cgroup.join("cgroup.procs")];
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let (_, exec_view) = sh(
        &env.iso,
        &c.id,
        "for n in pid mnt net uts ipc; do readlink /proc/self/ns/$n; done; grep pids /proc/self/cgroup; hostname",
    )
    .await;
    let mut main_view = String::new();
    for _ in 0..100 {
        main_view = read_log(c.log_path.as_ref().unwrap()).0;
        if main_view.lines().count() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exec_view, main_view);
    // Inside, the cgroup namespace (created after the move) roots the view at the container's cgroup.
    assert!(main_view.contains("pids:/\n"), "{main_view}");
    let name = cgroup.file_name().unwrap().to_str().unwrap().to_string();
    let ProcessState::Running { pid, .. } = env.iso.state(&c.id).await.unwrap().state else {
        panic!()
    };
    let host_view = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(host_view.contains(&name), "{host_view}");
    // An exec lands in the same cgroup: two processes in it while one runs.
    let io = env
        .iso
        .exec(
            &c.id,
            &ExecSpec {
                args: vec!["sleep".into(), "1".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 2, "{procs}");
    assert_eq!(env.iso.wait_exec(&c.id, &io.session).await.unwrap().code, 0);

    // Exit code of an exec.
    assert_eq!(sh(&env.iso, &c.id, "exit 42").await.0, 42);

    // Exec with a tty.
    let io = env
        .iso
        .exec(
            &c.id,
            &ExecSpec {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "test -t 0 && test -t 1 && echo is-a-tty; exit 5".into(),
                ],
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            },
        )
        .await
        .unwrap();
    assert!(io.stderr.is_none());
    let master = io.stdout.unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match nix::unistd::read(&master, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(output.contains("is-a-tty"), "{output:?}");
    assert_eq!(env.iso.wait_exec(&c.id, &io.session).await.unwrap().code, 5);

    // exec_sync timeout kills the process.
    let out = env
        .iso
        .exec_sync(
            &c.id,
            &ExecSpec {
                args: vec!["sleep".into(), "100".into()],
                ..Default::default()
            },
            Some(Duration::from_millis(300)),
            1024,
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, 137);
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_log_lines_and_a_one_mib_line() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let script = "echo hello; echo oops >&2; printf 'a\\nb'; echo; head -c 1048576 /dev/zero | tr '\\0' x";
    let c = env.container(&pod, spec(&["sh", "-c", script], "box-log"));
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    assert_eq!(wait_exit(&env.iso, &c.id).await.code, 0);
    let (out, err, pieces) = read_log(c.log_path.as_ref().unwrap());
    assert_eq!(err, "oops\n");
    let expected = format!("hello\na\nb\n{}\n", "x".repeat(1 << 20));
    assert_eq!(out, expected);
    let big: Vec<&(String, char, usize)> = pieces.iter().filter(|p| p.0 == "stdout" && p.2 > 100).collect();
    assert!(big.len() > 2, "{big:?}");
    assert!(big[..big.len() - 1].iter().all(|p| p.1 == 'P'));
    assert_eq!(big.last().unwrap().1, 'F');

    // Reopen after rotation.
    let log = c.log_path.clone().unwrap();
    std::fs::rename(&log, log.with_extension("1")).unwrap();
    env.iso.reopen_log(&c.id).await.unwrap();
    assert!(log.exists());
    env.iso.delete(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_score_adj_is_clamped_not_fatal() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let mut s = spec(&["sh", "-c", "cat /proc/self/oom_score_adj"], "box-oom");
    s.process_mut().as_mut().unwrap().set_oom_score_adj(Some(-999));
    let c = env.container(&pod, s);
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    assert_eq!(wait_exit(&env.iso, &c.id).await.code, 0);
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (out, _, _) = read_log(c.log_path.as_ref().unwrap());
    assert_eq!(out.trim().parse::<i32>().unwrap(), own.max(-999));
    let shim_log = std::fs::read_to_string(env.state.join("pods").join(&pod).join("shim.log")).unwrap();
    assert_eq!(shim_log.matches("clamped").count(), 1, "{shim_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_escape_fails() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let src = env.dir.path().join("escape.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    mkdir(".out", 0755);
    if (chroot(".out") != 0) { perror("chroot .out"); return 2; }
    chdir("../../../../../");
    chroot(".");
    execl("/bin/sh", "sh", "-c", "if test -e \"$0\"; then echo ESCAPED; else echo CONTAINED; fi", argv[1], (char *)NULL);
    perror("execl");
    return 3;
}
"#,
    )
    .unwrap();
    let bin = env.rootfs.join("bin/escape");
    let status = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    // The escape needs /bin/sh at the host's root too, so "CONTAINED" can only mean the chroot stayed inside.
    let marker = std::path::PathBuf::from("/").join(unique("berth-escape-marker"));
    std::fs::write(&marker, "host").unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _marker = Rm(marker.clone());
    let mut s = spec(&["/bin/escape", marker.to_str().unwrap()], "box-c");
    s.process_mut().as_mut().unwrap().set_capabilities(Some(caps(&[
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ])));
    // RuntimeDefault allows chroot(2) only with CAP_SYS_CHROOT in the bounding set.
    let profile = berth_isolation::seccomp::SeccompProfile::RuntimeDefault
        .resolve(1 << 18 | 1 << 5 | 1 << 29)
        .unwrap();
    s.linux_mut().as_mut().unwrap().set_seccomp(profile);
    let c = env.container(&pod, s);
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let exit = wait_exit(&env.iso, &c.id).await;
    let (out, err, _) = read_log(c.log_path.as_ref().unwrap());
    assert_eq!(exit.code, 0, "{out}{err}");
    assert_eq!(out.trim(), "CONTAINED", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_runs_from_a_sealed_copy() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let pid = env.iso.ensure_shim(&pod).await.unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.to_string_lossy().starts_with("/memfd:berth-shim"), "{exe:?}");
    let attempt = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"owned"));
    assert!(attempt.is_err(), "the shim's exe must not be writable");
    let fd = std::fs::File::open(format!("/proc/{pid}/exe")).unwrap();
    assert!(berth_isolation::sealed_exe::is_sealed(&fd));
    env.iso.remove_pod(&pod).await.unwrap();
    assert!(!pid_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_with_mappings() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let mut s = spec(&["sleep", "1000"], "box-userns");
    {
        use oci_spec::runtime::{LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType};
        let linux = s.linux_mut().as_mut().unwrap();
        let mut list = linux.namespaces().clone().unwrap();
        let mut user = LinuxNamespace::default();
        user.set_typ(LinuxNamespaceType::User);
        list.push(user);
        linux.set_namespaces(Some(list));
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(200_000u32)
            .size(65536u32)
            .build()
            .unwrap();
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    // gid=5 (tty) of devpts must be mapped: it is (0..65536).
    let c = env.container(&pod, s);
    env.iso.create(&c).await.unwrap();
    let pid = env.iso.start(&c.id).await.unwrap();
    assert_eq!(sh(&env.iso, &c.id, "id -u").await.1.trim(), "0");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t200000")), "{status}");
    assert_eq!(sh(&env.iso, &c.id, "head -c 3 /dev/zero | wc -c").await.1.trim(), "3");
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_mounts_are_mounted_inside_the_container_only() {
    use berth_core::plugin::isolation::Rootfs;
    use berth_core::plugin::snapshot::Mount;
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let snap = env.dir.path().join("snap");
    for d in ["upper", "work"] {
        std::fs::create_dir_all(snap.join(d)).unwrap();
    }
    let mut c = env.container(
        &pod,
        spec(
            &["sh", "-c", "echo written > /data/f; cat /data/f; exec sleep 1000"],
            "box-ov",
        ),
    );
    c.rootfs = Rootfs::Mounts(vec![Mount {
        fstype: "overlay".into(),
        source: "overlay".into(),
        // lowerdir relative to `chdir`, as the overlay snapshotter does for long layer lists.
        options: vec![
            "lowerdir=rootfs".into(),
            "upperdir=snap/upper".into(),
            "workdir=snap/work".into(),
        ],
        chdir: Some(env.dir.path().to_path_buf()),
    }]);
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    assert_eq!(sh(&env.iso, &c.id, "cat /data/f").await.1.trim(), "written");
    assert!(snap.join("upper/data/f").exists(), "writes land in the upper dir");
    assert!(!env.rootfs.join("data/f").exists(), "the lower dir is untouched");
    let host = host_mountinfo();
    assert!(
        !host.contains("overlay") || !host.contains(snap.to_str().unwrap()),
        "overlay mounted on the host"
    );
    let rootfs_dir = env.state.join("containers").join(&c.id).join("rootfs");
    assert_eq!(
        std::fs::read_dir(&rootfs_dir).unwrap().count(),
        0,
        "host sees an empty mount point"
    );
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();
    assert!(!env.state.join("containers").join(&c.id).exists());
}

/// Reads `fd` until `needle` shows up, EOF, or 10 s without it; returns what came.
fn read_until(fd: &std::os::fd::OwnedFd, needle: &str) -> String {
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let timeout = nix::poll::PollTimeout::try_from(left.as_millis().min(10_000) as i32).unwrap();
        if nix::poll::poll(&mut pfd, timeout).unwrap_or(0) == 0 {
            continue;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_all(fd: &std::os::fd::OwnedFd, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        off += nix::unistd::write(fd, &data[off..]).unwrap();
    }
}

async fn running(iso: &berth_isolation::LinuxIsolation, id: &str) -> bool {
    matches!(iso.state(id).await.unwrap().state, ProcessState::Running { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_joins_the_main_process_and_honours_stdin_once() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let script = r#"while read l; do echo "out:$l"; echo "err:$l" >&2; done; echo bye"#;

    // Without stdin_once: every attach gets stdin, output goes to all of them, and detaching (even with the
    // stdin closed) leaves the container running.
    let mut c = env.container(&pod, spec(&["sh", "-c", script], "box-att"));
    c.stdin = true;
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    for round in 0..2 {
        let io = env.iso.attach(&c.id, true, true, true).await.unwrap();
        let (stdin, stdout, stderr) = (io.stdin.unwrap(), io.stdout.unwrap(), io.stderr.unwrap());
        let out = tokio::task::spawn_blocking(move || {
            write_all(&stdin, format!("line{round}\n").as_bytes());
            let out = read_until(&stdout, &format!("out:line{round}\n"));
            let err = read_until(&stderr, &format!("err:line{round}\n"));
            drop(stdin);
            (out, err)
        })
        .await
        .unwrap();
        assert_eq!(out, (format!("out:line{round}\n"), format!("err:line{round}\n")));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            running(&env.iso, &c.id).await,
            "detaching must leave the container running"
        );
    }
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();

    // stdin_once: the first attach's stdin is the container's; closing it ends the container's input, and the
    // attach sees the rest of the output, then EOF.
    let mut c = env.container(&pod, spec(&["sh", "-c", script], "box-once"));
    c.stdin = true;
    c.stdin_once = true;
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let io = env.iso.attach(&c.id, true, true, false).await.unwrap();
    assert!(io.stderr.is_none());
    let (stdin, stdout) = (io.stdin.unwrap(), io.stdout.unwrap());
    let out = tokio::task::spawn_blocking(move || {
        write_all(&stdin, b"hello\n");
        let mut out = read_until(&stdout, "out:hello\n");
        drop(stdin);
        out.push_str(&read_until(&stdout, "\u{0}never"));
        out
    })
    .await
    .unwrap();
    assert_eq!(out, "out:hello\nbye\n");
    assert_eq!(wait_exit(&env.iso, &c.id).await.code, 0);
    env.iso.delete(&c.id).await.unwrap();

    // A tty: attach joins the pty (stdin goes to the master, output comes back on stdout alone), and
    // detaching leaves the container running.
    let mut c = env.container(
        &pod,
        spec(&["sh", "-c", r#"while read l; do echo "got:$l"; done"#], "box-tty"),
    );
    c.stdin = true;
    c.stdin_once = true;
    c.tty = true;
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    for round in 0..2 {
        let io = env.iso.attach(&c.id, true, true, false).await.unwrap();
        assert!(io.stderr.is_none());
        let (stdin, stdout) = (io.stdin.unwrap(), io.stdout.unwrap());
        let out = tokio::task::spawn_blocking(move || {
            write_all(&stdin, format!("tty{round}\n").as_bytes());
            read_until(&stdout, &format!("got:tty{round}"))
        })
        .await
        .unwrap();
        assert!(out.contains(&format!("got:tty{round}")), "{out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            running(&env.iso, &c.id).await,
            "detaching must leave the container running"
        );
    }
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_is_the_containers_own_devpts() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let mut c = env.container(
        &pod,
        spec(
            &["sh", "-c", "tty; readlink /proc/self/fd/0; exec sleep 1000"],
            "box-tty",
        ),
    );
    c.tty = true;
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    // The main process's pty is the first of the container's devpts newinstance.
    let log = c.log_path.clone().unwrap();
    let mut out = String::new();
    for _ in 0..100 {
        out = read_log(&log).0;
        if out.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(lines, ["/dev/pts/0", "/dev/pts/0"], "{out:?}");

    // An exec with a tty gets the next pty of the same devpts.
    let io = env
        .iso
        .exec(
            &c.id,
            &ExecSpec {
                args: vec!["sh".into(), "-c".into(), "tty; echo END".into()],
                tty: true,
                stdin: false,
                stdout: true,
                stderr: false,
            },
        )
        .await
        .unwrap();
    let master = io.stdout.unwrap();
    let out = tokio::task::spawn_blocking(move || read_until(&master, "END"))
        .await
        .unwrap();
    assert_eq!(
        out.lines().next().map(|l| l.trim_end_matches('\r')),
        Some("/dev/pts/1"),
        "{out:?}"
    );
    assert_eq!(env.iso.wait_exec(&c.id, &io.session).await.unwrap().code, 0);
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_attaches_of_a_silent_container_leave_no_fds_in_the_shim() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let mut c = env.container(&pod, spec(&["sleep", "1000"], "box-silent"));
    c.stdin = true;
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    let shim = env.shim_pid(&pod);
    // One attach first, so that whatever the shim allocates once is counted in the baseline.
    drop(env.iso.attach(&c.id, true, true, true).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = fd_count(shim);
    for _ in 0..50 {
        let io = env.iso.attach(&c.id, true, true, true).await.unwrap();
        assert!(io.stdout.is_some() && io.stderr.is_some());
        // Detach: the client side goes away while the container says nothing.
        drop(io);
    }
    // The shim notices each closed reader on its next poll wakeup: one more request is enough.
    env.iso.state(&c.id).await.unwrap();
    let mut after = fd_count(shim);
    for _ in 0..50 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = fd_count(shim);
    }
    assert!(
        after <= before,
        "shim fds grew from {before} to {after} after 50 detached attaches"
    );
    assert!(running(&env.iso, &c.id).await);
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_and_infra_processes_have_names() {
    use berth_core::plugin::isolation::PodIsolation;
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let ns = env
        .iso
        .pin_namespaces(&PodIsolation {
            pod_id: pod.clone(),
            hostname: "named".into(),
            shared_pid: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm(env.shim_pid(&pod)), "berth-shim\n");
    let infra = ns.infra_pid.expect("a shared-PID pod has an infra process");
    assert_eq!(comm(infra), "berth-init\n");
    // Inside the pod, PID 1 is the infra process.
    let mut s = spec(&["sleep", "1000"], "ignored");
    join_pod(&mut s, &ns);
    let c = env.container(&pod, s);
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    assert_eq!(sh(&env.iso, &c.id, "cat /proc/1/comm").await.1, "berth-init\n");
    env.iso.kill(&c.id, libc::SIGKILL).await.unwrap();
    wait_exit(&env.iso, &c.id).await;
    env.iso.delete(&c.id).await.unwrap();
    env.iso.unpin_namespaces(&pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_v1_hierarchies_show_the_containers_own_cgroups() {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("a cgroup v2 host: nothing to check");
        return;
    }
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let cg = RmCgroup::create("memory");
    let cgroup = cg.0.clone();
    std::fs::write(cgroup.join("memory.limit_in_bytes"), "67108864").unwrap();
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; grep -qx 1 /sys/fs/cgroup/memory/cgroup.procs && echo pid1; \
                  ls /sys/fs/cgroup/pids | wc -l; echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes || echo ro";
    let mut c = env.container(&pod, spec(&["sh", "-c", script], "box-cg"));
    c.cgroup_procs = vec![cgroup.join("cgroup.procs")];
    env.iso.create(&c).await.unwrap();
    env.iso.start(&c.id).await.unwrap();
    assert_eq!(wait_exit(&env.iso, &c.id).await.code, 0);
    let (out, err, _) = read_log(c.log_path.as_ref().unwrap());
    // Its own limit; itself as PID 1 in its cgroup; the pids hierarchy it was not placed in is empty; read-only.
    assert_eq!(out, "67108864\npid1\n0\nro\n", "{err}");
    env.iso.delete(&c.id).await.unwrap();
}
