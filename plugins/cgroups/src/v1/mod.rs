//! cgroup v1 (and hybrid): one directory per mounted hierarchy, each controller's files in its own.
//!
//! A cgroup path is created in every mounted hierarchy (named ones like `name=systemd` too, and the cgroup2
//! `unified` mount of a hybrid host), and a process joins all of them, as runc does. Controllers a hybrid host
//! moved to cgroup2 (hugetlb here) are written with their v2 file names in the unified directory.

pub mod cpu;
pub mod cpuacct;
pub mod cpuset;
pub mod devices;
pub mod freezer;
pub mod memory;
pub mod pids;

use std::path::PathBuf;

use berth_core::plugin::resources::{CgroupPath, CgroupStats, LinuxResources};

use crate::detect::Layout;
use crate::error::Result;
use crate::file::Tx;
use crate::hugetlb;
use crate::path::dir_in;

pub struct V1<'a> {
    pub layout: &'a Layout,
}

impl V1<'_> {
    fn dir(&self, controller: &str, path: &CgroupPath) -> Option<PathBuf> {
        self.layout.mount_of(controller).map(|m| dir_in(m, path))
    }

    /// After `create`: each new cpuset level copies its parent's cpus and mems, outermost first.
    pub fn prepare(&self, path: &CgroupPath) -> Result<()> {
        let Some(mount) = self.layout.mount_of("cpuset") else {
            return Ok(());
        };
        let mut dir = mount.to_path_buf();
        for part in path.as_str().split('/').filter(|p| !p.is_empty()) {
            let parent = dir.clone();
            dir.push(part);
            cpuset::inherit(&parent, &dir)?;
        }
        Ok(())
    }

    pub fn apply(&self, tx: &mut Tx, path: &CgroupPath, r: &LinuxResources) -> Result<()> {
        if let Some(d) = self.dir("cpu", path) {
            cpu::apply(tx, &d, r)?;
        }
        if let Some(d) = self.dir("cpuset", path) {
            cpuset::apply(tx, &d, r)?;
        }
        if let Some(d) = self.dir("memory", path) {
            memory::apply(tx, &d, r)?;
        }
        if let Some(d) = self.dir("pids", path) {
            pids::apply(tx, &d, r.pids_limit)?;
        }
        if !r.hugepage_limits.is_empty() {
            match self.dir("hugetlb", path) {
                Some(d) if self.layout.on_unified("hugetlb") => {
                    // Hybrid host with hugetlb on cgroup2: enabled along the path only when a limit needs it.
                    if let Some(root) = &self.layout.unified {
                        let v2 = crate::v2::V2 {
                            root,
                            controllers: &self.layout.unified_controllers,
                        };
                        v2.enable_along(path, &["hugetlb"])?;
                    }
                    hugetlb::apply(tx, &d, &r.hugepage_limits, hugetlb::V2_LIMIT)?
                }
                Some(d) => hugetlb::apply(tx, &d, &r.hugepage_limits, hugetlb::V1_LIMIT)?,
                None => tracing::warn!(path = %path.as_str(), "no hugetlb controller: hugepage limits ignored"),
            }
        }
        Ok(())
    }

    /// The device allow-list of a new container cgroup.
    pub fn apply_devices(&self, path: &CgroupPath, r: &LinuxResources) -> Result<()> {
        match self.dir("devices", path) {
            Some(d) => devices::apply(&d, &r.devices),
            None => Ok(()),
        }
    }

    pub fn stats(&self, path: &CgroupPath, s: &mut CgroupStats) -> Result<()> {
        if let Some(d) = self.dir("cpuacct", path) {
            s.cpu_usage_ns = cpuacct::usage_ns(&d)?;
        }
        if let Some(d) = self.dir("memory", path) {
            memory::stats(&d, s)?;
        }
        if let Some(d) = self.dir("pids", path) {
            s.pids = pids::current(&d)?;
        }
        Ok(())
    }

    pub fn oom_kills(&self, path: &CgroupPath) -> Result<u64> {
        match self.dir("memory", path) {
            Some(d) => memory::oom_kills(&d),
            None => Ok(0),
        }
    }

    /// Freezes the cgroup (when there is a freezer), SIGKILLs `pids`, thaws so the signals are delivered.
    pub fn kill(&self, path: &CgroupPath, pids: &[i32]) -> Result<()> {
        let freezer = self.dir("freezer", path).filter(|d| d.exists());
        if let Some(d) = &freezer
            && let Err(e) = freezer::freeze(d)
        {
            tracing::warn!(dir = %d.display(), error = %e, "cannot freeze before killing");
        }
        crate::kill::sigkill(pids);
        if let Some(d) = &freezer {
            freezer::thaw(d)?;
        }
        Ok(())
    }
}
