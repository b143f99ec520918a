//! Seccomp, AppArmor and SELinux choices, masked and read-only paths.
//!
//! This host has no AppArmor and no SELinux: "no profile", `RuntimeDefault` and `Unconfined` are accepted (and
//! mean nothing), a `Localhost` AppArmor profile is refused, SELinux options are ignored (as containerd and
//! CRI-O do with SELinux disabled).

use std::path::PathBuf;

use crate::api::{SecurityProfile, security_profile::ProfileType};
use crate::error::{CriError, CriResult};

/// runc's and containerd's masked paths.
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's and containerd's read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A profile choice after the deprecated string forms are folded in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// No profile named at all.
    Unset,
    RuntimeDefault,
    Unconfined,
    /// A seccomp profile file (absolute path) or an AppArmor profile name.
    Localhost(String),
}

/// The profile a `SecurityProfile` (or, when absent, the deprecated `*_profile_path` string) asks for.
/// Strings: `runtime/default`, `docker/default`, `unconfined`, `localhost/<ref>`, empty = unset.
pub fn profile(p: Option<&SecurityProfile>, deprecated: &str, field: &str) -> CriResult<Profile> {
    let Some(p) = p else {
        return match deprecated {
            "" => Ok(Profile::Unset),
            "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
            "unconfined" => Ok(Profile::Unconfined),
            s => match s.strip_prefix("localhost/") {
                Some(r) if !r.is_empty() => Ok(Profile::Localhost(r.to_string())),
                _ => Err(CriError::InvalidArgument(format!(
                    "{field}: profile {s:?} is not runtime/default, docker/default, unconfined or localhost/<ref>"
                ))),
            },
        };
    };
    let kind = ProfileType::try_from(p.profile_type)
        .map_err(|_| CriError::InvalidArgument(format!("{field}.profile_type {} is unknown", p.profile_type)))?;
    if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
        return Err(CriError::InvalidArgument(format!(
            "{field}.localhost_ref must only be set with profile_type Localhost"
        )));
    }
    Ok(match kind {
        ProfileType::RuntimeDefault => Profile::RuntimeDefault,
        ProfileType::Unconfined => Profile::Unconfined,
        ProfileType::Localhost => {
            // containerd trims the prefix "just in case"; kubelet never sends it.
            let r = p.localhost_ref.strip_prefix("localhost/").unwrap_or(&p.localhost_ref);
            if r.is_empty() {
                return Err(CriError::InvalidArgument(format!(
                    "{field}.localhost_ref must be set for Localhost"
                )));
            }
            Profile::Localhost(r.to_string())
        }
    })
}

/// What seccomp filter the container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeccompProfile {
    RuntimeDefault,
    /// A profile file on the host, Docker or OCI JSON.
    Localhost(PathBuf),
}

/// The seccomp profile to load, `None` for no filter. Unset means unconfined (the CRI default; kubelet sends
/// RuntimeDefault itself when SeccompDefault is on); privileged containers get no filter.
pub fn seccomp(p: Option<&SecurityProfile>, deprecated: &str, privileged: bool) -> CriResult<Option<SeccompProfile>> {
    let choice = profile(p, deprecated, "linux.security_context.seccomp")?;
    if let Profile::Localhost(path) = &choice
        && !path.starts_with('/')
    {
        return Err(CriError::InvalidArgument(format!(
            "linux.security_context.seccomp.localhost_ref must be an absolute path, got {path:?}"
        )));
    }
    if privileged {
        return Ok(None);
    }
    Ok(match choice {
        Profile::Unset | Profile::Unconfined => None,
        Profile::RuntimeDefault => Some(SeccompProfile::RuntimeDefault),
        Profile::Localhost(path) => Some(SeccompProfile::Localhost(PathBuf::from(path))),
    })
}

/// AppArmor on a host without it: only "nothing", `RuntimeDefault` (= nothing, as the CRI says of
/// `runtime/default`) and `Unconfined` can be honoured.
pub fn apparmor(p: Option<&SecurityProfile>, deprecated: &str, field: &str) -> CriResult<()> {
    match profile(p, deprecated, field)? {
        Profile::Unset | Profile::RuntimeDefault | Profile::Unconfined => Ok(()),
        Profile::Localhost(name) => Err(CriError::FailedPrecondition(format!(
            "{field}: AppArmor profile {name:?} cannot be applied: AppArmor is not enabled on this host"
        ))),
    }
}

/// Masked and read-only paths: none for privileged containers; the CRI lists when given (kubelet always
/// sends them for the Default proc mount); runc's defaults otherwise. Berth applies the defaults to an empty
/// list where containerd applies nothing: an empty list is also what crictl sends, and the `Unmasked` proc
/// mount that would want it needs user namespaces, which berth does not offer.
pub fn paths(masked: &[String], readonly: &[String], privileged: bool) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |given: &[String], default: &[&str]| -> Vec<String> {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    (
        pick(masked, &DEFAULT_MASKED_PATHS),
        pick(readonly, &DEFAULT_READONLY_PATHS),
    )
}

/// Checks masked / read-only path lists.
pub fn validate_paths(list: &[String], field: &str) -> CriResult<()> {
    match list.iter().position(|p| !p.starts_with('/') || p.contains('\0')) {
        Some(i) => Err(CriError::InvalidArgument(format!(
            "{field}[{i}] must be an absolute path, got {:?}",
            list[i]
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(t: ProfileType, r: &str) -> SecurityProfile {
        SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn seccomp_table() {
        use SeccompProfile::*;
        let ok = |p: Option<SecurityProfile>, s: &str, privileged: bool| seccomp(p.as_ref(), s, privileged).unwrap();
        let err = |p: Option<SecurityProfile>, s: &str| seccomp(p.as_ref(), s, false).unwrap_err().to_string();
        assert_eq!(ok(None, "", false), None, "unset is unconfined");
        assert_eq!(
            ok(Some(sp(ProfileType::RuntimeDefault, "")), "", false),
            Some(RuntimeDefault)
        );
        assert_eq!(
            ok(Some(sp(ProfileType::Unconfined, "")), "runtime/default", false),
            None,
            "field beats string"
        );
        assert_eq!(
            ok(Some(sp(ProfileType::Localhost, "/etc/p.json")), "", false),
            Some(Localhost("/etc/p.json".into()))
        );
        assert_eq!(
            ok(Some(sp(ProfileType::Localhost, "localhost//etc/p.json")), "", false),
            Some(Localhost("/etc/p.json".into()))
        );
        assert_eq!(ok(None, "runtime/default", false), Some(RuntimeDefault));
        assert_eq!(ok(None, "docker/default", false), Some(RuntimeDefault));
        assert_eq!(ok(None, "unconfined", false), None);
        assert_eq!(
            ok(None, "localhost//var/lib/p.json", false),
            Some(Localhost("/var/lib/p.json".into()))
        );
        assert_eq!(
            ok(Some(sp(ProfileType::RuntimeDefault, "")), "", true),
            None,
            "privileged: no filter"
        );
        assert_eq!(
            err(None, "bogus"),
            "linux.security_context.seccomp: profile \"bogus\" is not runtime/default, docker/default, unconfined or localhost/<ref>"
        );
        assert_eq!(
            err(Some(sp(ProfileType::Localhost, "")), ""),
            "linux.security_context.seccomp.localhost_ref must be set for Localhost"
        );
        assert_eq!(
            err(Some(sp(ProfileType::Localhost, "rel.json")), ""),
            "linux.security_context.seccomp.localhost_ref must be an absolute path, got \"rel.json\""
        );
        assert_eq!(
            err(Some(sp(ProfileType::RuntimeDefault, "/x")), ""),
            "linux.security_context.seccomp.localhost_ref must only be set with profile_type Localhost"
        );
        assert_eq!(
            err(
                Some(SecurityProfile {
                    profile_type: 9,
                    localhost_ref: String::new()
                }),
                ""
            ),
            "linux.security_context.seccomp.profile_type 9 is unknown"
        );
    }

    #[test]
    fn apparmor_table() {
        let f = "linux.security_context.apparmor";
        assert!(apparmor(None, "", f).is_ok());
        assert!(apparmor(None, "runtime/default", f).is_ok());
        assert!(apparmor(None, "unconfined", f).is_ok());
        assert!(apparmor(Some(&sp(ProfileType::RuntimeDefault, "")), "", f).is_ok());
        assert!(apparmor(Some(&sp(ProfileType::Unconfined, "")), "", f).is_ok());
        let e = apparmor(Some(&sp(ProfileType::Localhost, "k8s-deny-write")), "", f).unwrap_err();
        assert!(matches!(e, CriError::FailedPrecondition(_)), "{e}");
        assert!(e.to_string().contains("\"k8s-deny-write\""), "{e}");
        let e = apparmor(None, "localhost/foo", f).unwrap_err();
        assert!(matches!(e, CriError::FailedPrecondition(_)), "{e}");
        assert!(matches!(
            apparmor(None, "nope", f).unwrap_err(),
            CriError::InvalidArgument(_)
        ));
    }

    #[test]
    fn paths_table() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (m, r) = paths(&[], &[], false);
        assert_eq!(m.len(), 11);
        assert!(m.contains(&"/proc/kcore".to_string()) && m.contains(&"/sys/devices/virtual/powercap".to_string()));
        assert_eq!(r, v(&DEFAULT_READONLY_PATHS));
        let (m, r) = paths(&v(&["/proc/x"]), &v(&["/proc/y"]), false);
        assert_eq!((m, r), (v(&["/proc/x"]), v(&["/proc/y"])));
        let (m, r) = paths(&v(&["/proc/x"]), &[], true);
        assert!(m.is_empty() && r.is_empty());
        assert!(
            validate_paths(&v(&["/a", "b"]), "masked_paths")
                .unwrap_err()
                .to_string()
                .contains("masked_paths[1]")
        );
    }
}
