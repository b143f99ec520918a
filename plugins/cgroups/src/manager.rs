//! [`Cgroupfs`]: pod and container cgroups over the detected hierarchies, v1 and v2 behind one enum. Plain
//! synchronous code over a root given at construction; the plugin wrapper (`plugin.rs`) runs it off the async
//! threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_core::plugin::resources::{CgroupMode, CgroupPath, CgroupStats, LinuxResources};

use crate::detect::Layout;
use crate::error::{CgroupError, Result};
use crate::file::Tx;
use crate::path::{self as cgpath, dir_in};
use crate::v1::V1;
use crate::v2::V2;
use crate::{limits, tree};

/// The v2 leaf of a pod's own processes ([`Cgroupfs::infra_path`]); container ids are 64 hex digits, so it
/// never names a container.
pub const INFRA_LEAF: &str = "berth-infra";

/// How long `remove` keeps killing before it gives up on stragglers.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Cgroupfs {
    layout: Layout,
    default_parent: CgroupPath,
    /// Per-container default (config `cgroups.pids_limit`); 0: none.
    pids_default: i64,
    /// The previous CPU sample per cgroup: (unix ns, cpu ns), for nano-cores.
    samples: Mutex<HashMap<CgroupPath, (i64, u64)>>,
}

enum Backend<'a> {
    V1(V1<'a>),
    V2(V2<'a>),
}

impl Cgroupfs {
    pub fn new(layout: Layout, default_parent: &str, pids_default: i64) -> Result<Cgroupfs> {
        Ok(Cgroupfs {
            default_parent: cgpath::parse("cgroups.default_parent", default_parent)?,
            layout,
            pids_default,
            samples: Mutex::new(HashMap::new()),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn default_parent(&self) -> &CgroupPath {
        &self.default_parent
    }

    fn backend(&self) -> Backend<'_> {
        match (&self.layout.mode, &self.layout.unified) {
            (CgroupMode::V2, Some(root)) => Backend::V2(V2 {
                root,
                controllers: &self.layout.unified_controllers,
            }),
            _ => Backend::V1(V1 { layout: &self.layout }),
        }
    }

    /// The directory whose existence says whether the cgroup exists (memory's, or the v2 one).
    fn primary_dir(&self, path: &CgroupPath) -> PathBuf {
        let mount = self
            .layout
            .mount_of("memory")
            .or_else(|| self.layout.mounts().first().copied())
            .expect("a layout has at least one hierarchy");
        dir_in(mount, path)
    }

    fn ensure_exists(&self, path: &CgroupPath) -> Result<()> {
        if self.primary_dir(path).is_dir() {
            Ok(())
        } else {
            Err(CgroupError::NotFound {
                path: path.as_str().to_string(),
            })
        }
    }

    pub fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.layout
            .mounts()
            .into_iter()
            .map(|m| dir_in(m, path).join("cgroup.procs"))
            .collect()
    }

    /// On v2, the leaf under a pod cgroup that holds the pod's own processes (see the trait); the pod cgroup
    /// itself on v1, where each controller's hierarchy allows processes at every level.
    pub fn infra_path(&self, pod: &CgroupPath) -> Result<CgroupPath> {
        match self.backend() {
            Backend::V2(_) => cgpath::child(pod, INFRA_LEAF),
            Backend::V1(_) => Ok(pod.clone()),
        }
    }

    pub fn infra_procs_files(&self, pod: &CgroupPath) -> Vec<PathBuf> {
        match self.infra_path(pod) {
            Ok(p) => self.procs_files(&p),
            Err(_) => self.procs_files(pod),
        }
    }

    pub fn pod_path(&self, pod_id: &str, parent: &str) -> Result<CgroupPath> {
        if parent.is_empty() {
            cgpath::child(&self.default_parent, pod_id)
        } else {
            cgpath::parse("cgroup_parent", parent)
        }
    }

    /// Creates the pod cgroup (see the trait); limits only when this call created it.
    pub fn create_pod(&self, pod_id: &str, parent: &str, r: &LinuxResources) -> Result<CgroupPath> {
        let path = self.pod_path(pod_id, parent)?;
        limits::validate(r, self.layout.mode)?;
        self.create(&path, r, false)?;
        let infra = self.infra_path(&path)?;
        if infra != path {
            // Made after the pod's limits, with none of its own: the pod's shim lives here.
            let rel = infra.as_str().trim_start_matches('/');
            for mount in self.layout.mounts() {
                tree::create(mount, rel)?;
            }
        }
        Ok(path)
    }

    pub fn create_container(&self, pod: &CgroupPath, id: &str, r: &LinuxResources) -> Result<CgroupPath> {
        let path = cgpath::child(pod, id)?;
        limits::validate(r, self.layout.mode)?;
        let mut r = r.clone();
        if r.pids_limit.is_none() && self.pids_default > 0 {
            r.pids_limit = Some(self.pids_default);
        }
        self.create(&path, &r, true)?;
        Ok(path)
    }

    /// Makes `path` in every hierarchy, then the controllers' preparation, then the limits. Any failure undoes
    /// the directories this call made. A cgroup that already existed in the primary hierarchy is adopted: a pod
    /// keeps kubelet's limits; a container (a retry after a crash) gets its limits applied again.
    fn create(&self, path: &CgroupPath, r: &LinuxResources, container: bool) -> Result<()> {
        let existed = self.primary_dir(path).is_dir();
        let rel = path.as_str().trim_start_matches('/');
        let mut created = Vec::new();
        for mount in self.layout.mounts() {
            match tree::create(mount, rel) {
                Ok(c) => created.extend(c),
                Err(e) => {
                    tree::undo(&created);
                    return Err(e);
                }
            }
        }
        let result = (|| {
            match self.backend() {
                Backend::V1(b) => b.prepare(path)?,
                Backend::V2(b) => b.prepare(path)?,
            }
            if existed && !container {
                return Ok(());
            }
            let mut tx = Tx::new();
            let applied = match self.backend() {
                Backend::V1(b) => b
                    .apply(&mut tx, path, r)
                    .and_then(|()| if container { b.apply_devices(path, r) } else { Ok(()) }),
                Backend::V2(b) => b
                    .apply(&mut tx, path, r)
                    .and_then(|()| if container { b.apply_devices(path, r) } else { Ok(()) }),
            };
            if applied.is_err() && existed {
                tx.rollback();
            }
            applied
        })();
        if result.is_err() {
            // Deepest first: `created` lists each mount's levels outermost first.
            tree::undo(&created);
        }
        result
    }

    /// New limits, all or nothing: checked first, then written; a value the kernel refuses restores the ones
    /// written before it.
    pub fn update(&self, path: &CgroupPath, r: &LinuxResources) -> Result<()> {
        limits::validate(r, self.layout.mode)?;
        self.ensure_exists(path)?;
        let mut tx = Tx::new();
        let result = match self.backend() {
            Backend::V1(b) => b.apply(&mut tx, path, r),
            Backend::V2(b) => b.apply(&mut tx, path, r),
        };
        if result.is_err() {
            tx.rollback();
        }
        result
    }

    pub fn stats(&self, path: &CgroupPath) -> Result<CgroupStats> {
        self.ensure_exists(path)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        let mut s = CgroupStats {
            timestamp: now,
            ..Default::default()
        };
        match self.backend() {
            Backend::V1(b) => b.stats(path, &mut s)?,
            Backend::V2(b) => b.stats(path, &mut s)?,
        }
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t0, c0)) = samples.insert(path.clone(), (now, s.cpu_usage_ns)) {
            let (dt, dc) = (now - t0, s.cpu_usage_ns.saturating_sub(c0));
            if dt > 0 {
                s.cpu_usage_nano_cores = (dc as u128 * 1_000_000_000 / dt as u128) as u64;
            }
        }
        Ok(s)
    }

    pub fn oom_kills(&self, path: &CgroupPath) -> Result<u64> {
        self.ensure_exists(path)?;
        match self.backend() {
            Backend::V1(b) => b.oom_kills(path),
            Backend::V2(b) => b.oom_kills(path),
        }
    }

    /// Child cgroup paths of `parent` in any hierarchy.
    pub fn list(&self, parent: &CgroupPath) -> Result<Vec<CgroupPath>> {
        let mut names = Vec::new();
        for m in self.layout.mounts() {
            names.extend(tree::children(&dir_in(m, parent))?);
        }
        names.sort();
        names.dedup();
        names.into_iter().map(|n| cgpath::child(parent, &n)).collect()
    }

    /// Kills every process in `path` and below, then removes the cgroups in every hierarchy; idempotent.
    pub fn remove(&self, path: &CgroupPath) -> Result<()> {
        let dirs: Vec<PathBuf> = self
            .layout
            .mounts()
            .into_iter()
            .map(|m| dir_in(m, path))
            .filter(|d| d.exists())
            .collect();
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let mut pids = Vec::new();
            for d in &dirs {
                pids.extend(tree::pids_recursive(d)?);
            }
            pids.sort_unstable();
            pids.dedup();
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Stragglers {
                    path: path.as_str().to_string(),
                    pids,
                });
            }
            tracing::debug!(path = %path.as_str(), ?pids, "killing processes left in the cgroup");
            match self.backend() {
                Backend::V1(b) => b.kill(path, &pids)?,
                Backend::V2(b) => b.kill(path, &pids)?,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for d in &dirs {
            tree::remove(d)?;
        }
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.retain(|p, _| !(p == path || p.as_str().starts_with(&format!("{}/", path.as_str()))));
        Ok(())
    }

    /// The detection report for `berthd check`.
    pub fn check_lines(&self) -> Vec<String> {
        crate::report::lines(&self.layout, &self.default_parent)
    }
}
