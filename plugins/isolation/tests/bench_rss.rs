//! Shim memory benchmark (not a test: `cargo test --test bench_rss -- --ignored --nocapture`).
//! Set BERTH_SHIM to measure another build (e.g. the `shim` profile with `+crt-static`).

mod common;

use berth_core::plugin::isolation::Isolation;
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
    let env = Env::new();
    println!("shim {}", shim().display());
    let pod = unique("pod");
    env.track_pod(&pod);
    let pid = env.iso.ensure_shim(&pod).await.unwrap();
    println!("idle shim:        {}", memory(pid));
    // Ten more idle pods: their shims share one sealed copy of the binary, which PSS splits between them.
    let mut others = Vec::new();
    for _ in 0..10 {
        let other = unique("pod");
        env.track_pod(&other);
        others.push(env.iso.ensure_shim(&other).await.unwrap());
    }
    println!("idle, 11 shims:   {}", memory(pid));
    for n in 1..=10 {
        let c = env.container(&pod, spec(&["sh", "-c", "echo hello; exec sleep 1000"], "bench"));
        env.iso.create(&c).await.unwrap();
        env.iso.start(&c.id).await.unwrap();
        let _ = sh(&env.iso, &c.id, "true").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        println!("{n:2} container(s):  {}", memory(pid));
    }
    drop(others);
}
