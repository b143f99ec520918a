//! End-to-end tests of [`build_container`] over a fake host, and a property test feeding it garbage.

use std::path::{Path, PathBuf};

use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use oci_spec::runtime::{Capability, LinuxSeccomp, Spec};
use prost::Message;

use super::*;
use crate::api::security_profile::ProfileType;

/// A host with a few devices, one symlinked and one missing mount source, and seccomp profiles by name.
pub struct FakeHost;

fn fake_dev(path: &str, major: i64, minor: i64, mode: u32) -> HostDevice {
    HostDevice {
        path: path.into(),
        kind: 'c',
        major,
        minor,
        mode,
        uid: 0,
        gid: 0,
    }
}

impl Host for FakeHost {
    fn resolve(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        match path.to_str() {
            Some("/srv/missing") => Ok(None),
            Some("/srv/link") => Ok(Some("/srv/real".into())),
            Some("/srv/denied") => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
            _ => Ok(Some(path.to_path_buf())),
        }
    }

    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
        Ok(match path.to_str() {
            Some("/dev") => vec![
                fake_dev("/dev/null", 1, 3, 0o666),
                fake_dev("/dev/zero", 1, 5, 0o666),
                fake_dev("/dev/fuse", 10, 229, 0o666),
                fake_dev("/dev/kmsg", 1, 11, 0o644),
            ],
            Some("/dev/fuse") => vec![fake_dev("/dev/fuse", 10, 229, 0o666)],
            Some("/dev/console") => vec![fake_dev("/dev/console", 5, 1, 0o600)],
            Some("/dev/link-to-null") => vec![fake_dev("/dev/link-to-null", 1, 3, 0o666)],
            Some("/dev/snd") => vec![
                fake_dev("/dev/snd/controlC0", 116, 0, 0o660),
                fake_dev("/dev/snd/pcmC0D0p", 116, 16, 0o660),
            ],
            Some("/srv/empty") => vec![],
            _ => return Err(io::Error::from(io::ErrorKind::NotFound)),
        })
    }

    fn seccomp(&self, profile: &SeccompProfile, bounding: u64) -> Result<LinuxSeccomp, String> {
        let name = match profile {
            SeccompProfile::RuntimeDefault => format!("runtime-default-{bounding:x}"),
            SeccompProfile::Localhost(p) if p == Path::new("/etc/berth/ok.json") => "localhost-ok".into(),
            SeccompProfile::Localhost(p) => return Err(format!("reading {}: no such file", p.display())),
        };
        // The default action carries no name: encode the profile in an errno to tell them apart.
        let errno = if name == "localhost-ok" { 1 } else { 38 };
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": errno,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
        }))
        .map_err(|e| e.to_string())
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
const GROUP: &str = "root:x:0:\nalice:x:1000:\nvideo:x:44:alice\n";

fn image(user: &str, volumes: &[&str], stop: Option<&str>) -> ImageConfiguration {
    let mut c = ConfigBuilder::default()
        .entrypoint(vec!["/entry".to_string()])
        .cmd(vec!["serve".to_string(), "--port=80".to_string()])
        .env(vec!["PATH=/app/bin:/usr/bin:/bin".to_string(), "MODE=prod".to_string()])
        .working_dir("/app")
        .user(user)
        .volumes(volumes.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    if let Some(s) = stop {
        c = c.stop_signal(s);
    }
    ImageConfigurationBuilder::default()
        .config(c.build().unwrap())
        .build()
        .unwrap()
}

pub fn pod() -> PodContext {
    PodContext {
        pod_id: "pod1".into(),
        hostname: "web-0".into(),
        netns: Some("/run/berth/netns/pod1".into()),
        ipcns: Some("/run/berth/ipcns/pod1".into()),
        utsns: Some("/run/berth/utsns/pod1".into()),
        pidns: None,
        etc_hosts: Some("/run/berth/pods/pod1/hosts".into()),
        etc_hostname: Some("/run/berth/pods/pod1/hostname".into()),
        resolv_conf: Some("/run/berth/pods/pod1/resolv.conf".into()),
        shm: Some("/run/berth/pods/pod1/shm".into()),
        ..Default::default()
    }
}

pub fn sandbox() -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/default_web_uid-1".into(),
        ..Default::default()
    }
}

pub fn config() -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: "sha256:abc".into(),
            user_specified_image: "docker.io/library/app:1".into(),
            ..Default::default()
        }),
        log_path: "app/0.log".into(),
        ..Default::default()
    }
}

fn security(f: impl FnOnce(&mut api::LinuxContainerSecurityContext)) -> api::ContainerConfig {
    let mut c = config();
    let mut sc = api::LinuxContainerSecurityContext::default();
    f(&mut sc);
    c.linux = Some(api::LinuxContainerConfig {
        security_context: Some(sc),
        resources: None,
    });
    c
}

struct Fixture {
    config: api::ContainerConfig,
    sandbox: api::PodSandboxConfig,
    pod: PodContext,
    image: ImageConfiguration,
    target: Option<PathBuf>,
    defaults: SpecDefaults,
}

impl Fixture {
    fn new(config: api::ContainerConfig) -> Fixture {
        Fixture {
            config,
            sandbox: sandbox(),
            pod: pod(),
            image: image("", &[], None),
            target: None,
            defaults: SpecDefaults::default(),
        }
    }

    fn build(&self) -> CriResult<BuiltContainer> {
        let input = SpecInput {
            container_id: "c1",
            config: &self.config,
            sandbox: &self.sandbox,
            pod: &self.pod,
            image: ImageFacts {
                config: &self.image,
                passwd: Some(PASSWD),
                group: Some(GROUP),
            },
            target_pidns: self.target.as_deref(),
            volumes_dir: Path::new("/var/lib/berth/containers/c1/volumes"),
        };
        build_container(&input, &self.defaults, &FakeHost)
    }
}

fn namespaces_of(spec: &Spec) -> Vec<(String, Option<String>)> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|n| (n.typ().to_string(), n.path().as_ref().map(|p| p.display().to_string())))
        .collect()
}

fn ns(t: &str, p: Option<&str>) -> (String, Option<String>) {
    (t.to_string(), p.map(String::from))
}

#[test]
fn default_container_spec() {
    let b = Fixture::new(config()).build().unwrap();
    let s = &b.spec;
    assert_eq!(s.version(), OCI_VERSION);
    assert_eq!(s.hostname().as_deref(), Some("web-0"));
    let root = s.root().as_ref().unwrap();
    assert_eq!((root.path().to_str(), root.readonly()), (Some("rootfs"), Some(false)));
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.args().clone().unwrap(), vec!["/entry", "serve", "--port=80"]);
    assert_eq!(
        p.env().clone().unwrap(),
        vec![
            "PATH=/app/bin:/usr/bin:/bin",
            "HOSTNAME=web-0",
            "MODE=prod",
            "HOME=/root"
        ]
    );
    assert_eq!(p.cwd(), Path::new("/app"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(p.user().additional_gids().clone(), Some(vec![0]));
    assert_eq!(p.terminal(), Some(false));
    assert_eq!(p.no_new_privileges(), Some(false));
    assert!(p.rlimits().is_none(), "no rlimits beyond the inherited ones");
    assert!(p.oom_score_adj().is_none());
    let c = p.capabilities().as_ref().unwrap();
    assert_eq!(c.bounding().as_ref().unwrap().len(), 14);
    assert!(c.bounding().as_ref().unwrap().contains(&Capability::NetRaw));
    assert!(c.inheritable().as_ref().unwrap().is_empty() && c.ambient().as_ref().unwrap().is_empty());
    assert_eq!(
        namespaces_of(s),
        vec![
            ns("mnt", None),
            ns("net", Some("/run/berth/netns/pod1")),
            ns("uts", Some("/run/berth/utsns/pod1")),
            ns("ipc", Some("/run/berth/ipcns/pod1")),
            ns("pid", None),
            ns("cgroup", None),
        ]
    );
    let l = s.linux().as_ref().unwrap();
    assert!(l.seccomp().is_none(), "unset seccomp is unconfined");
    assert_eq!(l.masked_paths().as_ref().unwrap().len(), 11);
    assert_eq!(l.readonly_paths().as_ref().unwrap().len(), 5);
    assert!(l.sysctl().is_none() && l.cgroups_path().is_none() && l.rootfs_propagation().is_none());
    let r = l.resources().as_ref().unwrap();
    assert_eq!(r.devices().as_ref().unwrap().len(), 1, "deny all");
    assert!(r.cpu().is_none() && r.memory().is_none() && r.pids().is_none());
    assert_eq!(s.mounts().as_ref().unwrap().len(), 10);
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a[annotations::CONTAINER_TYPE], "container");
    assert_eq!(a[annotations::SANDBOX_ID], "pod1");
    assert_eq!(a[annotations::IMAGE_NAME], "docker.io/library/app:1");
    assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
    assert_eq!(
        b.log_path,
        Some(PathBuf::from("/var/log/pods/default_web_uid-1/app/0.log"))
    );
    assert_eq!(b.stop_signal, None);
    assert!(b.host_dirs.is_empty() && b.anonymous_volumes.is_empty() && b.mounts.is_empty());
    assert_eq!(
        b.user,
        ContainerUser {
            uid: 0,
            gid: 0,
            supplemental_groups: vec![0]
        }
    );
    // Nothing of oci-spec's example defaults leaks in.
    let json = serde_json::to_string(s).unwrap();
    for leak in ["youki", "RLIMIT_NOFILE", "TERM=xterm"] {
        assert!(!json.contains(leak), "{leak} in {json}");
    }
}

#[test]
fn spec_round_trips_through_json() {
    let b = Fixture::new(config()).build().unwrap();
    let json = serde_json::to_string(&b.spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, b.spec);
}

#[test]
fn namespaces_table() {
    let pid = |mode: NamespaceMode, target: &str| {
        let mut c = config();
        c.linux = Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    pid: mode as i32,
                    target_id: target.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        });
        c
    };
    struct Case {
        name: &'static str,
        config: api::ContainerConfig,
        pod: PodContext,
        target: Option<&'static str>,
        want: Result<Vec<(String, Option<String>)>, &'static str>,
    }
    let shared_pid = PodContext {
        pidns: Some("/proc/42/ns/pid".into()),
        ..pod()
    };
    let host_all = PodContext {
        host_network: true,
        host_ipc: true,
        host_pid: true,
        netns: None,
        ipcns: None,
        utsns: None,
        ..pod()
    };
    let cases = vec![
        Case {
            name: "pod shares pid, config silent",
            config: config(),
            pod: shared_pid.clone(),
            target: None,
            want: Ok(vec![
                ns("mnt", None),
                ns("net", Some("/run/berth/netns/pod1")),
                ns("uts", Some("/run/berth/utsns/pod1")),
                ns("ipc", Some("/run/berth/ipcns/pod1")),
                ns("pid", Some("/proc/42/ns/pid")),
                ns("cgroup", None),
            ]),
        },
        Case {
            name: "config asks POD",
            config: pid(NamespaceMode::Pod, ""),
            pod: shared_pid,
            target: None,
            want: Ok(vec![
                ns("mnt", None),
                ns("net", Some("/run/berth/netns/pod1")),
                ns("uts", Some("/run/berth/utsns/pod1")),
                ns("ipc", Some("/run/berth/ipcns/pod1")),
                ns("pid", Some("/proc/42/ns/pid")),
                ns("cgroup", None),
            ]),
        },
        Case {
            name: "config asks POD (the proto default) but the pod has no shared pid namespace",
            config: pid(NamespaceMode::Pod, ""),
            pod: pod(),
            target: None,
            want: Ok(vec![
                ns("mnt", None),
                ns("net", Some("/run/berth/netns/pod1")),
                ns("uts", Some("/run/berth/utsns/pod1")),
                ns("ipc", Some("/run/berth/ipcns/pod1")),
                ns("pid", None),
                ns("cgroup", None),
            ]),
        },
        Case {
            name: "config asks NODE in a pod without host PID: no widening",
            config: pid(NamespaceMode::Node, ""),
            pod: pod(),
            target: None,
            want: Ok(vec![
                ns("mnt", None),
                ns("net", Some("/run/berth/netns/pod1")),
                ns("uts", Some("/run/berth/utsns/pod1")),
                ns("ipc", Some("/run/berth/ipcns/pod1")),
                ns("pid", None),
                ns("cgroup", None),
            ]),
        },
        Case {
            name: "config asks CONTAINER in a pod sharing pid",
            config: pid(NamespaceMode::Container, ""),
            pod: PodContext {
                pidns: Some("/proc/42/ns/pid".into()),
                ..pod()
            },
            target: None,
            want: Ok(vec![
                ns("mnt", None),
                ns("net", Some("/run/berth/netns/pod1")),
                ns("uts", Some("/run/berth/utsns/pod1")),
                ns("ipc", Some("/run/berth/ipcns/pod1")),
                ns("pid", None),
                ns("cgroup", None),
            ]),
        },
        Case {
            name: "host everything",
            config: pid(NamespaceMode::Node, ""),
            pod: host_all.clone(),
            target: None,
            want: Ok(vec![ns("mnt", None), ns("cgroup", None)]),
        },
        Case {
            name: "host pod, config silent",
            config: config(),
            pod: host_all,
            target: None,
            want: Ok(vec![ns("mnt", None), ns("cgroup", None)]),
        },
        Case {
            name: "target",
            config: pid(NamespaceMode::Target, "other"),
            pod: pod(),
            target: Some("/proc/77/ns/pid"),
            want: Ok(vec![
                ns("mnt", None),
                ns("net", Some("/run/berth/netns/pod1")),
                ns("uts", Some("/run/berth/utsns/pod1")),
                ns("ipc", Some("/run/berth/ipcns/pod1")),
                ns("pid", Some("/proc/77/ns/pid")),
                ns("cgroup", None),
            ]),
        },
        Case {
            name: "target not resolved",
            config: pid(NamespaceMode::Target, "other"),
            pod: pod(),
            target: None,
            want: Err("pid TARGET"),
        },
        Case {
            name: "pod lost its netns",
            config: config(),
            pod: PodContext { netns: None, ..pod() },
            target: None,
            want: Err("has no pinned network namespace"),
        },
    ];
    for c in cases {
        let mut f = Fixture::new(c.config);
        f.pod = c.pod;
        f.target = c.target.map(PathBuf::from);
        match (f.build(), c.want) {
            (Ok(b), Ok(want)) => {
                assert_eq!(namespaces_of(&b.spec), want, "{}", c.name);
                assert_eq!(b.spec.hostname().is_some(), !f.pod.host_network, "{}: hostname", c.name);
            }
            (Err(e), Err(part)) => {
                assert!(matches!(e, CriError::FailedPrecondition(_)), "{}: {e:?}", c.name);
                assert!(e.to_string().contains(part), "{}: {e}", c.name);
            }
            (got, want) => panic!(
                "{}: got {:?}, want {want:?}",
                c.name,
                got.map(|b| namespaces_of(&b.spec))
            ),
        }
    }
}

#[test]
fn privileged_container() {
    let mut f = Fixture::new(security(|sc| {
        sc.privileged = true;
        sc.seccomp = Some(api::SecurityProfile::default());
        sc.masked_paths = vec!["/proc/kcore".into()];
    }));
    let e = f.build().unwrap_err();
    assert!(
        matches!(e, CriError::InvalidArgument(ref m) if m.contains("pod sandbox is not privileged")),
        "{e}"
    );
    f.sandbox.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let b = f.build().unwrap();
    let l = b.spec.linux().as_ref().unwrap();
    assert!(l.seccomp().is_none());
    assert!(l.masked_paths().as_ref().unwrap().is_empty() && l.readonly_paths().as_ref().unwrap().is_empty());
    assert_eq!(l.devices().as_ref().unwrap().len(), 4, "every host device");
    let p = b.spec.process().as_ref().unwrap();
    assert_eq!(
        p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap().len(),
        41
    );
    assert!(
        !namespaces_of(&b.spec).iter().any(|(t, _)| t == "cgroup"),
        "no cgroupns for privileged"
    );
    assert_eq!(b.resources.devices.len(), 1);
    assert_eq!(b.resources.devices[0].kind, 'a');
    f.defaults.privileged_allowed = false;
    assert!(matches!(f.build(), Err(CriError::FailedPrecondition(_))));
}

#[test]
fn seccomp_profiles() {
    let with = |p: Option<api::SecurityProfile>, path: &str| {
        security(|sc| {
            sc.seccomp = p;
            #[allow(deprecated)]
            {
                sc.seccomp_profile_path = path.into();
            }
        })
    };
    let errno = |b: &BuiltContainer| {
        b.spec
            .linux()
            .as_ref()
            .unwrap()
            .seccomp()
            .as_ref()
            .map(|s| s.default_errno_ret())
    };
    let rd = Fixture::new(with(Some(api::SecurityProfile::default()), ""))
        .build()
        .unwrap();
    assert_eq!(errno(&rd), Some(Some(38)));
    let local = api::SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/etc/berth/ok.json".into(),
    };
    assert_eq!(
        errno(&Fixture::new(with(Some(local), "")).build().unwrap()),
        Some(Some(1))
    );
    assert_eq!(
        errno(
            &Fixture::new(with(None, "localhost//etc/berth/ok.json"))
                .build()
                .unwrap()
        ),
        Some(Some(1))
    );
    assert_eq!(
        errno(&Fixture::new(with(None, "runtime/default")).build().unwrap()),
        Some(Some(38))
    );
    assert_eq!(errno(&Fixture::new(with(None, "unconfined")).build().unwrap()), None);
    let missing = api::SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/etc/berth/missing.json".into(),
    };
    let e = Fixture::new(with(Some(missing), "")).build().unwrap_err();
    assert!(
        matches!(e, CriError::InvalidArgument(ref m) if m.contains("/etc/berth/missing.json") && m.contains("no such file")),
        "{e}"
    );
}

#[test]
fn seccomp_sees_the_final_bounding_set() {
    let b = Fixture::new(security(|sc| {
        sc.seccomp = Some(api::SecurityProfile::default());
        sc.capabilities = Some(api::Capability {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
    }))
    .build()
    .unwrap();
    let caps = b.spec.process().as_ref().unwrap().capabilities().clone().unwrap();
    assert_eq!(
        caps.bounding().clone().unwrap().into_iter().collect::<Vec<_>>(),
        vec![Capability::SysAdmin]
    );
}

#[test]
fn user_group_and_home_reach_the_spec() {
    let mut f = Fixture::new(security(|sc| {
        sc.run_as_user = Some(api::Int64Value { value: 1000 });
        sc.supplemental_groups = vec![5000];
    }));
    let b = f.build().unwrap();
    let u = b.spec.process().as_ref().unwrap().user().clone();
    assert_eq!(
        (u.uid(), u.gid(), u.additional_gids().clone()),
        (1000, 1000, Some(vec![44, 1000, 5000]))
    );
    assert!(
        b.spec
            .process()
            .as_ref()
            .unwrap()
            .env()
            .clone()
            .unwrap()
            .contains(&"HOME=/home/alice".to_string())
    );
    assert_eq!(b.user.supplemental_groups, vec![44, 1000, 5000]);
    f.config = config();
    f.image = image("nobody", &[], None);
    let e = f.build().unwrap_err();
    assert!(
        matches!(e, CriError::InvalidArgument(ref m) if m.contains("\"nobody\" not found")),
        "{e}"
    );
}

#[test]
fn flags_resources_and_stop_signal() {
    let mut c = security(|sc| {
        sc.no_new_privs = true;
        sc.readonly_rootfs = true;
    });
    c.tty = true;
    c.stop_signal = api::Signal::Sigusr1 as i32;
    c.working_dir = "/work".into();
    c.command = vec!["/bin/sh".into()];
    c.linux.as_mut().unwrap().resources = Some(api::LinuxContainerResources {
        cpu_shares: 256,
        memory_limit_in_bytes: 1 << 30,
        oom_score_adj: -997,
        ..Default::default()
    });
    c.devices = vec![api::Device {
        host_path: "/dev/fuse".into(),
        container_path: "/dev/fuse".into(),
        permissions: "rwm".into(),
    }];
    let mut f = Fixture::new(c);
    f.defaults.pids_limit = Some(4096);
    f.image = image("", &["/var/cache"], Some("SIGQUIT"));
    let b = f.build().unwrap();
    let p = b.spec.process().as_ref().unwrap();
    assert_eq!(
        (p.terminal(), p.no_new_privileges(), p.oom_score_adj()),
        (Some(true), Some(true), Some(-997))
    );
    assert_eq!(
        p.args().clone().unwrap(),
        vec!["/bin/sh"],
        "command drops the image Cmd"
    );
    assert_eq!(p.cwd(), Path::new("/work"));
    assert_eq!(b.spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(b.stop_signal, Some(10), "the CRI signal beats the image's");
    let r = b.spec.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(256));
    assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1 << 30));
    assert_eq!(r.pids().as_ref().unwrap().limit(), 4096);
    assert_eq!(r.devices().as_ref().unwrap().len(), 2);
    assert_eq!(b.resources.cpu_shares, 256);
    assert_eq!(b.resources.oom_score_adj, -997);
    assert_eq!(b.resources.pids_limit, None, "the plugin's default applies");
    assert_eq!(b.resources.devices.len(), 1);
    assert_eq!(
        b.anonymous_volumes,
        vec![PathBuf::from("/var/lib/berth/containers/c1/volumes/0")]
    );
    let hosts = b
        .spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/etc/hosts"))
        .unwrap();
    assert!(
        hosts.options().as_ref().unwrap().contains(&"ro".to_string()),
        "pod files follow readonly_rootfs"
    );
    f.config.stop_signal = 0;
    assert_eq!(f.build().unwrap().stop_signal, Some(3), "else the image's");
}

#[test]
fn mounts_report_and_create() {
    let mut c = config();
    c.mounts = vec![
        api::Mount {
            container_path: "/data".into(),
            host_path: "/srv/missing".into(),
            ..Default::default()
        },
        api::Mount {
            container_path: "/etc/resolv.conf".into(),
            host_path: "/srv/link".into(),
            readonly: true,
            ..Default::default()
        },
    ];
    let b = Fixture::new(c.clone()).build().unwrap();
    assert_eq!(b.host_dirs, vec![PathBuf::from("/srv/missing")]);
    assert_eq!(b.mounts.len(), 2);
    let resolv: Vec<_> = b
        .spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() == Path::new("/etc/resolv.conf"))
        .collect();
    assert_eq!(resolv.len(), 1, "the CRI mount replaces the pod's file");
    assert_eq!(resolv[0].source().as_deref(), Some(Path::new("/srv/real")));
    c.mounts[0].host_path = "/srv/denied".into();
    assert!(matches!(Fixture::new(c).build(), Err(CriError::Internal(_))));
}

#[test]
fn tty_with_host_dev_gets_the_console() {
    let mut c = config();
    c.tty = true;
    c.mounts = vec![api::Mount {
        container_path: "/dev".into(),
        host_path: "/dev/".into(),
        ..Default::default()
    }];
    let b = Fixture::new(c.clone()).build().unwrap();
    let devs = b.spec.linux().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(
        (devs[0].path().to_str(), devs[0].major(), devs[0].minor()),
        (Some("/dev/console"), 5, 1)
    );
    c.tty = false;
    assert!(
        Fixture::new(c)
            .build()
            .unwrap()
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn log_paths() {
    let mut f = Fixture::new(config());
    f.sandbox.log_directory.clear();
    assert_eq!(f.build().unwrap().log_path, None);
    f.sandbox = sandbox();
    f.config.log_path.clear();
    assert_eq!(f.build().unwrap().log_path, None);
    for bad in ["/var/log/x.log", "../x.log", "a/../../x.log"] {
        f.config.log_path = bad.into();
        assert!(matches!(f.build(), Err(CriError::InvalidArgument(_))), "{bad}");
    }
    f.config.log_path = "a/..b/x.log".into();
    assert!(f.build().is_ok(), "..b is a name, not a parent");
}

#[test]
fn no_command_anywhere() {
    let mut f = Fixture::new(config());
    f.image = ImageConfigurationBuilder::default()
        .config(ConfigBuilder::default().build().unwrap())
        .build()
        .unwrap();
    let e = f.build().unwrap_err();
    assert!(
        matches!(e, CriError::InvalidArgument(ref m) if m.starts_with("no command specified")),
        "{e}"
    );
    f.image = ImageConfiguration::default();
    f.config.args = vec!["/bin/true".into()];
    assert_eq!(
        f.build().unwrap().spec.process().as_ref().unwrap().cwd(),
        Path::new("/")
    );
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn int(&mut self) -> i64 {
        const EDGES: [i64; 10] = [0, 1, -1, -2, 1000, -1000, 1001, i64::MAX, i64::MIN, u32::MAX as i64 + 1];
        if self.chance(2) {
            EDGES[self.below(EDGES.len() as u64) as usize]
        } else {
            self.next() as i64
        }
    }
    fn string(&mut self) -> String {
        const POOL: [&str; 28] = [
            "",
            "/",
            "..",
            "/a/../..",
            "a\0b",
            "ALL",
            "all",
            "CAP_SYS_ADMIN",
            "SYS_ADMIN",
            "NOPE",
            "/dev/fuse",
            "/dev/snd",
            "/srv/missing",
            "/srv/link",
            "/srv/denied",
            "/srv/empty",
            "/dev/nope",
            "rwm",
            "x",
            "localhost/",
            "localhost//etc/berth/ok.json",
            "runtime/default",
            "unconfined",
            "net.ipv4.ip_forward",
            "memory.max",
            "../../etc/passwd",
            "2MB",
            "0-3,7",
        ];
        if self.chance(4) {
            let len = self.below(12) as usize;
            (0..len)
                .map(|_| char::from_u32(self.below(0x2FF) as u32).unwrap_or('?'))
                .collect()
        } else {
            POOL[self.below(POOL.len() as u64) as usize].to_string()
        }
    }
    fn strings(&mut self) -> Vec<String> {
        if self.chance(2) {
            return Vec::new();
        }
        (0..self.below(4)).map(|_| self.string()).collect()
    }
    fn profile(&mut self) -> Option<api::SecurityProfile> {
        self.chance(2).then(|| api::SecurityProfile {
            profile_type: self.below(4) as i32,
            localhost_ref: self.string(),
        })
    }
}

#[allow(deprecated)]
fn random_config(r: &mut Rng) -> api::ContainerConfig {
    let mut c = config();
    if r.chance(10) {
        c.metadata = None;
    }
    if r.chance(10) {
        c.image = None;
    }
    c.command = r.strings();
    c.args = r.strings();
    c.working_dir = if r.chance(2) { String::new() } else { r.string() };
    c.envs = (0..r.below(3))
        .map(|_| api::KeyValue {
            key: r.string(),
            value: r.string(),
        })
        .collect();
    c.mounts = (0..r.below(3) * r.below(2))
        .map(|_| api::Mount {
            container_path: r.string(),
            host_path: r.string(),
            readonly: r.chance(2),
            propagation: r.below(4) as i32,
            recursive_read_only: r.chance(8),
            ..Default::default()
        })
        .collect();
    c.devices = (0..r.below(2) * r.below(2))
        .map(|_| api::Device {
            host_path: r.string(),
            container_path: r.string(),
            permissions: r.string(),
        })
        .collect();
    c.log_path = if r.chance(2) { "app/0.log".into() } else { r.string() };
    c.tty = r.chance(2);
    c.stop_signal = r.below(70) as i32;
    if r.chance(2) {
        let int = |r: &mut Rng| r.chance(2).then(|| api::Int64Value { value: r.int() });
        c.linux = Some(api::LinuxContainerConfig {
            resources: r.chance(2).then(|| api::LinuxContainerResources {
                cpu_period: r.int(),
                cpu_quota: r.int(),
                cpu_shares: r.int(),
                memory_limit_in_bytes: r.int(),
                memory_swap_limit_in_bytes: r.int(),
                oom_score_adj: r.int(),
                cpuset_cpus: r.string(),
                cpuset_mems: r.string(),
                hugepage_limits: (0..r.below(2))
                    .map(|_| api::HugepageLimit {
                        page_size: r.string(),
                        limit: r.next(),
                    })
                    .collect(),
                unified: (0..r.below(2)).map(|_| (r.string(), r.string())).collect(),
            }),
            security_context: r.chance(4).then(|| api::LinuxContainerSecurityContext {
                capabilities: r.chance(2).then(|| api::Capability {
                    add_capabilities: r.strings(),
                    drop_capabilities: r.strings(),
                    add_ambient_capabilities: r.strings(),
                }),
                privileged: r.chance(4),
                namespace_options: r.chance(3).then(|| api::NamespaceOption {
                    network: r.below(5) as i32,
                    pid: r.below(5) as i32,
                    ipc: r.below(5) as i32,
                    target_id: r.string(),
                    userns_options: None,
                }),
                selinux_options: None,
                run_as_user: int(r),
                run_as_group: int(r),
                run_as_username: if r.chance(2) { String::new() } else { r.string() },
                readonly_rootfs: r.chance(2),
                supplemental_groups: (0..r.below(3)).map(|_| r.int()).collect(),
                supplemental_groups_policy: r.below(3) as i32,
                no_new_privs: r.chance(2),
                masked_paths: r.strings(),
                readonly_paths: r.strings(),
                seccomp: r.profile(),
                apparmor: r.profile(),
                apparmor_profile: if r.chance(2) { String::new() } else { r.string() },
                seccomp_profile_path: if r.chance(2) { String::new() } else { r.string() },
            }),
        });
    }
    c
}

/// Ok, or an error that blames the request (or the pod / host state it refers to), never berth itself.
fn client_side(result: Result<(), &CriError>) -> bool {
    matches!(
        result,
        Ok(()) | Err(CriError::InvalidArgument(_) | CriError::FailedPrecondition(_) | CriError::Unimplemented(_))
    )
}

/// Garbage in: never a panic, never an Internal error, only Ok or a client-side error; and what validation
/// accepts, the builder either builds or refuses for a reason of the host or pod (never of the config shape).
#[test]
fn garbage_configs_never_panic() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut built = 0;
    for i in 0..4000 {
        let cfg = random_config(&mut r);
        let valid = validate_container_config(&cfg);
        assert!(client_side(valid.as_ref().map(|_| ())), "validate #{i}: {valid:?}");
        let mut f = Fixture::new(cfg);
        f.target = r.chance(2).then(|| PathBuf::from("/proc/9/ns/pid"));
        if r.chance(3) {
            f.sandbox.linux = Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let result = f.build();
        // The fake host's /srv/denied mount source is the one host failure that is Internal by design.
        let denied = f.config.mounts.iter().any(|m| m.host_path == "/srv/denied");
        if !denied {
            assert!(
                client_side(result.as_ref().map(|_| ())),
                "build #{i}: {:?}",
                result.as_ref().err()
            );
        }
        if valid.is_err() {
            assert!(
                result.is_err(),
                "#{i}: build accepted what validation refused: {:?}",
                f.config
            );
        }
        if let Ok(b) = result {
            built += 1;
            let json = serde_json::to_string(&b.spec).unwrap();
            let _: Spec = serde_json::from_str(&json).unwrap();
        }
    }
    assert!(
        built > 300,
        "the generator should produce some valid configs, built {built}"
    );
}

/// Random bytes decoded as protobuf (what a broken or hostile client can send) through validation and build.
#[test]
fn random_protobuf_never_panics() {
    let mut r = Rng(42);
    let seed = config().encode_to_vec();
    for i in 0..4000 {
        let mut bytes = if r.chance(2) { seed.clone() } else { Vec::new() };
        for _ in 0..r.below(24) {
            if !bytes.is_empty() && r.chance(2) {
                let at = r.below(bytes.len() as u64) as usize;
                bytes[at] = r.next() as u8;
            } else {
                bytes.push(r.next() as u8);
            }
        }
        if let Ok(cfg) = api::ContainerConfig::decode(bytes.as_slice()) {
            let v = validate_container_config(&cfg);
            assert!(client_side(v.as_ref().map(|_| ())), "protobuf #{i}: {v:?}");
            let built = Fixture::new(cfg).build();
            assert!(
                client_side(built.as_ref().map(|_| ())),
                "protobuf build #{i}: {:?}",
                built.err()
            );
        }
        if let Ok(pod) = api::PodSandboxConfig::decode(bytes.as_slice()) {
            let v = validate_pod_config(&pod);
            assert!(client_side(v.as_ref().map(|_| ())), "pod protobuf #{i}: {v:?}");
        }
    }
}
