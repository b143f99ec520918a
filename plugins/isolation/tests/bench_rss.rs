//! Shim memory benchmark (not a test: `cargo test --test bench_rss -- --ignored --nocapture`).
//! Set BERTH_SHIM to measure another build (e.g. the `shim` profile with `+crt-static`).

mod common;

use std::path::PathBuf;

use berth_core::plugin::isolation::Isolation;
use berth_isolation::LinuxIsolation;
use common::*;

fn memory(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    format!(
        "VmRSS {} (RssAnon {}, RssFile {}, RssShmem {}), Pss {pss}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("RssShmem:")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn shim_rss() {
    let mut env = Env::new();
    let shim = std::env::var("BERTH_SHIM")
        .map(PathBuf::from)
        .unwrap_or(PathBuf::from(SHIM));
    env.iso = LinuxIsolation::new(env.state.clone(), shim.clone(), true);
    let pod = unique("pod");
    env.track_pod(&pod);
    let pid = env.iso.ensure_shim(&pod).await.unwrap();
    println!("shim {}", shim.display());
    println!("idle shim:      {}", memory(pid));
    for n in 1..=3 {
        let c = env.container(&pod, spec(&["sh", "-c", "echo hello; exec sleep 1000"], "bench"));
        env.iso.create(&c).await.unwrap();
        env.iso.start(&c.id).await.unwrap();
        let _ = sh(&env.iso, &c.id, "true").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        println!("{n} container(s): {}", memory(pid));
    }
}
