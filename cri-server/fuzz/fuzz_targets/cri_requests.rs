//! Hostile CRI requests through the CRI → OCI spec translation: the first byte picks the request type, the rest
//! is decoded with prost (random bytes make structured requests for free), then validated and built exactly as
//! berthd's handlers do, against a fake host and image. No panic; a refusal is a client-side error (never
//! Internal); what builds serializes to JSON.
//!
//! The image facts come from the request too, so they get fuzzed with it: the pod's annotations `image.user`,
//! `image.volumes` (comma separated), `image.stop_signal`, `image.env`, `image.passwd` and `image.group`.
#![no_main]

use std::io;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};
use oci_spec::runtime::LinuxSeccomp;
use prost::Message;

use error::CriError;
use spec::{Host, HostDevice, ImageFacts, PodContext, SeccompProfile, SpecDefaults, SpecInput};

/// The CRI messages (prost only; berth-cri's `api` adds the tonic services).
#[allow(clippy::all, dead_code)]
mod api {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

/// Stands in for berth-cri's `error` module (which maps to tonic statuses): the variants the translation uses.
mod error {
    #[derive(Debug, thiserror::Error)]
    pub enum CriError {
        #[error("{0}")]
        InvalidArgument(String),
        #[error("{0}")]
        FailedPrecondition(String),
        #[error("{0}")]
        Unimplemented(String),
        #[error("{0}")]
        Internal(String),
    }
    pub type CriResult<T> = Result<T, CriError>;
}

/// Stand-ins for the three plain berth-core types the translation uses (berth-core itself would bring tokio,
/// redb and more into the sanitized build); they must keep the fields of core/src/model.rs and
/// core/src/plugin/resources.rs, or this target stops compiling.
extern crate self as berth_core;
mod model {
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct MountRecord {
        pub container_path: String,
        pub host_path: String,
        pub readonly: bool,
        pub propagation: i32,
    }
}
mod plugin {
    pub mod resources {
        use std::collections::BTreeMap;

        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct LinuxResources {
            pub cpu_period: i64,
            pub cpu_quota: i64,
            pub cpu_shares: i64,
            pub memory_limit_in_bytes: i64,
            pub memory_swap_limit_in_bytes: i64,
            pub oom_score_adj: i64,
            pub cpuset_cpus: String,
            pub cpuset_mems: String,
            pub hugepage_limits: BTreeMap<String, u64>,
            pub unified: BTreeMap<String, String>,
            pub pids_limit: Option<i64>,
            pub devices: Vec<DeviceRule>,
        }

        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct DeviceRule {
            pub allow: bool,
            pub kind: char,
            pub major: Option<i64>,
            pub minor: Option<i64>,
            pub access: String,
        }
    }
}

// berth-cri's translation, compiled here from its source (it refers to `crate::api`, `crate::error`,
// `crate::resources`).
#[allow(dead_code)]
#[path = "../../src/resources.rs"]
mod resources;
#[allow(dead_code, unused_imports)]
#[path = "../../src/spec/mod.rs"]
mod spec;

/// A host where every mount source exists except under /missing, /dev holds a few nodes, and seccomp
/// profiles always load.
struct FakeHost;

fn dev(path: &str, major: i64, minor: i64) -> HostDevice {
    HostDevice {
        path: path.into(),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    }
}

impl Host for FakeHost {
    fn resolve(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        if path.starts_with("/missing") {
            Ok(None)
        } else if path.starts_with("/denied") {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        } else {
            Ok(Some(path.to_path_buf()))
        }
    }

    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
        Ok(match path.to_str() {
            Some("/dev") => vec![
                dev("/dev/null", 1, 3),
                dev("/dev/zero", 1, 5),
                dev("/dev/fuse", 10, 229),
            ],
            Some("/dev/empty") => vec![],
            Some(p) if p.starts_with("/dev/") => vec![dev(p, 1, 3)],
            _ => return Err(io::Error::from(io::ErrorKind::NotFound)),
        })
    }

    fn seccomp(&self, _profile: &SeccompProfile, _bounding: u64) -> Result<LinuxSeccomp, String> {
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
        }))
        .map_err(|e| e.to_string())
    }
}

fn client_side<T>(r: &Result<T, CriError>) -> bool {
    !matches!(r, Err(CriError::Internal(_)))
}

fn pod_context(sandbox: &api::PodSandboxConfig) -> PodContext {
    let ns = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let host = |m: i32| m == api::NamespaceMode::Node as i32;
    PodContext {
        pod_id: "pod1".into(),
        hostname: sandbox.hostname.clone(),
        netns: Some("/run/berth/netns/pod1".into()),
        ipcns: Some("/run/berth/ipcns/pod1".into()),
        utsns: Some("/run/berth/utsns/pod1".into()),
        pidns: ns
            .as_ref()
            .filter(|n| n.pid == api::NamespaceMode::Pod as i32)
            .map(|_| "/run/berth/pidns/pod1".into()),
        host_network: ns.as_ref().is_some_and(|n| host(n.network)),
        host_ipc: ns.as_ref().is_some_and(|n| host(n.ipc)),
        host_pid: ns.as_ref().is_some_and(|n| host(n.pid)),
        etc_hosts: Some("/run/berth/pods/pod1/hosts".into()),
        etc_hostname: Some("/run/berth/pods/pod1/hostname".into()),
        resolv_conf: Some("/run/berth/pods/pod1/resolv.conf".into()),
        shm: Some("/run/berth/pods/pod1/shm".into()),
    }
}

/// RunPodSandbox's checks (sandbox_run::validate).
fn run_pod(sandbox: &api::PodSandboxConfig) -> bool {
    let v = spec::validate_pod_config(sandbox);
    assert!(client_side(&v), "validate_pod_config: {v:?}");
    let s = spec::pod_sysctls(sandbox);
    assert!(client_side(&s), "pod_sysctls: {s:?}");
    v.is_ok() && s.is_ok()
}

/// CreateContainer: validation, then the spec builder with the request's pod config and an image made from
/// its annotations.
fn create_container(req: api::CreateContainerRequest) {
    let sandbox = req.sandbox_config.unwrap_or_default();
    run_pod(&sandbox);
    let Some(config) = req.config else { return };
    let v = spec::validate_container_config(&config);
    assert!(client_side(&v), "validate_container_config: {v:?}");
    if v.is_err() {
        return;
    }
    let note = |k: &str| sandbox.annotations.get(k).cloned();
    let split = |k: &str| {
        note(k)
            .map(|v| v.split(',').map(String::from).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut img = ConfigBuilder::default()
        .entrypoint(vec!["/entry".to_string()])
        .env(split("image.env"))
        .user(note("image.user").unwrap_or_default())
        .volumes(split("image.volumes"));
    if let Some(s) = note("image.stop_signal") {
        img = img.stop_signal(s);
    }
    let image = ImageConfigurationBuilder::default()
        .config(img.build().unwrap())
        .build()
        .unwrap();
    let (passwd, group) = (note("image.passwd"), note("image.group"));
    let pod = pod_context(&sandbox);
    let target = Path::new("/proc/1/ns/pid");
    let input = SpecInput {
        container_id: "c1",
        config: &config,
        sandbox: &sandbox,
        pod: &pod,
        image: ImageFacts {
            config: &image,
            passwd: passwd.as_deref(),
            group: group.as_deref(),
        },
        target_pidns: (config.annotations.contains_key("target")).then_some(target),
        volumes_dir: Path::new("/var/lib/berth/volumes/c1"),
    };
    let defaults = SpecDefaults {
        pids_limit: Some(1024),
        ..SpecDefaults::default()
    };
    let built = spec::build_container(&input, &defaults, &FakeHost);
    assert!(client_side(&built), "build_container: {:?}", built.as_ref().err());
    if let Ok(b) = built {
        let json = serde_json::to_string(&b.spec).expect("a built spec serializes");
        let _: oci_spec::runtime::Spec = serde_json::from_str(&json).expect("a built spec parses back");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(req) = api::CreateContainerRequest::decode(bytes) {
                create_container(req);
            }
        }
        1 => {
            if let Ok(req) = api::RunPodSandboxRequest::decode(bytes) {
                run_pod(&req.config.unwrap_or_default());
            }
        }
        2 => {
            // UpdateContainerResources.
            if let Ok(req) = api::UpdateContainerResourcesRequest::decode(bytes) {
                let r = resources::from_cri(&req.linux.unwrap_or_default(), "linux");
                assert!(client_side(&r), "resources::from_cri: {r:?}");
            }
        }
        _ => {
            // StopContainer's and the image's stop signals, and the log path.
            if let Ok(cfg) = api::ContainerConfig::decode(bytes) {
                let _ = spec::parse_signal(&cfg.working_dir);
                let l = spec::validate_log_path(&cfg.log_path);
                assert!(client_side(&l), "validate_log_path: {l:?}");
            }
        }
    }
});
