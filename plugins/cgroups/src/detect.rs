//! Which cgroup hierarchies are mounted, in which mode, with which controllers: from `/proc/self/mountinfo`
//! (mounts under the configured mountpoint only) and the cgroup2 root's `cgroup.controllers`.

use std::path::{Path, PathBuf};

use berth_core::plugin::resources::CgroupMode;
use serde::Serialize;

use crate::error::{CgroupError, Result};

/// A mounted v1 hierarchy: its mount point (the hierarchy's root as we see it) and its controllers
/// (`cpu`, `memory`, … or a named hierarchy such as `name=systemd`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct V1Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<String>,
    /// The root of the mount inside the hierarchy (`/` unless bind-mounted or in a cgroup namespace).
    pub mount_root: String,
}

/// What is mounted. Built by [`Layout::detect`] on a machine, or by hand over temp dirs in tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub mode: CgroupMode,
    pub v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount: the only hierarchy in v2 mode, `…/unified` in hybrid mode.
    pub unified: Option<PathBuf>,
    /// Controllers the cgroup2 root offers (`cgroup.controllers`).
    pub unified_controllers: Vec<String>,
}

/// The v1 mount options that are controllers (everything else is a generic mount option).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

impl Layout {
    /// Reads this process's mountinfo and keeps the cgroup mounts under `mountpoint`.
    pub fn detect(mountpoint: &Path) -> Result<Layout> {
        let path = PathBuf::from("/proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|e| CgroupError::read(path, e))?;
        let mut layout = Layout::from_mountinfo(&text, mountpoint)?;
        if let Some(root) = &layout.unified {
            layout.unified_controllers = crate::file::read_opt(root, "cgroup.controllers")?
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
        }
        Ok(layout)
    }

    /// The pure part of [`Layout::detect`] (`unified_controllers` is left empty).
    pub fn from_mountinfo(text: &str, mountpoint: &Path) -> Result<Layout> {
        let mut v1: Vec<V1Hierarchy> = Vec::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let mount = PathBuf::from(unescape(pre[4]));
            if !mount.starts_with(mountpoint) {
                continue;
            }
            match post[0] {
                "cgroup2" => unified = Some(mount),
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(String::from)
                        .collect();
                    if controllers.is_empty() {
                        continue;
                    }
                    // A hierarchy mounted twice (a bind mount) is used once.
                    v1.retain(|h| h.controllers != controllers);
                    v1.push(V1Hierarchy {
                        mount,
                        controllers,
                        mount_root: unescape(pre[3]),
                    });
                }
                _ => {}
            }
        }
        let mode = match (&unified, v1.is_empty()) {
            (Some(u), _) if u == mountpoint => CgroupMode::V2,
            (Some(_), true) => CgroupMode::V2,
            (None, true) => {
                return Err(CgroupError::Unsupported(format!(
                    "no cgroup hierarchy is mounted under {}",
                    mountpoint.display()
                )));
            }
            (Some(_), false) => CgroupMode::Hybrid,
            (None, false) => CgroupMode::V1,
        };
        if mode == CgroupMode::V2 {
            v1.clear();
        }
        v1.sort_by(|a, b| a.mount.cmp(&b.mount));
        Ok(Layout {
            mode,
            v1,
            unified,
            unified_controllers: Vec::new(),
        })
    }

    /// A pure cgroup2 layout rooted at `root` (tests: a temp dir).
    pub fn v2(root: PathBuf, controllers: &[&str]) -> Layout {
        Layout {
            mode: CgroupMode::V2,
            v1: Vec::new(),
            unified: Some(root),
            unified_controllers: controllers.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The mount of the v1 hierarchy carrying `controller`, or the cgroup2 mount when the controller lives there
    /// (v2 mode, or hybrid mode's `unified` hierarchy, e.g. hugetlb on this machine).
    pub fn mount_of(&self, controller: &str) -> Option<&Path> {
        if let Some(h) = self.v1.iter().find(|h| h.controllers.iter().any(|c| c == controller)) {
            return Some(&h.mount);
        }
        match &self.unified {
            Some(u) if self.unified_controllers.iter().any(|c| c == controller) => Some(u),
            // The cpu/memory core files exist on v2 even when the list was not read (fixtures).
            Some(u) if self.mode == CgroupMode::V2 && self.unified_controllers.is_empty() => Some(u),
            _ => None,
        }
    }

    /// Whether `controller` lives on the cgroup2 hierarchy.
    pub fn on_unified(&self, controller: &str) -> bool {
        self.mode == CgroupMode::V2
            || (!self.v1.iter().any(|h| h.controllers.iter().any(|c| c == controller))
                && self.unified_controllers.iter().any(|c| c == controller))
    }

    /// Every hierarchy a cgroup is created in and a process joins: each v1 mount, and the cgroup2 mount.
    pub fn mounts(&self) -> Vec<&Path> {
        let mut m: Vec<&Path> = self.v1.iter().map(|h| h.mount.as_path()).collect();
        if let Some(u) = &self.unified {
            m.push(u);
        }
        m
    }

    /// All controllers, v1 ones first.
    pub fn controllers(&self) -> Vec<String> {
        let mut c: Vec<String> = self.v1.iter().flat_map(|h| h.controllers.iter().cloned()).collect();
        c.extend(self.unified_controllers.iter().cloned());
        c
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's own cgroup per hierarchy (`/proc/self/cgroup`): `(controllers, path)`; controllers is empty for
/// the cgroup2 line.
pub fn own_cgroups() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default()
}

pub fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's mountinfo (a hybrid host: v1 controllers, hugetlb on the cgroup2 `unified` mount).
    const HYBRID: &str = "\
25 1 0:23 / / rw,relatime - overlay overlay rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A Debian 12 node: pure cgroup2 (nsdelegate, memory_recursiveprot).
    const V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// An older v1 host: cpu and cpuacct co-mounted, no cgroup2.
    const V1: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn detects_this_machines_hybrid_layout() {
        let l = Layout::from_mountinfo(HYBRID, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(l.mode, CgroupMode::Hybrid);
        assert_eq!(l.v1.len(), 9);
        assert_eq!(l.mount_of("memory").unwrap(), Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(l.mount_of("cpuacct").unwrap(), Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(l.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            l.mount_of("hugetlb"),
            None,
            "not known until cgroup.controllers is read"
        );
        let mut l = l;
        l.unified_controllers = vec!["hugetlb".into()];
        assert_eq!(l.mount_of("hugetlb").unwrap(), Path::new("/sys/fs/cgroup/unified"));
        assert!(l.on_unified("hugetlb") && !l.on_unified("memory"));
        assert_eq!(l.mounts().len(), 10);
    }

    #[test]
    fn detects_pure_v2_and_plain_v1() {
        let l = Layout::from_mountinfo(V2, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(l.mode, CgroupMode::V2);
        assert_eq!(l.mounts(), vec![Path::new("/sys/fs/cgroup")]);
        let l = Layout::from_mountinfo(V1, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(l.mode, CgroupMode::V1);
        assert_eq!(l.mount_of("cpu"), l.mount_of("cpuacct"));
        assert_eq!(l.mount_of("cpu").unwrap(), Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(l.mount_of("hugetlb"), None);
    }

    #[test]
    fn nothing_mounted_is_an_error() {
        assert!(Layout::from_mountinfo(V2, Path::new("/elsewhere")).is_err());
    }

    #[test]
    fn proc_cgroup_shows_the_nested_memory_cgroup() {
        let own = parse_proc_cgroup("4:memory:/process_api/bfbf\n1:cpu:/\n0::/\n");
        assert_eq!(own[0], ("memory".to_string(), "/process_api/bfbf".to_string()));
        assert_eq!(own[2], (String::new(), "/".to_string()));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
