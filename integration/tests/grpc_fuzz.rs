//! Hostile CRI requests over gRPC against a live berthd, for a bounded time (`BERTH_GRPC_FUZZ_SECS`, default
//! 20; `BERTH_GRPC_FUZZ_SEED` replays a run): every RuntimeService and ImageService method gets bytes mutated
//! from valid requests (flipped, set, inserted, deleted, spliced bytes) and sent as they are (what does not
//! decode tests the server's decoding, what does is a structured hostile request), plus raw garbage on fresh
//! connections. Every reply is OK or a gRPC
//! status, never a dropped connection; berthd answers Version throughout, logs no panic, and once every pod
//! is removed nothing is left behind.
//!
//! What the fuzz must not do to the host, so requests that decode are defused before they are sent (see
//! [`defuse`]): no mount of a host path (every mount source becomes a directory of the test; destinations with
//! `..` are dropped), no host devices or CDI devices, nothing privileged, no host namespaces (they would put
//! the container's processes in the host's network, PID or IPC namespace), no host ports (DNAT rules for
//! random ports could capture the host's own traffic), no cgroup parent or log directory of the request's
//! choosing, only namespaced sysctls, only the test image with a harmless command, exec of `true` only, short
//! stop timeouts (nothing hangs), pulls from the local registry only (no lookups of random hosts), and the test
//! image is never removed. Everything else stays random.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_cri::api::*;
use berth_integration::{Berthd, BerthdOptions, Rng, cri, ensure_test_images, ok_stdout};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Sends and receives messages as bytes: the fuzz decides what is on the wire.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A byte for the fuzz: an interesting value, printable ASCII (it keeps string fields UTF-8, so more of the
/// requests decode), or anything.
fn byte(r: &mut Rng) -> u8 {
    const INTERESTING: [u8; 6] = [0, 0x7f, 0x80, 0xff, 0x0a, 0x2f];
    match r.below(4) {
        0 => INTERESTING[r.below(INTERESTING.len())],
        1 | 2 => b' ' + r.below(95) as u8,
        _ => r.next_u64() as u8,
    }
}

/// Flips, sets, inserts and deletes bytes of a valid request, splices in a piece of another, or makes noise.
fn mutate(r: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    if r.below(10) == 0 {
        return (0..r.below(64)).map(|_| byte(r)).collect();
    }
    let mut b = seed.to_vec();
    for _ in 0..1 + r.below(4) {
        let at = r.below(b.len() + 1);
        match r.below(7) {
            0 if at < b.len() => b[at] ^= 1 << r.below(8),
            1..=3 if at < b.len() => b[at] = byte(r),
            4 if at < b.len() => {
                b.remove(at);
            }
            5 if !other.is_empty() => {
                let from = r.below(other.len());
                let len = r.below(other.len() - from + 1);
                b.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => b.insert(at, byte(r)),
        }
    }
    b
}

/// What the fuzz knows of the live berthd.
struct Ctx {
    pod: String,
    container: String,
    sandbox: PodSandboxConfig,
    /// The test image's id: never removed.
    image_id: String,
    /// Mount sources and log directories of the fuzz: directories of the test.
    volume: String,
    logs: String,
    scratch: String,
}

const SAFE_COMMAND: [&str; 3] = ["/bin/sh", "-c", "exec sleep 1000"];
const MISSING_IMAGE: &str = "127.0.0.1:5000/berth-fuzz/missing:1";

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// One valid request per method (path, server-streaming?, bytes), on the live pod and container.
fn seeds(c: &Ctx) -> Vec<(&'static str, bool, Vec<u8>)> {
    let pod = || c.pod.clone();
    let ctr = || c.container.clone();
    let resources = LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0".into(),
        unified: [("memory.high".to_string(), "100M".to_string())].into(),
        ..Default::default()
    };
    let mut container = cri::container("fuzz", "exec sleep 1000");
    container.mounts.push(berth_cri::api::Mount {
        container_path: "/data".into(),
        host_path: c.volume.clone(),
        readonly: true,
        ..Default::default()
    });
    container.envs.push(KeyValue {
        key: "A".into(),
        value: "b".into(),
    });
    if let Some(l) = container.linux.as_mut() {
        l.resources = Some(resources.clone());
    }
    let label = || [("app".to_string(), "fuzz".to_string())].into();
    vec![
        (
            "/runtime.v1.RuntimeService/Version",
            false,
            VersionRequest { version: "v1".into() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/RunPodSandbox",
            false,
            RunPodSandboxRequest {
                config: Some(c.sandbox.clone()),
                runtime_handler: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StopPodSandbox",
            false,
            StopPodSandboxRequest { pod_sandbox_id: pod() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/RemovePodSandbox",
            false,
            RemovePodSandboxRequest { pod_sandbox_id: pod() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/PodSandboxStatus",
            false,
            PodSandboxStatusRequest {
                pod_sandbox_id: pod(),
                verbose: true,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListPodSandbox",
            false,
            ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    id: pod(),
                    state: None,
                    label_selector: label(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StreamPodSandboxes",
            true,
            StreamPodSandboxesRequest { filter: None }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/CreateContainer",
            false,
            CreateContainerRequest {
                pod_sandbox_id: pod(),
                config: Some(container),
                sandbox_config: Some(c.sandbox.clone()),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StartContainer",
            false,
            StartContainerRequest { container_id: ctr() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StopContainer",
            false,
            StopContainerRequest {
                container_id: ctr(),
                timeout: 1,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/RemoveContainer",
            false,
            RemoveContainerRequest { container_id: ctr() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListContainers",
            false,
            ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: ctr(),
                    pod_sandbox_id: pod(),
                    label_selector: label(),
                    state: None,
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StreamContainers",
            true,
            StreamContainersRequest { filter: None }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ContainerStatus",
            false,
            ContainerStatusRequest {
                container_id: ctr(),
                verbose: true,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/UpdateContainerResources",
            false,
            UpdateContainerResourcesRequest {
                container_id: ctr(),
                linux: Some(resources.clone()),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ReopenContainerLog",
            false,
            ReopenContainerLogRequest { container_id: ctr() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ExecSync",
            false,
            ExecSyncRequest {
                container_id: ctr(),
                cmd: vec!["true".into()],
                timeout: 5,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/Exec",
            false,
            ExecRequest {
                container_id: ctr(),
                cmd: vec!["sh".into()],
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/Attach",
            false,
            AttachRequest {
                container_id: ctr(),
                stdin: true,
                tty: false,
                stdout: true,
                stderr: true,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/PortForward",
            false,
            PortForwardRequest {
                pod_sandbox_id: pod(),
                port: vec![80],
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ContainerStats",
            false,
            ContainerStatsRequest { container_id: ctr() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListContainerStats",
            false,
            ListContainerStatsRequest {
                filter: Some(ContainerStatsFilter {
                    id: ctr(),
                    pod_sandbox_id: pod(),
                    label_selector: label(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StreamContainerStats",
            true,
            StreamContainerStatsRequest { filter: None }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/PodSandboxStats",
            false,
            PodSandboxStatsRequest { pod_sandbox_id: pod() }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListPodSandboxStats",
            false,
            ListPodSandboxStatsRequest {
                filter: Some(PodSandboxStatsFilter {
                    id: pod(),
                    label_selector: label(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StreamPodSandboxStats",
            true,
            StreamPodSandboxStatsRequest { filter: None }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/UpdateRuntimeConfig",
            false,
            UpdateRuntimeConfigRequest {
                runtime_config: Some(RuntimeConfig {
                    network_config: Some(NetworkConfig {
                        pod_cidr: String::new(),
                    }),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/Status",
            false,
            StatusRequest { verbose: true }.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/CheckpointContainer",
            false,
            CheckpointContainerRequest {
                container_id: ctr(),
                location: c.scratch.clone(),
                timeout: 5,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/GetContainerEvents",
            true,
            GetEventsRequest {}.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListMetricDescriptors",
            false,
            ListMetricDescriptorsRequest {}.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListPodSandboxMetrics",
            false,
            ListPodSandboxMetricsRequest {}.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/StreamPodSandboxMetrics",
            true,
            StreamPodSandboxMetricsRequest {}.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/RuntimeConfig",
            false,
            RuntimeConfigRequest {}.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
            false,
            UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: pod(),
                overhead: Some(resources.clone()),
                resources: Some(resources),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/ListImages",
            false,
            ListImagesRequest {
                filter: Some(ImageFilter {
                    image: spec(cri::BUSYBOX),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/StreamImages",
            true,
            StreamImagesRequest { filter: None }.encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/ImageStatus",
            false,
            ImageStatusRequest {
                image: spec(cri::BUSYBOX),
                verbose: true,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/PullImage",
            false,
            PullImageRequest {
                image: spec(cri::BUSYBOX),
                auth: None,
                sandbox_config: Some(c.sandbox.clone()),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/RemoveImage",
            false,
            RemoveImageRequest {
                image: spec(MISSING_IMAGE),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/ImageFsInfo",
            false,
            ImageFsInfoRequest {}.encode_to_vec(),
        ),
    ]
}

/// NODE (the host's namespace) becomes POD.
fn no_host_namespaces(ns: &mut Option<NamespaceOption>) {
    if let Some(ns) = ns {
        for mode in [&mut ns.network, &mut ns.pid, &mut ns.ipc] {
            if *mode == NamespaceMode::Node as i32 {
                *mode = NamespaceMode::Pod as i32;
            }
        }
    }
}

fn defuse_pod(cfg: &mut PodSandboxConfig, c: &Ctx) {
    cfg.log_directory = c.logs.clone();
    cfg.port_mappings.clear();
    if let Some(l) = cfg.linux.as_mut() {
        l.cgroup_parent.clear();
        l.sysctls.retain(|k, _| {
            let k = k.replace('/', ".");
            ["net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue."]
                .iter()
                .any(|p| k.starts_with(p))
                && !k.contains("..")
        });
        if let Some(sc) = l.security_context.as_mut() {
            sc.privileged = false;
            no_host_namespaces(&mut sc.namespace_options);
        }
    }
}

fn defuse_container(cfg: &mut ContainerConfig, c: &Ctx) {
    if let Some(image) = cfg.image.as_mut() {
        image.image = cri::BUSYBOX.into();
    }
    cfg.command = SAFE_COMMAND.iter().map(|s| s.to_string()).collect();
    cfg.args.clear();
    cfg.mounts.retain(|m| !m.container_path.contains(".."));
    for m in &mut cfg.mounts {
        m.host_path = c.volume.clone();
        m.propagation = MountPropagation::PropagationPrivate as i32;
        m.image = None;
    }
    cfg.devices.clear();
    cfg.cdi_devices.clear();
    if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = false;
        no_host_namespaces(&mut sc.namespace_options);
    }
}

/// Requests that decode are made harmless to the host (see the module's comment); the rest go out as they are
/// (berthd's decoder refuses them just as prost did here).
fn defuse(path: &str, bytes: Vec<u8>, c: &Ctx, r: &mut Rng) -> Vec<u8> {
    let method = path.rsplit('/').next().unwrap_or_default();
    macro_rules! fix {
        ($ty:ty, |$m:ident| $body:block) => {
            match <$ty>::decode(bytes.as_slice()) {
                Ok(mut $m) => {
                    $body;
                    $m.encode_to_vec()
                }
                Err(_) => bytes,
            }
        };
    }
    match method {
        "RunPodSandbox" => fix!(RunPodSandboxRequest, |m| {
            if let Some(cfg) = m.config.as_mut() {
                defuse_pod(cfg, c);
            }
        }),
        "CreateContainer" => fix!(CreateContainerRequest, |m| {
            if let Some(cfg) = m.config.as_mut() {
                defuse_container(cfg, c);
            }
            if let Some(cfg) = m.sandbox_config.as_mut() {
                defuse_pod(cfg, c);
            }
        }),
        "StopContainer" => fix!(StopContainerRequest, |m| { m.timeout = m.timeout.rem_euclid(3) }),
        "ExecSync" => fix!(ExecSyncRequest, |m| {
            m.cmd = vec!["true".into()];
            m.timeout = m.timeout.rem_euclid(10);
        }),
        "PullImage" => fix!(PullImageRequest, |m| {
            if let Some(image) = m.image.as_mut() {
                image.image = [cri::BUSYBOX, MISSING_IMAGE][r.below(2)].into();
            }
            if let Some(cfg) = m.sandbox_config.as_mut() {
                defuse_pod(cfg, c);
            }
        }),
        "RemoveImage" => fix!(RemoveImageRequest, |m| {
            if let Some(image) = m.image.as_mut() {
                let s = image.image.trim_start_matches("sha256:");
                if image.image.contains("busybox") || (s.len() >= 3 && c.image_id.contains(s)) || s.is_empty() {
                    image.image = MISSING_IMAGE.into();
                }
            }
        }),
        "CheckpointContainer" => fix!(CheckpointContainerRequest, |m| { m.location = c.scratch.clone() }),
        "UpdateRuntimeConfig" => fix!(UpdateRuntimeConfigRequest, |m| {
            // A random pod CIDR would move the test bridge's address and routes over the host's networks.
            if let Some(n) = m.runtime_config.as_mut().and_then(|rc| rc.network_config.as_mut()) {
                n.pod_cidr.clear();
            }
        }),
        _ => bytes,
    }
}

/// A status that did not come from berthd (the connection broke: reset, closed, refused) has a transport
/// error as its source; berthd's own statuses come from the trailers and have none.
fn dropped(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

async fn call(ch: &Channel, path: &'static str, streaming: bool, body: Vec<u8>) -> Result<(), Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::from_error(format!("channel not ready: {e}").into()))?;
    let path = PathAndQuery::from_static(path);
    if streaming {
        let mut s = g
            .server_streaming(tonic::Request::new(body), path, Raw)
            .await?
            .into_inner();
        // Streams run until the client leaves: take what comes at once, then hang up.
        if let Ok(next) = tokio::time::timeout(Duration::from_millis(200), s.message()).await {
            next?;
        }
    } else {
        g.unary(tonic::Request::new(body), path, Raw).await?;
    }
    Ok(())
}

/// The live pod and container of the fuzz (a fresh pair if the fuzz removed them all), and the current ids.
async fn refresh(rt: &mut cri::Runtime, c: &mut Ctx, r: &mut Rng, n: &mut u32) {
    let pods: Vec<_> = cri::pods(rt).await.into_iter().filter(|p| p.state == 0).collect();
    let containers = cri::containers(rt).await;
    if pods.is_empty() || containers.is_empty() {
        *n += 1;
        let mut sandbox = cri::pod(&format!("fuzz-{n}"), Path::new(&c.logs));
        sandbox.log_directory = c.logs.clone();
        let pod = cri::run_pod(rt, &sandbox).await.expect("RunPodSandbox of a valid pod");
        let mut container = cri::container("seed", "exec sleep 1000");
        container.command = SAFE_COMMAND.iter().map(|s| s.to_string()).collect();
        let id = cri::create(rt, &pod, &sandbox, container)
            .await
            .expect("CreateContainer of a valid container");
        cri::start(rt, &id).await.expect("StartContainer");
        (c.pod, c.container, c.sandbox) = (pod, id, sandbox);
        return;
    }
    c.pod = pods[r.below(pods.len())].id.clone();
    c.container = containers[r.below(containers.len())].id.clone();
}

fn alive(b: &mut Berthd) {
    let child = b.child.as_mut().expect("berthd runs");
    if let Ok(Some(status)) = child.try_wait() {
        panic!("berthd exited ({status}):\n{}", b.log_text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_grpc_requests_get_statuses_and_berthd_survives() {
    ensure_test_images();
    let secs: u64 = std::env::var("BERTH_GRPC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("BERTH_GRPC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("grpc fuzz: {secs} s, BERTH_GRPC_FUZZ_SEED={seed}");
    let mut r = Rng(seed);

    let mut b = Berthd::start(BerthdOptions::default()).unwrap();
    ok_stdout(&b.crictl(&["pull", cri::BUSYBOX]), "crictl pull");
    let dir = b.dir.path().to_path_buf();
    for d in ["fuzz-volume", "fuzz-logs", "fuzz-scratch"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let ch = b.channel().await.unwrap();
    let mut rt = cri::Runtime::new(ch.clone());
    let mut images = b.images().await.unwrap();
    let image_id = images
        .image_status(ImageStatusRequest {
            image: spec(cri::BUSYBOX),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("the test image is there")
        .id;
    let mut c = Ctx {
        pod: String::new(),
        container: String::new(),
        sandbox: PodSandboxConfig::default(),
        image_id,
        volume: dir.join("fuzz-volume").display().to_string(),
        logs: dir.join("fuzz-logs").display().to_string(),
        scratch: dir.join("fuzz-scratch/checkpoint.tar").display().to_string(),
    };
    let mut pods_made = 0;
    refresh(&mut rt, &mut c, &mut r, &mut pods_made).await;

    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut calls, mut ok) = (0u64, 0u64);
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    let mut table = seeds(&c);
    while Instant::now() < deadline {
        if calls % 40 == 39 {
            refresh(&mut rt, &mut c, &mut r, &mut pods_made).await;
            table = seeds(&c);
        }
        let (path, streaming, seed) = &table[r.below(table.len())];
        let other = &table[r.below(table.len())].2;
        let body = if r.below(8) == 0 {
            seed.clone()
        } else {
            mutate(&mut r, seed, other)
        };
        let body = defuse(path, body, &c, &mut r);
        calls += 1;
        let reply = tokio::time::timeout(Duration::from_secs(90), call(&ch, path, *streaming, body.clone()))
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer in 90 s; request {body:?}"));
        match reply {
            Ok(()) => ok += 1,
            Err(s) => {
                assert!(!dropped(&s), "{path}: the connection broke ({s:?}); request {body:?}");
                *codes.entry(format!("{:?}", s.code())).or_default() += 1;
                if s.code() == tonic::Code::Internal && !s.message().contains("decode") {
                    eprintln!("grpc fuzz: {path}: Internal: {}", s.message());
                }
            }
        }
        if calls % 25 == 0 {
            alive(&mut b);
            rt.version(VersionRequest::default())
                .await
                .expect("Version answers during the fuzz");
        }
    }
    eprintln!("grpc fuzz: {calls} calls, {ok} OK, errors by code {codes:?}, {pods_made} seed pods");

    // Garbage on fresh connections: no preface, or the HTTP/2 preface then noise.
    for i in 0..40 {
        let mut s = tokio::net::UnixStream::connect(&b.socket).await.unwrap();
        let mut bytes: Vec<u8> = if i % 2 == 0 {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
        } else {
            Vec::new()
        };
        bytes.extend((0..r.below(512)).map(|_| byte(&mut r)));
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    alive(&mut b);
    rt.version(VersionRequest::default())
        .await
        .expect("Version answers after the fuzz");

    // Everything the fuzz made goes, through the ordinary RPCs.
    cri::remove_all_pods(&mut rt).await;
    assert!(
        cri::containers(&mut rt).await.is_empty(),
        "containers left after removing every pod"
    );
    let log = b.log_text();
    assert!(!log.contains("panicked"), "berthd panicked:\n{log}");
    b.assert_no_leaks();
}

/// Bytes that are not the method's request message answer InvalidArgument (tonic's own codec says Internal),
/// for unary and server-streaming methods of both services, each with a message naming the expected type;
/// valid requests on the same connection keep working.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_requests_get_invalid_argument() {
    let b = Berthd::start(BerthdOptions::default()).unwrap();
    let ch = b.channel().await.unwrap();
    // A field whose length runs past the end, an invalid wire type, a varint that never ends.
    let garbage: [&[u8]; 3] = [&[0x0a, 0x05, 0x01], &[0x0f], &[0xff; 11]];
    let methods = [
        ("/runtime.v1.RuntimeService/Version", false, "VersionRequest"),
        (
            "/runtime.v1.RuntimeService/RunPodSandbox",
            false,
            "RunPodSandboxRequest",
        ),
        (
            "/runtime.v1.RuntimeService/CreateContainer",
            false,
            "CreateContainerRequest",
        ),
        (
            "/runtime.v1.RuntimeService/ListContainers",
            false,
            "ListContainersRequest",
        ),
        (
            "/runtime.v1.RuntimeService/GetContainerEvents",
            true,
            "GetEventsRequest",
        ),
        ("/runtime.v1.ImageService/PullImage", false, "PullImageRequest"),
        ("/runtime.v1.ImageService/ImageFsInfo", false, "ImageFsInfoRequest"),
        ("/runtime.v1.ImageService/StreamImages", true, "StreamImagesRequest"),
    ];
    for (path, streaming, message) in methods {
        for bytes in garbage {
            let s = call(&ch, path, streaming, bytes.to_vec())
                .await
                .expect_err("garbage must not be accepted");
            assert!(!dropped(&s), "{path}: the connection broke ({s:?})");
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{path} {bytes:?}: {s:?}");
            assert!(
                s.message().contains(&format!("not a valid runtime.v1.{message}")),
                "{path}: {}",
                s.message()
            );
        }
    }

    let mut rt = cri::Runtime::new(ch.clone());
    let v = rt.version(VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "berth");
    let mut images = b.images().await.unwrap();
    images.image_fs_info(ImageFsInfoRequest {}).await.unwrap();
    call(&ch, "/runtime.v1.RuntimeService/Status", false, Vec::new())
        .await
        .expect("an empty StatusRequest is valid");
}
