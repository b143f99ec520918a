//! Capabilities: containerd's default set, CRI add/drop (with `ALL`), ambient adds, privileged.
//!
//! The sets are kept as bit masks indexed by the kernel's capability numbers, so "all capabilities" can mean
//! "all the running kernel knows" (`cap_last_cap`), and the bounding mask can be handed to the seccomp
//! profile builder as is.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use crate::api;
use crate::error::{CriError, CriResult};

/// The kernel's capabilities by number (Linux 6.x: 0–40), as `(name without CAP_, oci-spec value)`.
const BY_NUMBER: [(&str, Capability); 41] = [
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("KILL", Capability::Kill),
    ("SETGID", Capability::Setgid),
    ("SETUID", Capability::Setuid),
    ("SETPCAP", Capability::Setpcap),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_RAW", Capability::NetRaw),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("MKNOD", Capability::Mknod),
    ("LEASE", Capability::Lease),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("SETFCAP", Capability::Setfcap),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("AUDIT_READ", Capability::AuditRead),
    ("PERFMON", Capability::Perfmon),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
];

/// The highest capability number berth knows.
pub const LAST_KNOWN_CAP: u32 = BY_NUMBER.len() as u32 - 1;

/// containerd's (1.x and 2.x CRI) default set; CRI-O's is smaller (no MKNOD, NET_RAW, SETFCAP, SYS_CHROOT,
/// AUDIT_WRITE). Kubernetes workloads are written against containerd's, so berth follows it.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The kernel number of a capability named with or without `CAP_`, in any case.
pub fn number(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    BY_NUMBER.iter().position(|(n, _)| *n == bare).map(|i| i as u32)
}

/// The five capability sets as bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    fn set_bep(&mut self, mask: u64) {
        self.bounding = mask;
        self.effective = mask;
        self.permitted = mask;
    }

    fn add_bep(&mut self, mask: u64) {
        self.bounding |= mask;
        self.effective |= mask;
        self.permitted |= mask;
    }

    fn drop_all(&mut self, mask: u64) {
        self.bounding &= !mask;
        self.effective &= !mask;
        self.permitted &= !mask;
        self.inheritable &= !mask;
        self.ambient &= !mask;
    }

    pub fn to_oci(self) -> CriResult<LinuxCapabilities> {
        LinuxCapabilitiesBuilder::default()
            .bounding(to_set(self.bounding))
            .effective(to_set(self.effective))
            .permitted(to_set(self.permitted))
            .inheritable(to_set(self.inheritable))
            .ambient(to_set(self.ambient))
            .build()
            .map_err(|e| CriError::Internal(format!("building capabilities: {e}")))
    }
}

fn to_set(mask: u64) -> Capabilities {
    BY_NUMBER
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (_, c))| *c)
        .collect()
}

fn all_mask(cap_last_cap: u32) -> u64 {
    let last = cap_last_cap.min(LAST_KNOWN_CAP);
    if last >= 63 { u64::MAX } else { (1u64 << (last + 1)) - 1 }
}

fn mask_of(names: &[&str]) -> u64 {
    names.iter().filter_map(|n| number(n)).fold(0, |m, n| m | (1 << n))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// Checks every name of `caps` (`field` is the message prefix); `ALL` is valid in add and drop lists only.
pub fn validate(caps: &api::Capability, field: &str) -> CriResult<()> {
    let lists = [
        ("add_capabilities", &caps.add_capabilities, true),
        ("drop_capabilities", &caps.drop_capabilities, true),
        ("add_ambient_capabilities", &caps.add_ambient_capabilities, false),
    ];
    for (list, names, all_ok) in lists {
        for (i, name) in names.iter().enumerate() {
            if (all_ok && is_all(name)) || number(name).is_some() {
                continue;
            }
            return Err(CriError::InvalidArgument(format!(
                "{field}.{list}[{i}]: unknown capability {name:?}"
            )));
        }
    }
    Ok(())
}

/// The sets of a container process, the way containerd builds them: defaults in bounding/effective/permitted
/// (inheritable empty since the CVE-2022-24769 fix, ambient empty), then `ALL` adds, `ALL` drops, single adds,
/// single drops; privileged replaces everything with all capabilities. Ambient adds (KEP-2763) go to all five
/// sets (the kernel needs them in permitted and inheritable). Non-root users keep the sets as containerd does:
/// the kernel clears effective/permitted at exec for them unless the file has capabilities.
///
/// "All" is also limited to `bounding`, the daemon's own bounding set (containerd's "all current
/// capabilities"): asking the kernel for a capability the daemon cannot hold fails capset with EPERM.
pub fn compute(caps: Option<&api::Capability>, privileged: bool, cap_last_cap: u32, bounding: u64) -> CapSets {
    let all = all_mask(cap_last_cap) & bounding;
    let mut sets = CapSets::default();
    sets.set_bep(mask_of(&DEFAULT_CAPS) & all);
    if privileged {
        sets.set_bep(all);
        return sets;
    }
    let Some(c) = caps else { return sets };
    if c.add_capabilities.iter().any(|n| is_all(n)) {
        sets.set_bep(all);
    }
    if c.drop_capabilities.iter().any(|n| is_all(n)) {
        sets = CapSets::default();
    }
    let singles = |names: &[String]| -> u64 {
        names
            .iter()
            .filter(|n| !is_all(n))
            .filter_map(|n| number(n))
            .fold(0, |m, n| m | (1 << n))
            & all
    };
    sets.add_bep(singles(&c.add_capabilities));
    let ambient = singles(&c.add_ambient_capabilities);
    sets.add_bep(ambient);
    sets.inheritable |= ambient;
    sets.ambient |= ambient;
    sets.drop_all(singles(&c.drop_capabilities));
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(mask: u64) -> Vec<&'static str> {
        BY_NUMBER
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, (n, _))| *n)
            .collect()
    }

    fn cap(add: &[&str], drop: &[&str], ambient: &[&str]) -> api::Capability {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        api::Capability {
            add_capabilities: v(add),
            drop_capabilities: v(drop),
            add_ambient_capabilities: v(ambient),
        }
    }

    #[test]
    fn numbers_follow_the_kernel() {
        for (name, n) in [
            ("CAP_CHOWN", 0),
            ("chown", 0),
            ("SYS_ADMIN", 21),
            ("cap_sys_admin", 21),
            ("CAP_CHECKPOINT_RESTORE", 40),
            ("AUDIT_WRITE", 29),
            ("BPF", 39),
        ] {
            assert_eq!(number(name), Some(n), "{name}");
        }
        assert_eq!(number("NOPE"), None);
        assert_eq!(number("ALL"), None);
        assert_eq!(number(""), None);
    }

    #[test]
    fn default_set_is_containerds() {
        let s = compute(None, false, LAST_KNOWN_CAP, u64::MAX);
        let mut got = names(s.bounding);
        let mut want: Vec<&str> = DEFAULT_CAPS.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(s.effective, s.bounding);
        assert_eq!(s.permitted, s.bounding);
        assert_eq!(s.inheritable, 0);
        assert_eq!(s.ambient, 0);
    }

    #[test]
    fn add_and_drop_table() {
        let bit = |n: &str| 1u64 << number(n).unwrap();
        let default = mask_of(&DEFAULT_CAPS);
        let all = all_mask(LAST_KNOWN_CAP);
        struct Case {
            name: &'static str,
            caps: api::Capability,
            privileged: bool,
            bounding: u64,
            inheritable: u64,
            ambient: u64,
        }
        let cases = [
            Case {
                name: "add one, CAP_ prefix and lower case accepted",
                caps: cap(&["cap_sys_admin"], &[], &[]),
                privileged: false,
                bounding: default | bit("SYS_ADMIN"),
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "drop one from every set",
                caps: cap(&[], &["NET_RAW", "CAP_MKNOD"], &[]),
                privileged: false,
                bounding: default & !bit("NET_RAW") & !bit("MKNOD"),
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "add ALL",
                caps: cap(&["ALL"], &[], &[]),
                privileged: false,
                bounding: all,
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "add ALL then drop one",
                caps: cap(&["all"], &["CHOWN"], &[]),
                privileged: false,
                bounding: all & !bit("CHOWN"),
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "drop ALL then add some",
                caps: cap(&["NET_BIND_SERVICE", "KILL"], &["ALL"], &[]),
                privileged: false,
                bounding: bit("NET_BIND_SERVICE") | bit("KILL"),
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "add ALL and drop ALL: drop wins, singles still added",
                caps: cap(&["ALL", "SYS_TIME"], &["ALL"], &[]),
                privileged: false,
                bounding: bit("SYS_TIME"),
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "drop beats add of the same capability",
                caps: cap(&["SYS_ADMIN"], &["SYS_ADMIN"], &[]),
                privileged: false,
                bounding: default,
                inheritable: 0,
                ambient: 0,
            },
            Case {
                name: "ambient goes to all five sets",
                caps: cap(&[], &["ALL"], &["NET_BIND_SERVICE"]),
                privileged: false,
                bounding: bit("NET_BIND_SERVICE"),
                inheritable: bit("NET_BIND_SERVICE"),
                ambient: bit("NET_BIND_SERVICE"),
            },
            Case {
                name: "privileged ignores drops",
                caps: cap(&[], &["ALL"], &[]),
                privileged: true,
                bounding: all,
                inheritable: 0,
                ambient: 0,
            },
        ];
        for c in cases {
            let s = compute(Some(&c.caps), c.privileged, LAST_KNOWN_CAP, u64::MAX);
            assert_eq!(names(s.bounding), names(c.bounding), "{}: bounding", c.name);
            assert_eq!(s.effective, s.bounding, "{}: effective", c.name);
            assert_eq!(s.permitted, s.bounding, "{}: permitted", c.name);
            assert_eq!(s.inheritable, c.inheritable, "{}: inheritable", c.name);
            assert_eq!(s.ambient, c.ambient, "{}: ambient", c.name);
        }
    }

    #[test]
    fn all_leaves_out_what_the_daemon_cannot_hold() {
        // This VM's berthd lacks CAP_SYS_RESOURCE (24): privileged and ALL must not ask for it.
        let bounding = all_mask(LAST_KNOWN_CAP) & !(1 << 24);
        let s = compute(None, true, LAST_KNOWN_CAP, bounding);
        assert_eq!(s.bounding & (1 << 24), 0);
        assert_ne!(s.bounding & (1 << 21), 0, "CAP_SYS_ADMIN stays");
        let s = compute(Some(&cap(&["ALL"], &[], &[])), false, LAST_KNOWN_CAP, bounding);
        assert_eq!(s.effective & (1 << 24), 0);
    }

    #[test]
    fn all_means_what_the_kernel_knows() {
        let s = compute(None, true, 37, u64::MAX);
        assert_eq!(s.bounding, (1 << 38) - 1);
        assert_eq!(names(s.bounding).last(), Some(&"AUDIT_READ"));
    }

    #[test]
    fn validation_names_the_bad_entry() {
        assert!(validate(&cap(&["ALL", "chown"], &["all"], &["KILL"]), "c").is_ok());
        let e = validate(&cap(&["CHOWN", "FLY"], &[], &[]), "linux.security_context.capabilities").unwrap_err();
        assert_eq!(
            e.to_string(),
            "linux.security_context.capabilities.add_capabilities[1]: unknown capability \"FLY\""
        );
        assert!(
            validate(&cap(&[], &[], &["ALL"]), "c").is_err(),
            "ALL is not an ambient capability"
        );
    }

    #[test]
    fn oci_sets_carry_the_names() {
        let s = compute(Some(&cap(&[], &["ALL"], &["KILL"])), false, LAST_KNOWN_CAP, u64::MAX);
        let oci = s.to_oci().unwrap();
        assert_eq!(oci.ambient().as_ref().unwrap().len(), 1);
        assert!(oci.bounding().as_ref().unwrap().contains(&Capability::Kill));
        let json = serde_json::to_string(&oci).unwrap();
        assert!(json.contains("CAP_KILL"), "{json}");
    }
}
