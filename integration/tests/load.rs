//! Load: many pods with two containers each, every container probed with ExecSync `true` every second (an exec
//! liveness probe as kubelet runs it), while another client lists containers every 200 ms.
//!
//! Asserted (never on time): every probe exits 0, every zombie under a shim is reaped, berthd's and the shims' fd
//! counts do not grow over the probe phase, and once every pod is removed nothing is left. Printed: the
//! ListContainers latencies (p50/p99/max) during the probes, the probe count and latency, and the CPU time
//! berthd and the shims (with their reaped exec children) spent per probe.
//!
//! CI runs 20 pods for 20 s. The figure: `BERTH_LOAD_PODS=100 BERTH_LOAD_SECS=30`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_cri::api::{ExecSyncRequest, ListContainersRequest};
use berth_integration::procfs::{self, Cpu};
use berth_integration::{Berthd, BerthdOptions, cri, ensure_test_images, leaks, ok_stdout};
use tokio::task::JoinSet;

/// Pods started (and removed) at once.
const PARALLEL: usize = 10;
/// fds a process may gain over the probe phase without it counting as a leak: an exec in flight at the second
/// count holds a few (its pipes and the reply socket), and the runtimes may lazily open a log or a timer fd.
const FD_SLACK: usize = 8;
/// No call should take this long even on a loaded machine; past it the test fails rather than hangs.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// fd counts of berthd and every shim, by pid.
fn fd_counts(b: &Berthd, berthd: i32) -> BTreeMap<i32, usize> {
    let mut pids = leaks::shims_of(&b.state());
    pids.push(berthd);
    pids.into_iter()
        .filter_map(|p| procfs::fd_count(p).map(|n| (p, n)))
        .collect()
}

/// CPU time of berthd, and of all shims together (their reaped exec children included).
fn cpu_of(b: &Berthd, berthd: i32) -> (Cpu, Cpu) {
    let shims = leaks::shims_of(&b.state()).into_iter().filter_map(procfs::cpu).sum();
    (procfs::cpu(berthd).expect("berthd is gone"), shims)
}

/// One ExecSync `true`; `Err` names why it did not exit 0.
async fn probe(rt: &mut cri::Runtime, id: &str) -> Result<Duration, String> {
    let req = ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["true".into()],
        timeout: 10,
    };
    let t = Instant::now();
    match tokio::time::timeout(CALL_TIMEOUT, rt.exec_sync(req)).await {
        Ok(Ok(r)) if r.get_ref().exit_code == 0 => Ok(t.elapsed()),
        Ok(Ok(r)) => Err(format!(
            "exit {} (stderr {:?})",
            r.get_ref().exit_code,
            String::from_utf8_lossy(&r.get_ref().stderr)
        )),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer in {CALL_TIMEOUT:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_under_load() {
    let pods = env_or("BERTH_LOAD_PODS", 20) as usize;
    let secs = env_or("BERTH_LOAD_SECS", 20);
    ensure_test_images();
    let mut b = Berthd::start(BerthdOptions::default()).expect("berthd");
    let berthd = b.child.as_ref().expect("berthd child").id() as i32;
    ok_stdout(&b.crictl(&["pull", cri::BUSYBOX]), "crictl pull");
    let rt = b.runtime().await.expect("connect");
    let logs = b.dir.path().join("logs");

    // Pods, PARALLEL at a time, each with two `sleep 3600` containers.
    let started = Instant::now();
    let mut pod_ids = Vec::new();
    let mut containers = Vec::new();
    let mut pod_container = HashMap::new();
    for chunk in (0..pods).collect::<Vec<_>>().chunks(PARALLEL) {
        let mut set = JoinSet::new();
        for &i in chunk {
            let (mut rt, logs) = (rt.clone(), logs.clone());
            set.spawn(async move {
                let sandbox = cri::pod(&format!("load{i}"), &logs);
                let pod = cri::run_pod(&mut rt, &sandbox).await?;
                let mut ids = Vec::new();
                for c in ["a", "b"] {
                    let mut config = cri::container(c, "");
                    config.command = vec!["sleep".into(), "3600".into()];
                    let id = cri::create(&mut rt, &pod, &sandbox, config).await?;
                    cri::start(&mut rt, &id).await?;
                    ids.push(id);
                }
                Ok::<_, tonic::Status>((pod, ids))
            });
        }
        while let Some(r) = set.join_next().await {
            let (pod, ids) = r.expect("pod task").unwrap_or_else(|s| {
                panic!(
                    "pod {} of {pods} did not start: {s:?}\nberthd log tail:\n{}",
                    pod_ids.len(),
                    tail(&b.log_text(), 40)
                )
            });
            pod_container.insert(pod.clone(), ids[0].clone());
            pod_ids.push(pod);
            containers.extend(ids);
        }
    }
    eprintln!(
        "load: {pods} pods, {} containers up in {:.1} s",
        containers.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(leaks::shims_of(&b.state()).len(), pods, "one shim per pod");

    // One probe in every container first: connections and buffers a first exec sets up are not leaks.
    let mut set = JoinSet::new();
    for id in containers.clone() {
        let mut rt = rt.clone();
        set.spawn(async move { probe(&mut rt, &id).await.map_err(|e| format!("{id}: {e}")) });
    }
    while let Some(r) = set.join_next().await {
        r.expect("warm-up task").expect("warm-up probe");
    }
    let fds_before = fd_counts(&b, berthd);
    let (berthd_cpu0, shims_cpu0) = cpu_of(&b, berthd);

    // The probe phase: a task per container, one lister, one zombie watcher.
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Instant::now();
    let mut probes = JoinSet::new();
    for (k, id) in containers.iter().cloned().enumerate() {
        let mut rt = rt.clone();
        let n = containers.len();
        probes.spawn(async move {
            // Spread the probes over the second, as kubelet's per-pod workers are.
            tokio::time::sleep(Duration::from_millis((k * 1000 / n) as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for _ in 0..secs {
                tick.tick().await;
                match probe(&mut rt, &id).await {
                    Ok(d) => ok.push(d),
                    Err(e) => failed.push(format!("{id}: {e}")),
                }
            }
            (ok, failed)
        });
    }
    let lister = {
        let (mut rt, stop) = (rt.clone(), stop.clone());
        let expected = containers.len();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut wrong = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let req = ListContainersRequest { filter: None };
                match tokio::time::timeout(CALL_TIMEOUT, rt.list_containers(req)).await {
                    Ok(Ok(r)) => {
                        lat.push(t.elapsed());
                        let n = r.into_inner().containers.len();
                        if n != expected {
                            wrong.push(format!("ListContainers returned {n} containers, not {expected}"));
                        }
                    }
                    Ok(Err(s)) => wrong.push(format!("ListContainers: {s:?}")),
                    Err(_) => wrong.push(format!("ListContainers: no answer in {CALL_TIMEOUT:?}")),
                }
            }
            (lat, wrong)
        })
    };
    // A zombie is fine for the moment between a child's exit and the shim's waitpid. Whether it is reaped must
    // not depend on how loaded the machine is, so the check is causal rather than timed: after zombies are
    // seen, one more probe runs in a container of each of their shims. Its answer needs a SIGCHLD pass of that
    // shim's loop, whose waitpid(-1) loop reaps every child dead before it, so a zombie seen before the probe
    // and still there after it is one the shim does not reap.
    let watcher = {
        let (stop, state, mut rt) = (stop.clone(), b.state(), rt.clone());
        let pod_container = pod_container.clone();
        tokio::spawn(async move {
            let (mut unreaped, mut seen, mut samples, mut extra) = (BTreeSet::new(), 0usize, 0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let st = state.clone();
                let (before, shims) =
                    tokio::task::spawn_blocking(move || (leaks::zombies_of(&st), leaks::shim_processes(&st)))
                        .await
                        .expect("zombie scan");
                samples += 1;
                seen += before.len();
                let parents: BTreeSet<String> = before
                    .iter()
                    .filter_map(|z| zombie_parent(z))
                    .map(str::to_string)
                    .collect();
                // Only shims that answered a probe since are held to it (a failed probe fails the test anyway).
                let mut checked = BTreeSet::new();
                for parent in parents {
                    let pod = shims
                        .iter()
                        .find(|(pid, _)| pid.to_string() == *parent)
                        .and_then(|(_, cmd)| cmd.split(' ').skip_while(|a| *a != "--pod-id").nth(1));
                    if let Some(id) = pod.and_then(|p| pod_container.get(p)) {
                        if probe(&mut rt, id).await.is_ok() {
                            checked.insert(parent);
                        }
                        extra += 1;
                    }
                }
                let st = state.clone();
                let after: BTreeSet<String> = tokio::task::spawn_blocking(move || leaks::zombies_of(&st))
                    .await
                    .expect("zombie scan")
                    .into_iter()
                    .collect();
                unreaped.extend(
                    before
                        .into_iter()
                        .filter(|z| after.contains(z) && zombie_parent(z).is_some_and(|p| checked.contains(p))),
                );
            }
            (unreaped, samples, seen, extra)
        })
    };

    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    while let Some(r) = probes.join_next().await {
        let (o, f) = r.expect("probe task");
        ok.extend(o);
        failed.extend(f);
    }
    let took = phase.elapsed();
    let (berthd_cpu1, shims_cpu1) = cpu_of(&b, berthd);
    stop.store(true, Ordering::Relaxed);
    let (mut list_lat, list_wrong) = lister.await.expect("lister");
    let (unreaped, zombie_samples, zombies_seen, extra_probes) = watcher.await.expect("zombie watcher");
    // Give in-flight bookkeeping a moment to settle before the second fd count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_after = fd_counts(&b, berthd);

    ok.sort();
    list_lat.sort();
    let done = ok.len() + failed.len();
    // The watcher's probes cost CPU too.
    let all = done + extra_probes;
    let per_probe = |d: Duration| ms(d) / all.max(1) as f64;
    let (bc, sc) = (
        berthd_cpu1.total() - berthd_cpu0.total(),
        shims_cpu1.total() - shims_cpu0.total(),
    );
    eprintln!(
        "load: {pods} pods, {} containers, {secs} s of probes took {:.1} s: {done} probes ({:.0}/s), {} failed; \
         probe latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        containers.len(),
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64(),
        failed.len(),
        ms(pct(&ok, 50)),
        ms(pct(&ok, 99)),
        ms(ok.last().copied().unwrap_or_default()),
    );
    eprintln!(
        "load: ListContainers during the probes ({} calls): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        list_lat.len(),
        ms(pct(&list_lat, 50)),
        ms(pct(&list_lat, 99)),
        ms(list_lat.last().copied().unwrap_or_default()),
    );
    eprintln!(
        "load: CPU over the probe phase: berthd {:.2} s, shims {:.2} s (of which reaped exec children {:.2} s); \
         per probe: berthd {:.2} ms, shims {:.2} ms, together {:.2} ms ({:.1} CPU-s per 1000 probes)",
        bc.as_secs_f64(),
        sc.as_secs_f64(),
        (shims_cpu1.children - shims_cpu0.children).as_secs_f64(),
        per_probe(bc),
        per_probe(sc),
        per_probe(bc + sc),
        (bc + sc).as_secs_f64() * 1000.0 / all.max(1) as f64,
    );
    let grown: Vec<String> = fds_before
        .iter()
        .filter_map(|(pid, before)| {
            let after = *fds_after.get(pid)?;
            (after > before + FD_SLACK).then(|| {
                let who = if *pid == berthd { "berthd" } else { "shim" };
                format!("{who} {pid}: {before} fds before the probes, {after} after")
            })
        })
        .collect();
    let max_growth = fds_before
        .iter()
        .filter_map(|(pid, before)| Some(fds_after.get(pid)? - before.min(fds_after.get(pid)?)))
        .max()
        .unwrap_or(0);
    eprintln!(
        "load: fds: berthd {} before, {} after; largest growth of any process {max_growth}; zombies under the shims: {zombies_seen} in \
         {zombie_samples} samples, {} not reaped",
        fds_before[&berthd],
        fds_after.get(&berthd).copied().unwrap_or(0),
        unreaped.len(),
    );

    assert!(
        failed.is_empty(),
        "{} probes failed, e.g. {:#?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(done as u64, secs * containers.len() as u64, "every probe ran");
    assert!(
        list_wrong.is_empty(),
        "ListContainers: {:#?}",
        &list_wrong[..list_wrong.len().min(10)]
    );
    assert!(unreaped.is_empty(), "zombies the shims did not reap: {unreaped:#?}");
    assert_eq!(
        fds_after.len(),
        fds_before.len(),
        "berthd or a shim died during the probes"
    );
    assert!(grown.is_empty(), "fd growth over the probes: {grown:#?}");

    // Remove everything, PARALLEL pods at a time, and nothing may be left.
    for chunk in pod_ids.chunks(PARALLEL) {
        let mut set = JoinSet::new();
        for pod in chunk {
            let (mut rt, pod) = (rt.clone(), pod.clone());
            set.spawn(async move { cri::remove_pod(&mut rt, &pod).await });
        }
        while let Some(r) = set.join_next().await {
            r.expect("remove task");
        }
    }
    assert!(cri::containers(&mut rt.clone()).await.is_empty(), "containers left");
    let zombies = leaks::zombies_of(&b.state());
    assert!(zombies.is_empty(), "zombies after removal: {zombies:#?}");
    b.assert_no_leaks();
}

/// The parent pid in a [`leaks::zombies_of`] line.
fn zombie_parent(line: &str) -> Option<&str> {
    Some(line.rsplit_once("(parent ")?.1.trim_end_matches(')'))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A probe whose command hands off its stdout and stderr and keeps running must still end at its timeout
/// (DeadlineExceeded, the process killed), not when the command exits: kubelet's probe timeout is a second.
#[tokio::test]
async fn exec_sync_timeout_holds_after_the_output_closed() {
    ensure_test_images();
    let mut b = Berthd::start(BerthdOptions::default()).expect("berthd");
    ok_stdout(&b.crictl(&["pull", cri::BUSYBOX]), "crictl pull");
    let mut rt = b.runtime().await.expect("connect");
    let logs = b.dir.path().join("logs");
    let mut config = cri::container("main", "");
    config.command = vec!["sleep".into(), "3600".into()];
    let (pod, id) = cri::run_pod_with(rt.clone(), cri::pod("exectimeout", &logs), config)
        .await
        .expect("pod");
    let req = ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec![
            "/bin/sh".into(),
            "-c".into(),
            "exec >/dev/null 2>&1; exec sleep 3600".into(),
        ],
        timeout: 2,
    };
    // Only a guard against hanging for the hour the command would run.
    let r = tokio::time::timeout(Duration::from_secs(60), rt.exec_sync(req))
        .await
        .expect("ExecSync ignored its 2 s timeout once the command closed its output");
    let status = r.expect_err("ExecSync of a command outliving its timeout must fail");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    probe(&mut rt, &id).await.expect("a probe after the timed-out one");
    cri::remove_pod(&mut rt, &pod).await;
    b.assert_no_leaks();
}
