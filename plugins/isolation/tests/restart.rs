//! kill -9 of the process that started the shim (a stand-in berthd) leaves the container running; a new one
//! recovers it, execs into it and reads its later exit code.

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use berth_core::plugin::isolation::{Isolation, ProcessState};
use berth_isolation::LinuxIsolation;
use common::*;

/// Not a test on its own: the stand-in berthd, run as a child process by `berthd_kill_9_keeps_containers`.
#[test]
#[ignore]
fn standin_berthd() {
    let Ok(state) = std::env::var("BERTH_STANDIN_STATE") else {
        return;
    };
    let rootfs = PathBuf::from(std::env::var("BERTH_STANDIN_ROOTFS").unwrap());
    let pod = std::env::var("BERTH_STANDIN_POD").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let iso = LinuxIsolation::new(PathBuf::from(state), shim(), true);
        let id = unique("ctr");
        let script = format!("while [ ! -e /tmp/go-{id} ]; do sleep 0.05; done; exit 7");
        let spec = spec(&["sh", "-c", &script], "survivor");
        let c = berth_core::plugin::isolation::ContainerSpec {
            id: id.clone(),
            pod_id: pod,
            spec,
            rootfs: berth_core::plugin::isolation::Rootfs::Path(rootfs),
            log_path: None,
            stdin: false,
            stdin_once: false,
            tty: false,
            cgroup_procs: Vec::new(),
        };
        iso.create(&c).await.unwrap();
        let pid = iso.start(&id).await.unwrap();
        println!("READY {id} {pid}");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_kill_9_keeps_containers() {
    let env = Env::new();
    let pod = unique("pod");
    env.track_pod(&pod);
    let mut child = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "standin_berthd",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("BERTH_STANDIN_STATE", &env.state)
            .env("BERTH_STANDIN_ROOTFS", &env.rootfs)
            .env("BERTH_STANDIN_POD", &pod)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("READY ").map(|(_, rest)| rest.to_string()))
    })
    .await
    .unwrap()
    .expect("stand-in berthd started a container");
    let mut words = line.split_whitespace();
    let id = words.next().unwrap().to_string();
    let pid: u32 = words.next().unwrap().parse().unwrap();

    eprintln!("stand-in started {id} (pid {pid})");
    // kill -9 the stand-in berthd.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(pid_alive(pid), "the container died with berthd");

    // A new berthd finds the shim and the container again.
    let iso = env.reopen();
    let states = iso.recover().await.unwrap();
    eprintln!("recovered {states:?}");
    let found = states.iter().find(|s| s.id == id).expect("recovered container");
    assert!(
        matches!(found.state, ProcessState::Running { pid: p, .. } if p == pid),
        "{found:?}"
    );
    assert_eq!(sh(&iso, &id, "hostname").await.1.trim(), "survivor");
    assert_eq!(sh(&iso, &id, "exit 9").await.0, 9);

    std::fs::write(env.rootfs.join("tmp").join(format!("go-{id}")), "").unwrap();
    let exit = iso.wait(&id, Duration::from_secs(30)).await.unwrap().expect("exited");
    assert_eq!(exit.code, 7);
    iso.delete(&id).await.unwrap();
    let shim = env.shim_pid(&pod);
    iso.remove_pod(&pod).await.unwrap();
    assert!(!pid_alive(shim), "no shim left after the pod is removed");
}
