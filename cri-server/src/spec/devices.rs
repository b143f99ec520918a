//! Devices: CRI devices (a node, or every node below a directory) as OCI `linux.devices` plus device cgroup
//! rules; privileged containers get every host device and `a *:* rwm`.

use std::path::{Path, PathBuf};

use berth_core::plugin::resources::DeviceRule;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use super::{Host, HostDevice};
use crate::api;
use crate::error::{CriError, CriResult};

/// Checks the CRI devices without touching the host.
pub fn validate(devices: &[api::Device]) -> CriResult<()> {
    for (i, d) in devices.iter().enumerate() {
        if !d.host_path.starts_with('/') || d.host_path.contains('\0') {
            return Err(CriError::InvalidArgument(format!(
                "devices[{i}].host_path must be absolute, got {:?}",
                d.host_path
            )));
        }
        if !d.container_path.is_empty() && (!d.container_path.starts_with('/') || d.container_path.contains('\0')) {
            return Err(CriError::InvalidArgument(format!(
                "devices[{i}].container_path must be absolute, got {:?}",
                d.container_path
            )));
        }
        if d.permissions.chars().any(|c| !matches!(c, 'r' | 'w' | 'm')) {
            return Err(CriError::InvalidArgument(format!(
                "devices[{i}].permissions {:?} may only hold r, w and m",
                d.permissions
            )));
        }
    }
    Ok(())
}

/// The devices of the container and the cgroup rules that let it use them.
#[derive(Debug, Default)]
pub struct DevicePlan {
    pub devices: Vec<LinuxDevice>,
    /// For the OCI spec: deny all, then the allows.
    pub cgroup: Vec<LinuxDeviceCgroup>,
    /// For the resources plugin: the allows only (it adds the default ones itself).
    pub rules: Vec<DeviceRule>,
}

fn oci_device(d: &HostDevice, path: &Path) -> CriResult<LinuxDevice> {
    LinuxDeviceBuilder::default()
        .path(path)
        .typ(if d.kind == 'b' {
            LinuxDeviceType::B
        } else {
            LinuxDeviceType::C
        })
        .major(d.major)
        .minor(d.minor)
        .file_mode(d.mode & 0o7777)
        .uid(d.uid)
        .gid(d.gid)
        .build()
        .map_err(|e| CriError::Internal(format!("building device {}: {e}", path.display())))
}

fn cgroup_rule(r: &DeviceRule) -> CriResult<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(r.allow)
        .access(r.access.clone());
    b = match r.kind {
        'b' => b.typ(LinuxDeviceType::B),
        'c' => b.typ(LinuxDeviceType::C),
        _ => b.typ(LinuxDeviceType::A),
    };
    if let Some(m) = r.major {
        b = b.major(m);
    }
    if let Some(m) = r.minor {
        b = b.minor(m);
    }
    b.build()
        .map_err(|e| CriError::Internal(format!("building device rule: {e}")))
}

/// Where a host node found under `host_root` appears in the container, given the CRI `container_path`.
fn container_path_of(node: &Path, host_root: &Path, container_root: &Path) -> PathBuf {
    match node.strip_prefix(host_root) {
        Ok(rest) if !rest.as_os_str().is_empty() => container_root.join(rest),
        _ => container_root.to_path_buf(),
    }
}

/// Resolves the CRI devices on the host (symlinks followed, directories walked) and, for a privileged
/// container, adds every host device and allows them all.
pub fn plan(devices: &[api::Device], privileged: bool, host: &dyn Host) -> CriResult<DevicePlan> {
    validate(devices)?;
    let mut out = DevicePlan::default();
    let add = |node: &HostDevice, at: PathBuf, access: &str, out: &mut DevicePlan| -> CriResult<()> {
        out.devices.retain(|d| d.path() != &at);
        out.devices.push(oci_device(node, &at)?);
        out.rules.push(DeviceRule {
            allow: true,
            kind: node.kind,
            major: Some(node.major),
            minor: Some(node.minor),
            access: access.to_string(),
        });
        Ok(())
    };
    if privileged {
        let all = host
            .devices(Path::new("/dev"))
            .map_err(|e| CriError::Internal(format!("listing host devices: {e}")))?;
        for node in &all {
            add(node, node.path.clone(), "rwm", &mut out)?;
        }
        out.rules = vec![DeviceRule {
            allow: true,
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        }];
    }
    for (i, d) in devices.iter().enumerate() {
        let host_root = Path::new(&d.host_path);
        let nodes = host
            .devices(host_root)
            .map_err(|e| CriError::InvalidArgument(format!("devices[{i}]: host device {}: {e}", d.host_path)))?;
        if nodes.is_empty() {
            return Err(CriError::InvalidArgument(format!(
                "devices[{i}]: {} is not a device and holds none",
                d.host_path
            )));
        }
        let container_root = if d.container_path.is_empty() {
            host_root
        } else {
            Path::new(&d.container_path)
        };
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        for node in &nodes {
            let at = container_path_of(&node.path, host_root, container_root);
            add(node, at, access, &mut out)?;
        }
        if privileged {
            out.rules.truncate(1);
        }
    }
    let deny_all = DeviceRule {
        allow: false,
        kind: 'a',
        major: None,
        minor: None,
        access: "rwm".into(),
    };
    out.cgroup = std::iter::once(&deny_all)
        .chain(out.rules.iter())
        .map(cgroup_rule)
        .collect::<CriResult<_>>()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::FakeHost;

    fn dev(host: &str, container: &str, perms: &str) -> api::Device {
        api::Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: perms.into(),
        }
    }

    fn summary(p: &DevicePlan) -> Vec<String> {
        p.devices
            .iter()
            .map(|d| {
                format!(
                    "{} {:?} {}:{} {:o}",
                    d.path().display(),
                    d.typ(),
                    d.major(),
                    d.minor(),
                    d.file_mode().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn cri_devices_table() {
        let p = plan(
            &[
                dev("/dev/fuse", "/dev/fuse", "rw"),
                dev("/dev/link-to-null", "/dev/mynull", ""),
            ],
            false,
            &FakeHost,
        )
        .unwrap();
        assert_eq!(summary(&p), vec!["/dev/fuse C 10:229 666", "/dev/mynull C 1:3 666"]);
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].access, "rw");
        assert_eq!(p.rules[1].access, "rwm", "empty permissions mean rwm");
        assert!(!p.cgroup[0].allow(), "the OCI rules start with deny-all");
        assert_eq!(p.cgroup.len(), 3);
    }

    #[test]
    fn empty_container_path_means_the_host_path() {
        let p = plan(&[dev("/dev/fuse", "", "r")], false, &FakeHost).unwrap();
        assert_eq!(summary(&p), vec!["/dev/fuse C 10:229 666"]);
    }

    #[test]
    fn a_directory_brings_every_node_below_it() {
        let p = plan(&[dev("/dev/snd", "/dev/sound", "rw")], false, &FakeHost).unwrap();
        assert_eq!(
            summary(&p),
            vec!["/dev/sound/controlC0 C 116:0 660", "/dev/sound/pcmC0D0p C 116:16 660"]
        );
    }

    #[test]
    fn privileged_gets_every_host_device_and_allow_all() {
        let p = plan(&[dev("/dev/fuse", "/dev/fuse2", "r")], true, &FakeHost).unwrap();
        assert!(p.devices.len() >= 4, "{:?}", summary(&p));
        assert!(summary(&p).contains(&"/dev/fuse2 C 10:229 666".to_string()));
        assert_eq!(p.rules.len(), 1);
        assert_eq!((p.rules[0].kind, p.rules[0].access.as_str()), ('a', "rwm"));
    }

    #[test]
    fn bad_devices_are_invalid_arguments() {
        let e = |d: api::Device| plan(&[d], false, &FakeHost).unwrap_err().to_string();
        assert_eq!(
            e(dev("dev/fuse", "/x", "")),
            "devices[0].host_path must be absolute, got \"dev/fuse\""
        );
        assert_eq!(
            e(dev("/dev/fuse", "x", "")),
            "devices[0].container_path must be absolute, got \"x\""
        );
        assert_eq!(
            e(dev("/dev/fuse", "/x", "rwx")),
            "devices[0].permissions \"rwx\" may only hold r, w and m"
        );
        assert!(e(dev("/dev/nope", "/x", "")).starts_with("devices[0]: host device /dev/nope:"));
        assert_eq!(
            e(dev("/srv/empty", "/x", "")),
            "devices[0]: /srv/empty is not a device and holds none"
        );
    }
}
