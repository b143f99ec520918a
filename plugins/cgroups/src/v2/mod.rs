//! cgroup v2: one tree; controllers must be enabled in every ancestor's `cgroup.subtree_control` before a
//! child can use them ("no internal processes": berth keeps processes in leaves only).
//!
//! Devices: v2 has no devices files; an eBPF program attached to the container cgroup ([`devices`]) allows the
//! default and requested devices and denies the rest.

pub mod cpu;
pub mod cpuset;
pub mod devices;
pub mod memory;
pub mod pids;
pub mod unified;

use std::path::{Path, PathBuf};

use berth_core::plugin::resources::{CgroupPath, CgroupStats, LinuxResources};

use crate::error::Result;
use crate::file::{Tx, read_opt, write};
use crate::hugetlb;
use crate::path::dir_in;

/// Controllers berth enables for its subtrees when the parent offers them.
pub const WANTED: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

pub struct V2<'a> {
    pub root: &'a Path,
    /// Used when a level has no `cgroup.controllers` (fixtures).
    pub controllers: &'a [String],
}

impl V2<'_> {
    fn dir(&self, path: &CgroupPath) -> PathBuf {
        dir_in(self.root, path)
    }

    /// Enables the wanted controllers in the root and every ancestor of `path` (not in `path` itself: it may
    /// hold processes).
    pub fn prepare(&self, path: &CgroupPath) -> Result<()> {
        self.enable_along(path, WANTED)
    }

    /// Enables `wanted` (those available) in the root and every ancestor of `path`.
    pub fn enable_along(&self, path: &CgroupPath, wanted: &[&str]) -> Result<()> {
        let mut dir = self.root.to_path_buf();
        let parts: Vec<&str> = path.as_str().split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            self.enable_controllers(&dir, wanted)?;
            if i + 1 < parts.len() {
                dir.push(part);
            }
        }
        Ok(())
    }

    fn enable_controllers(&self, dir: &Path, wanted: &[&str]) -> Result<()> {
        let available: Vec<String> = match read_opt(dir, "cgroup.controllers")? {
            Some(s) => s.split_whitespace().map(String::from).collect(),
            None => self.controllers.to_vec(),
        };
        let enabled = read_opt(dir, "cgroup.subtree_control")?.unwrap_or_default();
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| available.iter().any(|a| a == c) && !enabled.contains(c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let all = missing.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        if write(dir, "cgroup.subtree_control", &all).is_ok() {
            return Ok(());
        }
        // One at a time, so one the kernel refuses (e.g. cpuset without cpus) does not block the others.
        for c in missing {
            if let Err(e) = write(dir, "cgroup.subtree_control", &format!("+{c}")) {
                tracing::warn!(dir = %dir.display(), controller = c, error = %e, "cannot enable a cgroup controller");
            }
        }
        Ok(())
    }

    pub fn apply(&self, tx: &mut Tx, path: &CgroupPath, r: &LinuxResources) -> Result<()> {
        let d = self.dir(path);
        cpu::apply(tx, &d, r)?;
        cpuset::apply(tx, &d, r)?;
        memory::apply(tx, &d, r)?;
        pids::apply(tx, &d, r.pids_limit)?;
        hugetlb::apply(tx, &d, &r.hugepage_limits, hugetlb::V2_LIMIT)?;
        unified::apply(tx, &d, &r.unified)?;
        Ok(())
    }

    /// The device program of a new container cgroup.
    pub fn apply_devices(&self, path: &CgroupPath, r: &LinuxResources) -> Result<()> {
        devices::apply(&self.dir(path), &r.devices)
    }

    pub fn stats(&self, path: &CgroupPath, s: &mut CgroupStats) -> Result<()> {
        let d = self.dir(path);
        s.cpu_usage_ns = cpu::usage_ns(&d)?;
        memory::stats(&d, s)?;
        s.pids = pids::current(&d)?;
        Ok(())
    }

    pub fn oom_kills(&self, path: &CgroupPath) -> Result<u64> {
        memory::oom_kills(&self.dir(path))
    }

    /// `cgroup.kill` (Linux ≥ 5.14) kills the whole subtree atomically; otherwise SIGKILL each pid.
    pub fn kill(&self, path: &CgroupPath, pids: &[i32]) -> Result<()> {
        let d = self.dir(path);
        if d.join("cgroup.kill").exists() {
            return write(&d, "cgroup.kill", "1");
        }
        crate::kill::sigkill(pids);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enables_controllers_in_ancestors_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        std::fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        let path = CgroupPath("/berth/pod/ctr".into());
        crate::tree::create(d.path(), "berth/pod/ctr").unwrap();
        let controllers: Vec<String> = vec!["cpu".into(), "memory".into(), "pids".into()];
        V2 {
            root: d.path(),
            controllers: &controllers,
        }
        .prepare(&path)
        .unwrap();
        let sc = |p: &str| read_opt(&d.path().join(p), "cgroup.subtree_control").unwrap();
        assert_eq!(sc("").unwrap(), "+cpu +cpuset +io +memory +pids +hugetlb");
        // Levels without cgroup.controllers (a fixture) use the layout's list.
        assert_eq!(sc("berth").unwrap(), "+cpu +memory +pids");
        assert_eq!(sc("berth/pod").unwrap(), "+cpu +memory +pids");
        assert_eq!(sc("berth/pod/ctr"), None, "the leaf keeps its processes");
    }
}
