//! CRI request validation: everything that can be checked without the host, the image or the pod's state.
//! Messages name the field (`container config: metadata.name must not be empty`).

use std::collections::BTreeMap;

use crate::api::{self, NamespaceMode};
use crate::error::{CriError, CriResult};

use super::{caps, devices, limits, mounts, process, security, user};

fn prefixed(prefix: &str) -> impl Fn(CriError) -> CriError + '_ {
    move |e| match e {
        CriError::InvalidArgument(m) => CriError::InvalidArgument(format!("{prefix}: {m}")),
        CriError::FailedPrecondition(m) => CriError::FailedPrecondition(format!("{prefix}: {m}")),
        CriError::Unimplemented(m) => CriError::Unimplemented(format!("{prefix}: {m}")),
        other => other,
    }
}

fn invalid(msg: String) -> CriError {
    CriError::InvalidArgument(msg)
}

/// Which pod namespace a namespaced sysctl lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlNamespace {
    Net,
    Ipc,
    Uts,
}

/// kubelet's rule: `net/ipv4/ip_forward` and `net.ipv4.ip_forward` are the same key; when the first separator
/// is `/`, slashes are dots and dots are slashes (`net/ipv4/conf/eno2.100/rp_filter` →
/// `net.ipv4.conf.eno2/100.rp_filter`).
pub fn normalize_sysctl(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| {
                if c == '/' {
                    '.'
                } else if c == '.' {
                    '/'
                } else {
                    c
                }
            })
            .collect(),
        _ => key.to_string(),
    }
}

/// The namespace of a sysctl the kernel namespaces (kubelet's list, plus `kernel.domainname` of the UTS
/// namespace); `None` for node-wide ones.
pub fn sysctl_namespace(key: &str) -> Option<SysctlNamespace> {
    const IPC: [&str; 8] = [
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
    ];
    if key.starts_with("net.") && key.len() > 4 {
        Some(SysctlNamespace::Net)
    } else if IPC.contains(&key) || (key.starts_with("fs.mqueue.") && key.len() > 10) {
        Some(SysctlNamespace::Ipc)
    } else if key == "kernel.domainname" {
        Some(SysctlNamespace::Uts)
    } else {
        None
    }
}

/// The pod's sysctls, normalized and checked: namespaced ones only, and not for a namespace the pod shares
/// with the host. Feed the result to the isolation plugin's `PodIsolation::sysctls`.
pub fn pod_sysctls(cfg: &api::PodSandboxConfig) -> CriResult<BTreeMap<String, String>> {
    let linux = cfg.linux.clone().unwrap_or_default();
    let ns = linux
        .security_context
        .and_then(|s| s.namespace_options)
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (raw, value) in &linux.sysctls {
        let key = normalize_sysctl(raw);
        let field = format!("pod sandbox config: linux.sysctls[{raw:?}]");
        if key.contains("..") || key.contains('\0') || value.contains('\0') || value.contains('\n') {
            return Err(invalid(format!("{field}: malformed key or value")));
        }
        let host_shared = match sysctl_namespace(&key) {
            None => return Err(invalid(format!("{field}: {key} is not a namespaced sysctl"))),
            Some(SysctlNamespace::Net | SysctlNamespace::Uts) => ns.network == NamespaceMode::Node as i32,
            Some(SysctlNamespace::Ipc) => ns.ipc == NamespaceMode::Node as i32,
        };
        if host_shared {
            return Err(invalid(format!(
                "{field}: {key} cannot be set in a pod that shares the host's namespace"
            )));
        }
        out.insert(key, value.clone());
    }
    Ok(out)
}

fn profile_checks(
    seccomp: Option<&api::SecurityProfile>,
    seccomp_path: &str,
    apparmor: Option<&api::SecurityProfile>,
    apparmor_path: &str,
    field: &str,
) -> CriResult<()> {
    security::profile(seccomp, seccomp_path, &format!("{field}.seccomp"))?;
    security::seccomp(seccomp, seccomp_path, false)?;
    security::apparmor(apparmor, apparmor_path, &format!("{field}.apparmor"))
}

fn userns_check(ns: &api::NamespaceOption, field: &str) -> CriResult<()> {
    match &ns.userns_options {
        Some(u) if u.mode != NamespaceMode::Node as i32 => Err(CriError::Unimplemented(format!(
            "{field}.namespace_options.userns_options: user namespaces (hostUsers: false) are not supported"
        ))),
        _ => Ok(()),
    }
}

/// RunPodSandbox's checks.
#[allow(deprecated)]
pub fn validate_pod_config(cfg: &api::PodSandboxConfig) -> CriResult<()> {
    let p = "pod sandbox config";
    let m = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid(format!("{p}: metadata is required")))?;
    for (field, value) in [("name", &m.name), ("uid", &m.uid), ("namespace", &m.namespace)] {
        if value.is_empty() {
            return Err(invalid(format!("{p}: metadata.{field} must not be empty")));
        }
    }
    if cfg.hostname.len() > 64
        || cfg
            .hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(invalid(format!(
            "{p}: hostname {:?} is not a valid host name (at most 64 characters)",
            cfg.hostname
        )));
    }
    if !cfg.log_directory.is_empty() && (!cfg.log_directory.starts_with('/') || cfg.log_directory.contains('\0')) {
        return Err(invalid(format!(
            "{p}: log_directory must be an absolute path, got {:?}",
            cfg.log_directory
        )));
    }
    for (i, pm) in cfg.port_mappings.iter().enumerate() {
        if !(0..=65535).contains(&pm.container_port) || !(0..=65535).contains(&pm.host_port) {
            return Err(invalid(format!("{p}: port_mappings[{i}]: port out of range")));
        }
        if api::Protocol::try_from(pm.protocol).is_err() {
            return Err(invalid(format!(
                "{p}: port_mappings[{i}].protocol {} is unknown",
                pm.protocol
            )));
        }
    }
    let Some(linux) = &cfg.linux else { return Ok(()) };
    pod_sysctls(cfg)?;
    for (field, r) in [
        ("linux.overhead", &linux.overhead),
        ("linux.resources", &linux.resources),
    ] {
        if let Some(r) = r {
            limits::validate(r, field).map_err(prefixed(p))?;
        }
    }
    let Some(sc) = &linux.security_context else {
        return Ok(());
    };
    let f = "linux.security_context";
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() {
        return Err(invalid(format!("{p}: {f}.run_as_group is set without run_as_user")));
    }
    for (name, v) in [("run_as_user", sc.run_as_user), ("run_as_group", sc.run_as_group)] {
        if let Some(v) = v
            && u32::try_from(v.value).is_err()
        {
            return Err(invalid(format!(
                "{p}: {f}.{name} must be within 0..=4294967295, got {}",
                v.value
            )));
        }
    }
    if let Some(ns) = &sc.namespace_options {
        if ns.pid == NamespaceMode::Target as i32 {
            return Err(invalid(format!(
                "{p}: {f}.namespace_options.pid TARGET is for containers only"
            )));
        }
        for (name, v) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            if NamespaceMode::try_from(v).is_err() {
                return Err(invalid(format!("{p}: {f}.namespace_options.{name} {v} is unknown")));
            }
        }
        userns_check(ns, f).map_err(prefixed(p))?;
    }
    profile_checks(
        sc.seccomp.as_ref(),
        &sc.seccomp_profile_path,
        sc.apparmor.as_ref(),
        "",
        f,
    )
    .map_err(prefixed(p))?;
    Ok(())
}

/// CreateContainer's checks of the container config alone.
#[allow(deprecated)]
pub fn validate_container_config(cfg: &api::ContainerConfig) -> CriResult<()> {
    let p = "container config";
    let m = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid(format!("{p}: metadata is required")))?;
    if m.name.is_empty() {
        return Err(invalid(format!("{p}: metadata.name must not be empty")));
    }
    if m.name.contains('/') || m.name.contains('\0') {
        return Err(invalid(format!("{p}: metadata.name {:?} must not contain '/'", m.name)));
    }
    if cfg.image.as_ref().is_none_or(|i| i.image.is_empty()) {
        return Err(invalid(format!("{p}: image.image must not be empty")));
    }
    process::validate(cfg).map_err(prefixed(p))?;
    mounts::validate(&cfg.mounts).map_err(prefixed(p))?;
    devices::validate(&cfg.devices).map_err(prefixed(p))?;
    validate_log_path(&cfg.log_path).map_err(prefixed(p))?;
    if !cfg.cdi_devices.is_empty() {
        return Err(CriError::Unimplemented(format!("{p}: cdi_devices are not supported")));
    }
    let Some(linux) = &cfg.linux else { return Ok(()) };
    if let Some(r) = &linux.resources {
        limits::validate(r, "linux.resources").map_err(prefixed(p))?;
    }
    let Some(sc) = &linux.security_context else {
        return Ok(());
    };
    let f = "linux.security_context";
    user::validate(sc, f).map_err(prefixed(p))?;
    if let Some(c) = &sc.capabilities {
        caps::validate(c, &format!("{f}.capabilities")).map_err(prefixed(p))?;
    }
    security::validate_paths(&sc.masked_paths, &format!("{f}.masked_paths")).map_err(prefixed(p))?;
    security::validate_paths(&sc.readonly_paths, &format!("{f}.readonly_paths")).map_err(prefixed(p))?;
    if let Some(ns) = &sc.namespace_options {
        for (name, v) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            if NamespaceMode::try_from(v).is_err() {
                return Err(invalid(format!("{p}: {f}.namespace_options.{name} {v} is unknown")));
            }
        }
        if ns.pid == NamespaceMode::Target as i32 && ns.target_id.is_empty() {
            return Err(invalid(format!(
                "{p}: {f}.namespace_options.target_id is required for pid TARGET"
            )));
        }
        userns_check(ns, f).map_err(prefixed(p))?;
    }
    profile_checks(
        sc.seccomp.as_ref(),
        &sc.seccomp_profile_path,
        sc.apparmor.as_ref(),
        &sc.apparmor_profile,
        f,
    )
    .map_err(prefixed(p))
}

/// A log path is relative to the pod's log directory and may not leave it.
pub fn validate_log_path(log_path: &str) -> CriResult<()> {
    if log_path.starts_with('/') {
        return Err(invalid(format!(
            "log_path {log_path:?} must be relative to the pod's log_directory"
        )));
    }
    if log_path.contains('\0') || log_path.split('/').any(|c| c == "..") {
        return Err(invalid(format!(
            "log_path {log_path:?} may not leave the pod's log_directory"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_config() -> api::PodSandboxConfig {
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

    fn container_config() -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            log_path: "app/0.log".into(),
            ..Default::default()
        }
    }

    fn with_sysctls(kv: &[(&str, &str)], ns: api::NamespaceOption) -> api::PodSandboxConfig {
        let mut c = pod_config();
        c.linux = Some(api::LinuxPodSandboxConfig {
            sysctls: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    }

    #[test]
    fn sysctl_table() {
        let pod_ns = api::NamespaceOption::default();
        let host_net = api::NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        };
        let host_ipc = api::NamespaceOption {
            ipc: NamespaceMode::Node as i32,
            ..Default::default()
        };
        // (key, namespaces, Ok(normalized key) or Err(message part))
        let cases: Vec<(&str, api::NamespaceOption, Result<&str, &str>)> = vec![
            ("net.ipv4.ip_forward", pod_ns.clone(), Ok("net.ipv4.ip_forward")),
            (
                "net/ipv4/ip_local_port_range",
                pod_ns.clone(),
                Ok("net.ipv4.ip_local_port_range"),
            ),
            (
                "net/ipv4/conf/eno2.100/rp_filter",
                pod_ns.clone(),
                Ok("net.ipv4.conf.eno2/100.rp_filter"),
            ),
            ("kernel.shm_rmid_forced", pod_ns.clone(), Ok("kernel.shm_rmid_forced")),
            ("kernel.msgmax", pod_ns.clone(), Ok("kernel.msgmax")),
            ("kernel.sem", pod_ns.clone(), Ok("kernel.sem")),
            ("fs.mqueue.msg_max", pod_ns.clone(), Ok("fs.mqueue.msg_max")),
            ("kernel.domainname", pod_ns.clone(), Ok("kernel.domainname")),
            (
                "kernel.hostname",
                pod_ns.clone(),
                Err("kernel.hostname is not a namespaced sysctl"),
            ),
            (
                "vm.swappiness",
                pod_ns.clone(),
                Err("vm.swappiness is not a namespaced sysctl"),
            ),
            ("kernel.shmfoo", pod_ns.clone(), Err("is not a namespaced sysctl")),
            ("net.", pod_ns.clone(), Err("is not a namespaced sysctl")),
            (
                "net.core.somaxconn",
                host_net.clone(),
                Err("shares the host's namespace"),
            ),
            (
                "kernel.domainname",
                host_net.clone(),
                Err("shares the host's namespace"),
            ),
            ("kernel.shmmax", host_net.clone(), Ok("kernel.shmmax")),
            ("kernel.shmmax", host_ipc.clone(), Err("shares the host's namespace")),
            (
                "fs.mqueue.queues_max",
                host_ipc.clone(),
                Err("shares the host's namespace"),
            ),
            ("net.core.somaxconn", host_ipc.clone(), Ok("net.core.somaxconn")),
            ("net.ipv4.../x", pod_ns.clone(), Err("malformed")),
        ];
        for (key, ns, want) in cases {
            let cfg = with_sysctls(&[(key, "1")], ns);
            match (pod_sysctls(&cfg), want) {
                (Ok(got), Ok(k)) => {
                    assert_eq!(got.keys().collect::<Vec<_>>(), vec![k], "{key}");
                    assert!(validate_pod_config(&cfg).is_ok(), "{key}");
                }
                (Err(e), Err(part)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(part) && msg.contains(&format!("{key:?}")), "{key}: {msg}");
                    assert!(
                        matches!(validate_pod_config(&cfg), Err(CriError::InvalidArgument(_))),
                        "{key}"
                    );
                }
                (got, want) => panic!("{key}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    #[allow(deprecated)]
    fn pod_config_table() {
        type Mutate = fn(&mut api::PodSandboxConfig);
        let cases: Vec<(&str, Mutate, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            (
                "no metadata",
                |c| c.metadata = None,
                Some("pod sandbox config: metadata is required"),
            ),
            (
                "no name",
                |c| c.metadata.as_mut().unwrap().name.clear(),
                Some("pod sandbox config: metadata.name must not be empty"),
            ),
            (
                "no uid",
                |c| c.metadata.as_mut().unwrap().uid.clear(),
                Some("pod sandbox config: metadata.uid must not be empty"),
            ),
            (
                "long hostname",
                |c| c.hostname = "h".repeat(65),
                Some("is not a valid host name"),
            ),
            ("empty hostname allowed", |c| c.hostname.clear(), None),
            (
                "relative log dir",
                |c| c.log_directory = "logs".into(),
                Some("log_directory must be an absolute path"),
            ),
            (
                "port range",
                |c| {
                    c.port_mappings.push(api::PortMapping {
                        container_port: 70000,
                        ..Default::default()
                    })
                },
                Some("port_mappings[0]: port out of range"),
            ),
            (
                "group without user",
                |c| {
                    c.linux = Some(api::LinuxPodSandboxConfig {
                        security_context: Some(api::LinuxSandboxSecurityContext {
                            run_as_group: Some(api::Int64Value { value: 1 }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("run_as_group is set without run_as_user"),
            ),
            (
                "negative overhead",
                |c| {
                    c.linux = Some(api::LinuxPodSandboxConfig {
                        overhead: Some(api::LinuxContainerResources {
                            memory_limit_in_bytes: -1,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("pod sandbox config: linux.overhead.memory_limit_in_bytes must not be negative"),
            ),
            (
                "bad seccomp string",
                |c| {
                    c.linux = Some(api::LinuxPodSandboxConfig {
                        security_context: Some(api::LinuxSandboxSecurityContext {
                            seccomp_profile_path: "nope".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("linux.security_context.seccomp: profile \"nope\""),
            ),
        ];
        for (name, f, want) in cases {
            let mut c = pod_config();
            f(&mut c);
            match (validate_pod_config(&c), want) {
                (Ok(()), None) => {}
                (Err(e), Some(part)) => {
                    assert!(matches!(e, CriError::InvalidArgument(_)), "{name}: {e:?}");
                    assert!(e.to_string().contains(part), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn container_config_table() {
        type Mutate = fn(&mut api::ContainerConfig);
        let cases: Vec<(&str, Mutate, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            (
                "no metadata",
                |c| c.metadata = None,
                Some("container config: metadata is required"),
            ),
            (
                "no name",
                |c| c.metadata.as_mut().unwrap().name.clear(),
                Some("container config: metadata.name must not be empty"),
            ),
            (
                "no image",
                |c| c.image = None,
                Some("container config: image.image must not be empty"),
            ),
            (
                "relative mount",
                |c| {
                    c.mounts.push(api::Mount {
                        container_path: "/a".into(),
                        host_path: "/b".into(),
                        ..Default::default()
                    });
                    c.mounts.push(api::Mount::default());
                    c.mounts.push(api::Mount {
                        container_path: "x".into(),
                        host_path: "/b".into(),
                        ..Default::default()
                    });
                },
                Some("container config: mounts[1].container_path must be absolute"),
            ),
            (
                "mount over /proc",
                |c| {
                    c.mounts.push(api::Mount {
                        container_path: "/tmp/../proc/sys".into(),
                        host_path: "/b".into(),
                        ..Default::default()
                    })
                },
                Some("a mount over /proc would hide the container's own proc"),
            ),
            (
                "lxcfs-style /proc/meminfo",
                |c| {
                    c.mounts.push(api::Mount {
                        container_path: "/proc/meminfo".into(),
                        host_path: "/b".into(),
                        ..Default::default()
                    })
                },
                None,
            ),
            (
                "absolute log path",
                |c| c.log_path = "/etc/passwd".into(),
                Some("must be relative"),
            ),
            (
                "escaping log path",
                |c| c.log_path = "app/../../x.log".into(),
                Some("may not leave"),
            ),
            (
                "relative working dir",
                |c| c.working_dir = "tmp".into(),
                Some("working_dir \"tmp\" must be an absolute"),
            ),
            (
                "env key with =",
                |c| {
                    c.envs.push(api::KeyValue {
                        key: "A=B".into(),
                        value: "c".into(),
                    })
                },
                Some("envs[0]"),
            ),
            (
                "NUL in args",
                |c| c.args = vec!["a\0b".into()],
                Some("args[0] contains a NUL byte"),
            ),
            (
                "negative cpu shares",
                |c| {
                    c.linux = Some(api::LinuxContainerConfig {
                        resources: Some(api::LinuxContainerResources {
                            cpu_shares: -1,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("container config: linux.resources.cpu_shares must not be negative"),
            ),
            (
                "unknown capability",
                |c| {
                    c.linux = Some(api::LinuxContainerConfig {
                        security_context: Some(api::LinuxContainerSecurityContext {
                            capabilities: Some(api::Capability {
                                add_capabilities: vec!["FLY".into()],
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("linux.security_context.capabilities.add_capabilities[0]: unknown capability"),
            ),
            (
                "relative masked path",
                |c| {
                    c.linux = Some(api::LinuxContainerConfig {
                        security_context: Some(api::LinuxContainerSecurityContext {
                            masked_paths: vec!["proc/kcore".into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("linux.security_context.masked_paths[0] must be an absolute path"),
            ),
            (
                "target without id",
                |c| {
                    c.linux = Some(api::LinuxContainerConfig {
                        security_context: Some(api::LinuxContainerSecurityContext {
                            namespace_options: Some(api::NamespaceOption {
                                pid: NamespaceMode::Target as i32,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                Some("target_id is required"),
            ),
            (
                "bad stop signal",
                |c| c.stop_signal = 100,
                Some("stop_signal 100 is not a known signal"),
            ),
            (
                "bad device permissions",
                |c| {
                    c.devices.push(api::Device {
                        host_path: "/dev/fuse".into(),
                        container_path: "/dev/fuse".into(),
                        permissions: "x".into(),
                    })
                },
                Some("devices[0].permissions"),
            ),
        ];
        for (name, f, want) in cases {
            let mut c = container_config();
            f(&mut c);
            match (validate_container_config(&c), want) {
                (Ok(()), None) => {}
                (Err(e), Some(part)) => {
                    assert!(matches!(e, CriError::InvalidArgument(_)), "{name}: {e:?}");
                    assert!(e.to_string().contains(part), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    #[allow(deprecated)]
    fn unsupported_features_say_so() {
        let mut c = container_config();
        c.cdi_devices.push(api::CdiDevice {
            name: "vendor.com/gpu=0".into(),
        });
        assert!(matches!(validate_container_config(&c), Err(CriError::Unimplemented(_))));
        let mut c = container_config();
        c.linux = Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    userns_options: Some(api::UserNamespace {
                        mode: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(validate_container_config(&c), Err(CriError::Unimplemented(_))));
        let mut c = container_config();
        c.linux = Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                apparmor_profile: "localhost/k8s-apparmor-example".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(
            validate_container_config(&c),
            Err(CriError::FailedPrecondition(_))
        ));
    }
}
