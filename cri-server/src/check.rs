//! `berthd check`: one line per host feature berth uses, with ok/missing and a hint.

use std::path::Path;

use berth_core::Config;

/// One checked item.
pub struct Item {
    pub name: String,
    pub ok: bool,
    pub required: bool,
    pub detail: String,
}

fn item(name: &str, ok: bool, required: bool, detail: impl Into<String>) -> Item {
    Item {
        name: name.into(),
        ok,
        required,
        detail: detail.into(),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn on_path(bin: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Bit `cap` of the effective capability set of this process.
fn has_cap(cap: u32) -> bool {
    let status = read("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// The cgroup layout as `(mode, controllers)`.
pub fn cgroup_mode() -> (&'static str, Vec<String>) {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let c = read("/sys/fs/cgroup/cgroup.controllers");
        return ("v2", c.split_whitespace().map(String::from).collect());
    }
    // v1: the controllers with a hierarchy (column 2 non-zero) in /proc/cgroups.
    let controllers: Vec<String> = read("/proc/cgroups")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[1] != "0" && f[3] == "1").then(|| f[0].to_string())
        })
        .collect();
    let mode = if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "hybrid"
    } else {
        "v1"
    };
    (mode, controllers)
}

pub fn run_checks(config: &Config) -> Vec<Item> {
    let mut items = Vec::new();
    let release = read("/proc/sys/kernel/osrelease").trim().to_string();
    let major_minor: Vec<u32> = release
        .split(['.', '-'])
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    let kernel_ok = major_minor.len() == 2 && (major_minor[0], major_minor[1]) >= (5, 4);
    items.push(item(
        "kernel",
        kernel_ok,
        true,
        format!("{release} (berth needs 5.4 or newer)"),
    ));
    items.push(item(
        "root",
        nix::unistd::geteuid().is_root(),
        true,
        "berthd runs as root",
    ));
    items.push(item(
        "CAP_SYS_ADMIN",
        has_cap(CAP_SYS_ADMIN),
        true,
        "needed for mounts, namespaces, pivot_root",
    ));
    let overlay = read("/proc/filesystems")
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"));
    items.push(item(
        "overlayfs",
        overlay,
        config.plugins.snapshotter == "overlayfs",
        if overlay {
            "available"
        } else {
            "not in /proc/filesystems: `modprobe overlay`, or use snapshotter = \"native\""
        },
    ));
    for ns in ["mnt", "uts", "ipc", "pid", "net", "cgroup"] {
        let ok = Path::new(&format!("/proc/self/ns/{ns}")).exists();
        items.push(item(&format!("{ns} namespace"), ok, true, "kernel namespace support"));
    }
    let max_userns = read("/proc/sys/user/max_user_namespaces")
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    items.push(item(
        "user namespaces",
        max_userns > 0,
        false,
        format!("max_user_namespaces = {max_userns} (needed only for pods with user namespaces)"),
    ));
    let (mode, controllers) = cgroup_mode();
    let needed = ["cpu", "memory", "pids"];
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !controllers.iter().any(|x| x == c))
        .collect();
    items.push(item(
        "cgroups",
        missing.is_empty(),
        true,
        format!(
            "{mode}; controllers: {}{}",
            controllers.join(" "),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(" "))
            }
        ),
    ));
    let seccomp = read("/proc/self/status").lines().any(|l| l.starts_with("Seccomp:"));
    items.push(item("seccomp", seccomp, true, "kernel seccomp filter support"));
    items.push(item(
        "pivot_root",
        has_cap(CAP_SYS_ADMIN) && Path::new("/proc/self/ns/mnt").exists(),
        true,
        "mount namespaces and CAP_SYS_ADMIN",
    ));
    let sys_resource = has_cap(CAP_SYS_RESOURCE);
    items.push(item(
        "CAP_SYS_RESOURCE",
        sys_resource,
        false,
        if sys_resource {
            "oom_score_adj can be lowered"
        } else {
            "missing: oom_score_adj is clamped to berth's own (isolation.restrict_oom_score_adj = auto)"
        },
    ));
    let nft = on_path("nft");
    let ipt = on_path("iptables");
    items.push(item(
        "nftables/iptables",
        nft.is_some() || ipt.is_some(),
        config.plugins.network == "bridge",
        match (&nft, &ipt) {
            (Some(n), _) => format!("nft at {n}"),
            (None, Some(i)) => format!("iptables at {i}"),
            (None, None) => "neither nft nor iptables: install the nftables package".into(),
        },
    ));
    items.extend(forwarding_items(config, &read));
    let cni_dir = config.cni.bin_dirs.iter().find(|d| d.join("bridge").is_file());
    items.push(item(
        "CNI bin dir",
        cni_dir.is_some(),
        config.plugins.network == "cni",
        match cni_dir {
            Some(d) => format!("{}", d.display()),
            None => format!(
                "no CNI plugins in {:?}: install containernetworking-plugins (needed only with network = \"cni\")",
                config.cni.bin_dirs
            ),
        },
    ));
    items
}

/// IPv4 (and, with an IPv6 pod CIDR, IPv6) forwarding: pod egress and hostPorts reached from other hosts
/// need it. The bridge plugin turns it on when it creates its bridge; CNI plugins (bridge with
/// `isGateway`) do too. Not required, but a host that turns it off again breaks pods, so say so.
fn forwarding_items(config: &Config, read: &dyn Fn(&str) -> String) -> Vec<Item> {
    let mut sysctls = vec![("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward")];
    if config.plugins.network == "bridge" && !config.bridge.cidr_v6.trim().is_empty() {
        sysctls.push(("IPv6 forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"));
    }
    let who = if config.plugins.network == "bridge" {
        "berth sets it to 1 when it creates its bridge"
    } else {
        "the CNI plugins are expected to set it"
    };
    sysctls
        .into_iter()
        .map(|(name, path)| {
            let value = read(path).trim().to_string();
            let on = value == "1";
            let detail = if on {
                format!("{path} = 1")
            } else {
                format!("{path} = {value:?}: {who}; pod egress and hostPorts from other hosts need it")
            };
            item(name, on, false, detail)
        })
        .collect()
}

/// Prints the report; returns whether every required item is ok.
pub fn print_report(items: &[Item]) -> bool {
    let mut all_ok = true;
    for i in items {
        let status = match (i.ok, i.required) {
            (true, _) => "ok",
            (false, true) => "MISSING",
            (false, false) => "missing",
        };
        all_ok &= i.ok || !i.required;
        println!("{status:<8} {:<18} {}", i.name, i.detail);
    }
    all_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_is_reported_from_the_sysctls_and_v6_only_with_a_v6_cidr() {
        let mut config = Config::default();
        let off = |_: &str| "0\n".to_string();
        let items = forwarding_items(&config, &off);
        assert_eq!(items.len(), 1);
        assert!(!items[0].ok && !items[0].required, "{}", items[0].detail);
        assert!(items[0].detail.contains("berth sets it"), "{}", items[0].detail);
        config.bridge.cidr_v6 = "fd00:88::/64".into();
        let on = |_: &str| "1\n".to_string();
        let items = forwarding_items(&config, &on);
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.ok), "{}", items[1].detail);
        config.plugins.network = "cni".into();
        let items = forwarding_items(&config, &off);
        assert_eq!(items.len(), 1);
        assert!(items[0].detail.contains("CNI plugins"), "{}", items[0].detail);
    }
}
