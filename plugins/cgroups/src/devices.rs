//! The device rules every container gets, for both backends: v1 writes them to `devices.allow`, v2 compiles
//! them into an eBPF program ([`crate::v2::devices`]).

use berth_core::plugin::resources::DeviceRule;

/// runc's and containerd's default allow list: `(type, major, minor, access)`; `None` is `*`.
pub const DEFAULT_ALLOWED: &[(char, Option<i64>, Option<i64>, &str)] = &[
    ('c', None, None, "m"),
    ('b', None, None, "m"),
    ('c', Some(1), Some(3), "rwm"),    // /dev/null
    ('c', Some(1), Some(5), "rwm"),    // /dev/zero
    ('c', Some(1), Some(7), "rwm"),    // /dev/full
    ('c', Some(1), Some(8), "rwm"),    // /dev/random
    ('c', Some(1), Some(9), "rwm"),    // /dev/urandom
    ('c', Some(5), Some(0), "rwm"),    // /dev/tty
    ('c', Some(5), Some(1), "rwm"),    // /dev/console
    ('c', Some(5), Some(2), "rwm"),    // /dev/ptmx
    ('c', Some(136), None, "rwm"),     // /dev/pts/*
    ('c', Some(10), Some(200), "rwm"), // /dev/net/tun
];

/// The default allows followed by the container's own rules, in the order they take effect (a later rule
/// overrides an earlier one it overlaps, as the v1 files behave for the cases the CRI produces).
pub fn with_defaults(extra: &[DeviceRule]) -> Vec<DeviceRule> {
    DEFAULT_ALLOWED
        .iter()
        .map(|&(kind, major, minor, access)| DeviceRule {
            allow: true,
            kind,
            major,
            minor,
            access: access.into(),
        })
        .chain(extra.iter().cloned())
        .collect()
}
