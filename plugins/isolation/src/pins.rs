//! Pinned pod namespaces: `<state>/netns|ipcns|utsns/<pod-id>`, each a bind mount of a namespace file, created
//! by a throwaway thread (never a tokio worker: unshare changes the calling thread). With its own IPC namespace,
//! the pod also gets its /dev/shm: a tmpfs at `<state>/pods/<pod-id>/shm` that every container of the pod
//! bind-mounts (containerd's sandbox shm), so they share POSIX shared memory as they share SysV IPC.

use std::path::{Path, PathBuf};

use berth_core::plugin::isolation::PodIsolation;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("pinning thread panicked")]
    Thread,
}

/// Where a pod's pin of one namespace kind lives (`netns`, `ipcns`, `utsns`).
pub fn pin_path(state: &Path, kind: &str, pod_id: &str) -> PathBuf {
    state.join(kind).join(pod_id)
}

/// Size of the pod's /dev/shm, containerd's and Docker's default.
const SHM_SIZE_KIB: u64 = 64 * 1024;

/// Where the pod's shared /dev/shm tmpfs is mounted.
pub fn shm_path(state: &Path, pod_id: &str) -> PathBuf {
    state.join("pods").join(pod_id).join("shm")
}

fn mount_shm(path: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(path).map_err(|source| PinError::Io {
        what: "creating",
        path: path.to_path_buf(),
        source,
    })?;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={SHM_SIZE_KIB}k").as_str()),
    )
    .map_err(|source| PinError::Sys {
        what: format!("mounting the pod's /dev/shm tmpfs on {}", path.display()),
        source,
    })
}

const KINDS: [(&str, &str, CloneFlags); 3] = [
    ("netns", "net", CloneFlags::CLONE_NEWNET),
    ("ipcns", "ipc", CloneFlags::CLONE_NEWIPC),
    ("utsns", "uts", CloneFlags::CLONE_NEWUTS),
];

/// Creates the pod's net/ipc/uts namespaces (those not shared with the host), sets the hostname and sysctls in
/// them and pins them; mounts the pod's /dev/shm when it has its own IPC namespace. Returns the pin paths (net,
/// ipc, uts) and the /dev/shm directory.
pub fn pin(state: &Path, pod: &PodIsolation) -> Result<([Option<PathBuf>; 3], Option<PathBuf>), PinError> {
    let paths = pin_namespaces(state, pod)?;
    if pod.host_ipc {
        return Ok((paths, None));
    }
    let shm = shm_path(state, &pod.pod_id);
    if let Err(e) = mount_shm(&shm) {
        unpin(state, &pod.pod_id);
        return Err(e);
    }
    Ok((paths, Some(shm)))
}

fn pin_namespaces(state: &Path, pod: &PodIsolation) -> Result<[Option<PathBuf>; 3], PinError> {
    let wanted = [!pod.host_network, !pod.host_ipc, !pod.host_uts];
    let mut paths: [Option<PathBuf>; 3] = Default::default();
    let mut flags = CloneFlags::empty();
    for (i, (dir, _, flag)) in KINDS.iter().enumerate() {
        if !wanted[i] {
            continue;
        }
        let path = pin_path(state, dir, &pod.pod_id);
        let parent = path.parent().unwrap_or(state);
        std::fs::create_dir_all(parent).map_err(|source| PinError::Io {
            what: "creating",
            path: parent.to_path_buf(),
            source,
        })?;
        std::fs::File::create(&path).map_err(|source| PinError::Io {
            what: "creating",
            path: path.clone(),
            source,
        })?;
        flags |= *flag;
        paths[i] = Some(path);
    }
    if flags.is_empty() {
        return Ok(paths);
    }
    let hostname = (!pod.host_uts && !pod.hostname.is_empty()).then(|| pod.hostname.clone());
    let sysctls = pod.sysctls.clone();
    let targets = paths.clone();
    let result = std::thread::spawn(move || -> Result<(), PinError> {
        unshare(flags).map_err(|source| PinError::Sys {
            what: "unshare".into(),
            source,
        })?;
        if let Some(h) = hostname {
            nix::unistd::sethostname(&h).map_err(|source| PinError::Sys {
                what: "sethostname".into(),
                source,
            })?;
        }
        for (key, value) in &sysctls {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|source| PinError::Io {
                what: "writing sysctl",
                path,
                source,
            })?;
        }
        for (i, (_, proc_name, _)) in KINDS.iter().enumerate() {
            if let Some(target) = &targets[i] {
                let source = format!("/proc/thread-self/ns/{proc_name}");
                mount(
                    Some(source.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| PinError::Sys {
                    what: format!("bind-mounting {source} on {}", target.display()),
                    source: e,
                })?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| PinError::Thread)?;
    if let Err(e) = result {
        unpin(state, &pod.pod_id);
        return Err(e);
    }
    Ok(paths)
}

/// Unmounts and removes the pod's pins and /dev/shm; idempotent, ignores what is not there. The containers'
/// binds of the shm keep its tmpfs alive until they are gone (MNT_DETACH).
pub fn unpin(state: &Path, pod_id: &str) {
    for (dir, _, _) in KINDS {
        let path = pin_path(state, dir, pod_id);
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
    let shm = shm_path(state, pod_id);
    let _ = umount2(&shm, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&shm);
}
