//! v1 `devices`: deny everything, then allow the default devices every container gets (runc's and containerd's
//! list) and the container's own. Only at creation: the CRI never updates devices.

use std::path::Path;

use berth_core::plugin::resources::DeviceRule;

use crate::devices::with_defaults;
use crate::error::Result;
use crate::file::write;

/// The line for `devices.allow` / `devices.deny`: `c 1:3 rwm`, `a` for everything.
pub fn rule_line(kind: char, major: Option<i64>, minor: Option<i64>, access: &str) -> String {
    if kind == 'a' {
        return "a".into();
    }
    let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
    format!("{kind} {}:{} {access}", n(major), n(minor))
}

pub fn apply(dir: &Path, extra: &[DeviceRule]) -> Result<()> {
    write(dir, "devices.deny", "a")?;
    for d in with_defaults(extra) {
        let file = if d.allow { "devices.allow" } else { "devices.deny" };
        write(dir, file, &rule_line(d.kind, d.major, d.minor, &d.access))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(rule_line('c', Some(1), Some(3), "rwm"), "c 1:3 rwm");
        assert_eq!(rule_line('c', Some(136), None, "rwm"), "c 136:* rwm");
        assert_eq!(rule_line('b', None, None, "m"), "b *:* m");
        assert_eq!(rule_line('a', None, None, "rwm"), "a");
    }
}
