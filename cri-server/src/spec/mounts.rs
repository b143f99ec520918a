//! Mounts: the default set, the pod's files (/etc/hosts, /etc/hostname, /etc/resolv.conf, /dev/shm), CRI
//! mounts and the image's anonymous volumes, ordered like containerd's `WithMounts`: the defaults not
//! overridden, then every bind mount sorted (stably) by the depth of its destination so that a parent is
//! mounted before what lies below it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_core::model::MountRecord;
use oci_spec::runtime::{Mount, MountBuilder};

use super::{Host, PodContext};
use crate::api::{self, MountPropagation};
use crate::error::{CriError, CriResult};

/// Lexically cleans an absolute path like Go's `filepath.Clean`: no `.`, no `..`, no repeated or trailing `/`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn depth(path: &str) -> usize {
    clean(path).matches('/').count()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> CriResult<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| CriError::Internal(format!("building mount {dest}: {e}")))
}

/// runc's and containerd's default mounts for a CRI container, minus /run (containerd's `WithoutRunMount`).
pub fn default_mounts(privileged: bool, shm_size: u64) -> CriResult<Vec<Mount>> {
    let mode = if privileged { "rw" } else { "ro" };
    let shm = format!("size={}k", shm_size.div_ceil(1024));
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", mode])?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", mode],
        )?,
    ])
}

/// The /proc files a bind mount may replace (runc's checkProcMount list, which lxcfs relies on); anything else
/// under /proc could mask the kernel's view the masked and read-only paths protect.
const PROC_FILES_OVERRIDABLE: [&str; 7] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
];

/// Checks the CRI mounts without touching the host.
pub fn validate(mounts: &[api::Mount]) -> CriResult<()> {
    for (i, m) in mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        if !m.container_path.starts_with('/') || m.container_path.contains('\0') {
            return Err(CriError::InvalidArgument(format!(
                "{field}.container_path must be absolute, got {:?}",
                m.container_path
            )));
        }
        let dest = clean(&m.container_path);
        if dest == "/" {
            return Err(CriError::InvalidArgument(format!(
                "{field}.container_path must not be /"
            )));
        }
        if (dest == "/proc" || dest.starts_with("/proc/")) && !PROC_FILES_OVERRIDABLE.contains(&dest.as_str()) {
            return Err(CriError::InvalidArgument(format!(
                "{field}.container_path {:?}: a mount over /proc would hide the container's own proc (only {} may be overridden, as lxcfs does)",
                m.container_path,
                PROC_FILES_OVERRIDABLE.join(", ")
            )));
        }
        if m.image.is_some() {
            if !m.host_path.is_empty() {
                return Err(CriError::InvalidArgument(format!(
                    "{field}: host_path and image are exclusive"
                )));
            }
            return Err(CriError::Unimplemented(format!(
                "{field}: image volume mounts are not supported yet"
            )));
        }
        if !m.host_path.starts_with('/') || m.host_path.contains('\0') {
            return Err(CriError::InvalidArgument(format!(
                "{field}.host_path must be absolute, got {:?}",
                m.host_path
            )));
        }
        if MountPropagation::try_from(m.propagation).is_err() {
            return Err(CriError::InvalidArgument(format!(
                "{field}.propagation {} is not a mount propagation",
                m.propagation
            )));
        }
        if m.recursive_read_only {
            if !m.readonly {
                return Err(CriError::InvalidArgument(format!(
                    "{field}: recursive_read_only needs readonly to be set"
                )));
            }
            if m.propagation != MountPropagation::PropagationPrivate as i32 {
                return Err(CriError::InvalidArgument(format!(
                    "{field}: recursive_read_only needs private propagation"
                )));
            }
            return Err(CriError::Unimplemented(format!(
                "{field}: recursive read-only mounts are not supported (the runtime handler does not announce them)"
            )));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(CriError::Unimplemented(format!(
                "{field}: id-mapped mounts are not supported"
            )));
        }
    }
    Ok(())
}

/// A bind mount to make, before sorting.
struct Bind {
    container_path: String,
    host_path: PathBuf,
    readonly: bool,
    propagation: MountPropagation,
}

/// What the mount step produced.
#[derive(Debug, Default)]
pub struct MountPlan {
    pub mounts: Vec<Mount>,
    /// CRI mounts as ContainerStatus reports them.
    pub records: Vec<MountRecord>,
    /// CRI host paths that do not exist: the caller creates them as directories (0755), as containerd does.
    pub host_dirs: Vec<PathBuf>,
    /// Host directories for the image's volumes, to create (empty) before the container is created.
    pub anonymous_volumes: Vec<PathBuf>,
    /// `rshared` / `rslave` when a mount needs the rootfs to propagate that way.
    pub rootfs_propagation: Option<String>,
}

/// The inputs of [`plan`] that are not the CRI mounts themselves.
pub struct MountContext<'a> {
    pub pod: &'a PodContext,
    pub image_volumes: &'a [String],
    pub volumes_dir: &'a Path,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub shm_size: u64,
}

/// All mounts of the container, in order.
pub fn plan(cri: &[api::Mount], ctx: &MountContext<'_>, host: &dyn Host) -> CriResult<MountPlan> {
    validate(cri)?;
    let mut out = MountPlan::default();
    let mut binds: Vec<Bind> = Vec::new();
    for m in cri {
        let given = PathBuf::from(&m.host_path);
        let host_path = match host.resolve(&given) {
            Ok(Some(real)) => real,
            Ok(None) => {
                out.host_dirs.push(given.clone());
                given
            }
            Err(e) => return Err(CriError::Internal(format!("mount source {}: {e}", m.host_path))),
        };
        binds.push(Bind {
            container_path: m.container_path.clone(),
            host_path,
            readonly: m.readonly,
            propagation: MountPropagation::try_from(m.propagation).unwrap_or(MountPropagation::PropagationPrivate),
        });
        out.records.push(MountRecord {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            propagation: m.propagation,
        });
    }
    let mut taken: BTreeSet<String> = cri.iter().map(|m| clean(&m.container_path)).collect();
    // A bind berth adds unless something already mounts there; says whether it did.
    let mut extra = |dest: &str, host_path: PathBuf, readonly: bool, binds: &mut Vec<Bind>| -> bool {
        let fresh = taken.insert(clean(dest));
        if fresh {
            binds.push(Bind {
                container_path: dest.to_string(),
                host_path,
                readonly,
                propagation: MountPropagation::PropagationPrivate,
            });
        }
        fresh
    };
    let pod = ctx.pod;
    for (dest, file) in [
        ("/etc/hostname", &pod.etc_hostname),
        ("/etc/hosts", &pod.etc_hosts),
        ("/etc/resolv.conf", &pod.resolv_conf),
    ] {
        if let Some(file) = file {
            extra(dest, file.clone(), ctx.readonly_rootfs, &mut binds);
        }
    }
    if pod.host_ipc {
        extra("/dev/shm", PathBuf::from("/dev/shm"), false, &mut binds);
    } else if let Some(shm) = &pod.shm {
        extra("/dev/shm", shm.clone(), false, &mut binds);
    }
    let mut volumes: Vec<String> = ctx
        .image_volumes
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|v| if v.starts_with('/') { v.clone() } else { format!("/{v}") })
        .collect();
    volumes.sort();
    for v in volumes {
        let dir = ctx.volumes_dir.join(out.anonymous_volumes.len().to_string());
        if clean(&v) != "/" && extra(&v, dir.clone(), false, &mut binds) {
            out.anonymous_volumes.push(dir);
        }
    }
    binds.sort_by_key(|b| depth(&b.container_path));

    let dev_supplied = taken.contains("/dev");
    for m in default_mounts(ctx.privileged, ctx.shm_size)? {
        let dest = clean(&m.destination().to_string_lossy());
        if taken.contains(&dest) || (dev_supplied && dest.starts_with("/dev/")) {
            continue;
        }
        out.mounts.push(m);
    }
    for b in binds {
        let propagation = match b.propagation {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationHostToContainer => {
                if out.rootfs_propagation.as_deref() != Some("rshared") {
                    out.rootfs_propagation = Some("rslave".into());
                }
                "rslave"
            }
            MountPropagation::PropagationBidirectional => {
                out.rootfs_propagation = Some("rshared".into());
                "rshared"
            }
        };
        let source = b.host_path.to_string_lossy().into_owned();
        let rw = if b.readonly { "ro" } else { "rw" };
        out.mounts
            .push(mount(&b.container_path, "bind", &source, &["rbind", propagation, rw])?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::FakeHost;

    fn pod() -> PodContext {
        PodContext {
            pod_id: "p1".into(),
            hostname: "web-0".into(),
            etc_hosts: Some("/run/berth/pods/p1/hosts".into()),
            etc_hostname: Some("/run/berth/pods/p1/hostname".into()),
            resolv_conf: Some("/run/berth/pods/p1/resolv.conf".into()),
            shm: Some("/run/berth/pods/p1/shm".into()),
            ..Default::default()
        }
    }

    fn cri(container: &str, host: &str, ro: bool, prop: MountPropagation) -> api::Mount {
        api::Mount {
            container_path: container.into(),
            host_path: host.into(),
            readonly: ro,
            propagation: prop as i32,
            ..Default::default()
        }
    }

    fn run(cri: &[api::Mount], pod: &PodContext, volumes: &[&str], privileged: bool, ro: bool) -> MountPlan {
        let volumes: Vec<String> = volumes.iter().map(|s| s.to_string()).collect();
        let ctx = MountContext {
            pod,
            image_volumes: &volumes,
            volumes_dir: Path::new("/var/lib/berth/containers/c1/volumes"),
            privileged,
            readonly_rootfs: ro,
            shm_size: 64 << 20,
        };
        plan(cri, &ctx, &FakeHost).unwrap()
    }

    fn table(p: &MountPlan) -> Vec<String> {
        p.mounts
            .iter()
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m.destination().display(),
                    m.typ().as_deref().unwrap_or(""),
                    m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
                    m.options().clone().unwrap_or_default().join(",")
                )
            })
            .collect()
    }

    #[test]
    fn clean_matches_go() {
        for (i, o) in [
            ("/", "/"),
            ("/a/b/", "/a/b"),
            ("//a//b", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../a", "/a"),
            ("/a/..", "/"),
        ] {
            assert_eq!(clean(i), o, "{i}");
        }
    }

    #[test]
    fn defaults_then_pod_files_sorted_by_depth() {
        let p = run(&[], &pod(), &[], false, false);
        assert_eq!(
            table(&p),
            vec![
                "/proc proc proc nosuid,noexec,nodev",
                "/dev tmpfs tmpfs nosuid,strictatime,mode=755,size=65536k",
                "/dev/pts devpts devpts nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
                "/dev/mqueue mqueue mqueue nosuid,noexec,nodev",
                "/sys sysfs sysfs nosuid,noexec,nodev,ro",
                "/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,ro",
                "/etc/hostname bind /run/berth/pods/p1/hostname rbind,rprivate,rw",
                "/etc/hosts bind /run/berth/pods/p1/hosts rbind,rprivate,rw",
                "/etc/resolv.conf bind /run/berth/pods/p1/resolv.conf rbind,rprivate,rw",
                "/dev/shm bind /run/berth/pods/p1/shm rbind,rprivate,rw",
            ]
        );
        assert!(p.rootfs_propagation.is_none());
    }

    #[test]
    fn no_pod_shm_means_a_private_tmpfs_and_host_ipc_the_host_one() {
        let mut pd = pod();
        pd.shm = None;
        let t = table(&run(&[], &pd, &[], false, false));
        assert!(
            t.contains(&"/dev/shm tmpfs shm nosuid,noexec,nodev,mode=1777,size=65536k".to_string()),
            "{t:#?}"
        );
        pd.host_ipc = true;
        let t = table(&run(&[], &pd, &[], false, false));
        assert!(
            t.contains(&"/dev/shm bind /dev/shm rbind,rprivate,rw".to_string()),
            "{t:#?}"
        );
    }

    #[test]
    fn privileged_gets_writable_sys_and_readonly_rootfs_readonly_pod_files() {
        let t = table(&run(&[], &pod(), &[], true, true));
        assert!(t.contains(&"/sys sysfs sysfs nosuid,noexec,nodev,rw".to_string()));
        assert!(t.contains(&"/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,rw".to_string()));
        assert!(t.contains(&"/etc/hosts bind /run/berth/pods/p1/hosts rbind,rprivate,ro".to_string()));
        assert!(t.contains(&"/dev/shm bind /run/berth/pods/p1/shm rbind,rprivate,rw".to_string()));
    }

    #[test]
    fn cri_mounts_override_and_sort() {
        let mounts = vec![
            cri(
                "/var/lib/data/deep",
                "/srv/deep",
                false,
                MountPropagation::PropagationPrivate,
            ),
            cri("/etc/hosts", "/srv/hosts", true, MountPropagation::PropagationPrivate),
            cri("/data", "/srv/data", true, MountPropagation::PropagationHostToContainer),
            cri("/sys/", "/sys", false, MountPropagation::PropagationPrivate),
        ];
        let p = run(&mounts, &pod(), &[], false, false);
        assert_eq!(
            table(&p),
            vec![
                "/proc proc proc nosuid,noexec,nodev",
                "/dev tmpfs tmpfs nosuid,strictatime,mode=755,size=65536k",
                "/dev/pts devpts devpts nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
                "/dev/mqueue mqueue mqueue nosuid,noexec,nodev",
                "/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,ro",
                "/data bind /srv/data rbind,rslave,ro",
                "/sys/ bind /sys rbind,rprivate,rw",
                "/etc/hosts bind /srv/hosts rbind,rprivate,ro",
                "/etc/hostname bind /run/berth/pods/p1/hostname rbind,rprivate,rw",
                "/etc/resolv.conf bind /run/berth/pods/p1/resolv.conf rbind,rprivate,rw",
                "/dev/shm bind /run/berth/pods/p1/shm rbind,rprivate,rw",
                "/var/lib/data/deep bind /srv/deep rbind,rprivate,rw",
            ]
        );
        assert_eq!(p.rootfs_propagation.as_deref(), Some("rslave"));
        assert_eq!(p.records.len(), 4);
        assert_eq!(p.records[2].propagation, 1);
    }

    #[test]
    fn bidirectional_makes_the_rootfs_shared() {
        let mounts = vec![
            cri("/a", "/srv/a", false, MountPropagation::PropagationBidirectional),
            cri("/b", "/srv/b", false, MountPropagation::PropagationHostToContainer),
        ];
        let p = run(&mounts, &pod(), &[], false, false);
        assert_eq!(p.rootfs_propagation.as_deref(), Some("rshared"));
        assert!(table(&p).contains(&"/a bind /srv/a rbind,rshared,rw".to_string()));
    }

    #[test]
    fn host_dev_mount_drops_every_default_under_dev() {
        let p = run(
            &[cri("/dev", "/dev", false, MountPropagation::PropagationPrivate)],
            &pod(),
            &[],
            true,
            false,
        );
        let t = table(&p);
        assert!(
            !t.iter()
                .any(|m| m.starts_with("/dev/pts") || m.starts_with("/dev/mqueue")),
            "{t:#?}"
        );
        assert!(t.contains(&"/dev bind /dev rbind,rprivate,rw".to_string()));
        assert!(t.contains(&"/dev/shm bind /run/berth/pods/p1/shm rbind,rprivate,rw".to_string()));
    }

    #[test]
    fn missing_host_paths_are_returned_and_symlinks_resolved() {
        let mounts = vec![
            cri("/new", "/srv/missing", false, MountPropagation::PropagationPrivate),
            cri("/link", "/srv/link", false, MountPropagation::PropagationPrivate),
        ];
        let p = run(&mounts, &pod(), &[], false, false);
        assert_eq!(p.host_dirs, vec![PathBuf::from("/srv/missing")]);
        let t = table(&p);
        assert!(
            t.contains(&"/link bind /srv/real rbind,rprivate,rw".to_string()),
            "{t:#?}"
        );
        assert_eq!(p.records[1].host_path, "/srv/link", "status reports the path as given");
    }

    #[test]
    fn image_volumes_become_anonymous_unless_mounted() {
        let mounts = vec![cri("/data/", "/srv/data", false, MountPropagation::PropagationPrivate)];
        let p = run(
            &mounts,
            &pod(),
            &["/var/log", "data", "/cache", "/cache/"],
            false,
            false,
        );
        assert_eq!(
            p.anonymous_volumes,
            vec![
                PathBuf::from("/var/lib/berth/containers/c1/volumes/0"),
                PathBuf::from("/var/lib/berth/containers/c1/volumes/1")
            ]
        );
        let t = table(&p);
        assert!(t.contains(&"/cache bind /var/lib/berth/containers/c1/volumes/0 rbind,rprivate,rw".to_string()));
        assert!(t.contains(&"/var/log bind /var/lib/berth/containers/c1/volumes/1 rbind,rprivate,rw".to_string()));
        assert!(t.contains(&"/data/ bind /srv/data rbind,rprivate,rw".to_string()));
    }

    #[test]
    fn pod_without_files_mounts_none() {
        let pd = PodContext::default();
        let t = table(&run(&[], &pd, &[], false, false));
        assert!(!t.iter().any(|m| m.starts_with("/etc/")), "{t:#?}");
    }

    #[test]
    fn validation_table() {
        let m = |f: fn(&mut api::Mount)| {
            let mut x = cri("/data", "/srv", false, MountPropagation::PropagationPrivate);
            f(&mut x);
            validate(&[cri("/ok", "/ok", false, MountPropagation::PropagationPrivate), x]).map_err(|e| e.to_string())
        };
        assert!(m(|_| {}).is_ok());
        assert_eq!(
            m(|x| x.container_path = "data".into()).unwrap_err(),
            "mounts[1].container_path must be absolute, got \"data\""
        );
        assert_eq!(
            m(|x| x.container_path = "".into()).unwrap_err(),
            "mounts[1].container_path must be absolute, got \"\""
        );
        assert_eq!(
            m(|x| x.container_path = "/a/..".into()).unwrap_err(),
            "mounts[1].container_path must not be /"
        );
        assert_eq!(
            m(|x| x.host_path = "".into()).unwrap_err(),
            "mounts[1].host_path must be absolute, got \"\""
        );
        assert_eq!(
            m(|x| x.host_path = "rel".into()).unwrap_err(),
            "mounts[1].host_path must be absolute, got \"rel\""
        );
        assert_eq!(
            m(|x| x.propagation = 7).unwrap_err(),
            "mounts[1].propagation 7 is not a mount propagation"
        );
        assert_eq!(
            m(|x| x.recursive_read_only = true).unwrap_err(),
            "mounts[1]: recursive_read_only needs readonly to be set"
        );
        assert!(
            m(|x| x.image = Some(Default::default()))
                .unwrap_err()
                .contains("host_path and image are exclusive")
        );
        let e = validate(&[api::Mount {
            container_path: "/img".into(),
            image: Some(Default::default()),
            ..Default::default()
        }])
        .unwrap_err();
        assert!(matches!(e, CriError::Unimplemented(_)), "{e}");
    }
}
