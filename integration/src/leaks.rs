//! What a berthd may leave on the host once every pod and image it had is gone: each check names what it found,
//! so a test asserts on an empty list and prints the leaks when it is not.

use std::path::Path;
use std::process::Command;

use berth_core::store::{Store, Table};

use crate::Berthd;

/// Leaks visible on the host while (or after) this berthd runs with no pods: mounts under its dirs, namespace
/// pins, veths on its bridge, per-pod nft rules, container and pod cgroups, shim processes.
pub fn host_leaks(b: &Berthd) -> Vec<String> {
    let mut leaks = Vec::new();
    let dir = b.dir.path().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if m.starts_with(&dir) {
            leaks.push(format!("mount {m}"));
        }
    }
    // Namespace pins, and the pod and container state dirs (shm mounts, shim sockets, exit files).
    for kind in ["netns", "ipcns", "utsns", "pods", "containers"] {
        for e in read_dir_names(&b.state().join(kind)) {
            leaks.push(format!("{kind}/{e}"));
        }
    }
    for veth in read_dir_names(&Path::new("/sys/class/net").join(&b.bridge).join("brif")) {
        leaks.push(format!("veth {veth} on {}", b.bridge));
    }
    let nft = Command::new("nft")
        .args(["list", "table", "inet", &format!("berth_{}", b.bridge)])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for l in nft.lines().filter(|l| l.contains("dnat to")) {
        leaks.push(format!("nft rule {}", l.trim()));
    }
    for mnt in cgroup_mounts() {
        let parent = Path::new(&mnt).join(b.cgroup_parent.trim_start_matches('/'));
        for e in read_dir_names(&parent) {
            if parent.join(&e).is_dir() {
                leaks.push(format!("cgroup {}/{e}", parent.display()));
            }
        }
    }
    for (pid, cmdline) in shim_processes(&b.state()) {
        leaks.push(format!("shim process {pid}: {cmdline}"));
    }
    leaks
}

/// Leaks in berthd's storage once every image is removed too: content blobs, half-written ingests and snapshot
/// directories.
pub fn storage_leaks(b: &Berthd) -> Vec<String> {
    let mut leaks = Vec::new();
    let root = b.root();
    for sub in ["content/blobs/sha256", "content/ingest"] {
        for e in read_dir_names(&root.join(sub)) {
            leaks.push(format!("{sub}/{e}"));
        }
    }
    for snapshots in find_dirs_named(&root, "snapshots", 3) {
        for e in read_dir_names(&snapshots) {
            leaks.push(format!("snapshot {}/{e}", snapshots.display()));
        }
    }
    leaks
}

/// Records left in the metadata store of a STOPPED berthd (it has one writer): pods, containers, reserved names,
/// IP allocations, intents. Opening it is also the check that it is not corrupt.
pub fn store_leaks(b: &Berthd) -> Vec<String> {
    let store = match Store::open(&b.root().join("meta.redb")) {
        Ok(s) => s,
        Err(e) => return vec![format!("the store does not open: {e}")],
    };
    let mut leaks = Vec::new();
    for (name, table) in [
        ("pod", Table::Pods),
        ("container", Table::Containers),
        ("reserved name", Table::Names),
        ("IP allocation", Table::IpAllocations),
        ("intent", Table::Intents),
    ] {
        match store.list::<serde_json::Value>(table) {
            Ok(rows) => leaks.extend(rows.into_iter().map(|(k, _)| format!("{name} {k}"))),
            Err(e) => leaks.push(format!("listing {name}s: {e}")),
        }
    }
    leaks
}

/// Zombie children of this berthd's shims: a shim must reap everything it inherits.
pub fn zombies_of_shims(b: &Berthd) -> Vec<String> {
    zombies_of(&b.state())
}

/// Zombie children of the shims a berthd started with this state dir.
pub fn zombies_of(state: &Path) -> Vec<String> {
    let shims = shims_of(state);
    let mut zombies = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|s| s.parse::<i32>().ok()));
        if state == Some("Z") && ppid.is_some_and(|pp| shims.contains(&pp)) {
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            zombies.push(format!(
                "zombie {} ({comm}) (parent {})",
                p.file_name().to_string_lossy(),
                ppid.unwrap_or(0)
            ));
        }
    }
    zombies
}

/// The pids of the shims a berthd started with this state dir.
pub fn shims_of(state: &Path) -> Vec<i32> {
    shim_processes(state).into_iter().map(|(pid, _)| pid).collect()
}

/// The shims a berthd started with this state dir, with their command lines.
pub fn shim_processes(state: &Path) -> Vec<(i32, String)> {
    let needle = state.display().to_string();
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        // berthd itself takes `--state` too; a shim names itself by its argv[0].
        let is_shim = args.first().is_some_and(|a0| a0.ends_with(b"berth-shim"));
        if is_shim && args.windows(2).any(|w| w[0] == b"--state" && w[1] == needle.as_bytes()) {
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

fn cgroup_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| f[1].to_string())
        })
        .collect()
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn find_dirs_named(root: &Path, name: &str, depth: usize) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        if !p.is_dir() || p.is_symlink() {
            continue;
        }
        if e.file_name() == name {
            found.push(p);
        } else if depth > 1 {
            found.extend(find_dirs_named(&p, name, depth - 1));
        }
    }
    found
}
