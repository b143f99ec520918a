//! The process: argv from CRI command/args and the image's Entrypoint/Cmd, the environment, the working
//! directory, and the stop signal.

use crate::api::{self, Signal};
use crate::error::{CriError, CriResult};

/// PATH when neither the image nor the CRI config sets one (containerd's `oci.WithDefaultPathEnv`).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// argv the way kubelet expects it (Docker's rules, as containerd's `WithProcessArgs`):
/// - CRI `command` set: it replaces the image Entrypoint, and the image Cmd is dropped; CRI `args` follow it;
/// - else CRI `args` set: image Entrypoint + CRI `args`;
/// - else image Entrypoint + image Cmd. An Entrypoint of exactly `[""]` counts as none.
pub fn argv(command: &[String], args: &[String], entrypoint: &[String], cmd: &[String]) -> CriResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    if command.is_empty() {
        if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
            out.extend(entrypoint.iter().cloned());
        }
        out.extend(if args.is_empty() { cmd } else { args }.iter().cloned());
    } else {
        out.extend(command.iter().cloned());
        out.extend(args.iter().cloned());
    }
    if out.is_empty() {
        return Err(CriError::InvalidArgument(
            "no command specified: the config has no command or args and the image no Entrypoint or Cmd".into(),
        ));
    }
    Ok(out)
}

fn key_of(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Sets or replaces `overrides` in `base`, in place, keeping first-seen order; an override without `=`
/// unsets the key (containerd's `replaceOrAppendEnvValues`).
fn merge_env(base: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    for entry in overrides {
        let key = key_of(&entry).to_string();
        let pos = base.iter().position(|e| key_of(e) == key);
        match (entry.contains('='), pos) {
            (true, Some(i)) => base[i] = entry,
            (true, None) => base.push(entry),
            (false, Some(i)) => {
                base.remove(i);
            }
            (false, None) => {}
        }
    }
}

/// The environment, in containerd's order: default PATH, `HOSTNAME`, the image's Env, the CRI envs (later
/// entries replace earlier ones with the same key), then `HOME` from the image's /etc/passwd if nothing set
/// it (runc does that at exec; berth's shim does not, so the spec carries it).
pub fn env(hostname: &str, image_env: &[String], cri_envs: &[api::KeyValue], home: Option<&str>) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    merge_env(&mut env, [format!("HOSTNAME={hostname}")]);
    merge_env(&mut env, image_env.iter().cloned());
    merge_env(&mut env, cri_envs.iter().map(|kv| format!("{}={}", kv.key, kv.value)));
    if !env.iter().any(|e| key_of(e) == "HOME") {
        env.push(format!("HOME={}", home.unwrap_or("/")));
    }
    env
}

/// CRI `working_dir`, else the image's WorkingDir (made absolute), else `/`.
pub fn cwd(cri: &str, image: &str) -> String {
    if !cri.is_empty() {
        return cri.to_string();
    }
    match image.trim() {
        "" => "/".to_string(),
        dir if dir.starts_with('/') => dir.to_string(),
        dir => format!("/{dir}"),
    }
}

/// Linux (x86, arm, generic ABI) signal numbers by name without `SIG`; real-time signals as glibc numbers them
/// (SIGRTMIN = 34, two are reserved by libc).
const SIGNALS: [(&str, i32); 34] = [
    ("ABRT", 6),
    ("ALRM", 14),
    ("BUS", 7),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("FPE", 8),
    ("HUP", 1),
    ("ILL", 4),
    ("INT", 2),
    ("IO", 29),
    ("IOT", 6),
    ("KILL", 9),
    ("PIPE", 13),
    ("POLL", 29),
    ("PROF", 27),
    ("PWR", 30),
    ("QUIT", 3),
    ("SEGV", 11),
    ("STKFLT", 16),
    ("STOP", 19),
    ("SYS", 31),
    ("TERM", 15),
    ("TRAP", 5),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("USR1", 10),
    ("USR2", 12),
    ("VTALRM", 26),
    ("WINCH", 28),
    ("XCPU", 24),
    ("XFSZ", 25),
];
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal named like Docker's `StopSignal`: `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-1`.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Some(n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let off: i32 = if rest.is_empty() { 0 } else { rest.parse().ok()? };
        let n = base + sign * off;
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(off) => rt(SIGRTMIN, off, 1),
            None if rest.is_empty() => Some(SIGRTMIN),
            None => None,
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(off) => rt(SIGRTMAX, off, -1),
            None if rest.is_empty() => Some(SIGRTMAX),
            None => None,
        };
    }
    None
}

/// The stop signal: the CRI `stop_signal` when set, else the image's `StopSignal`, else `None` (SIGTERM). An
/// unparsable image StopSignal is ignored (it is the image author's mistake, not the caller's).
pub fn stop_signal(cri: i32, image: Option<&str>) -> CriResult<Option<i32>> {
    let sig = Signal::try_from(cri)
        .map_err(|_| CriError::InvalidArgument(format!("stop_signal {cri} is not a known signal")))?;
    match sig as i32 {
        0 => {}
        // SIGRTMIN (35) .. SIGRTMAX (65) in the enum are 34 ..= 64 in glibc's numbering.
        n @ 35..=65 => return Ok(Some(n - 1)),
        _ => return Ok(parse_signal(sig.as_str_name())),
    }
    Ok(image.and_then(parse_signal))
}

/// Rejects what execve(2) and the OCI spec cannot carry.
pub fn validate(cfg: &api::ContainerConfig) -> CriResult<()> {
    let nul = |list: &[String], field: &str| -> CriResult<()> {
        match list.iter().position(|s| s.contains('\0')) {
            Some(i) => Err(CriError::InvalidArgument(format!("{field}[{i}] contains a NUL byte"))),
            None => Ok(()),
        }
    };
    nul(&cfg.command, "command")?;
    nul(&cfg.args, "args")?;
    for (i, kv) in cfg.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') || kv.value.contains('\0') {
            return Err(CriError::InvalidArgument(format!(
                "envs[{i}]: key {:?} must be non-empty without '=' or NUL, value without NUL",
                kv.key
            )));
        }
    }
    if !cfg.working_dir.is_empty() && (!cfg.working_dir.starts_with('/') || cfg.working_dir.contains('\0')) {
        return Err(CriError::InvalidArgument(format!(
            "working_dir {:?} must be an absolute path",
            cfg.working_dir
        )));
    }
    if Signal::try_from(cfg.stop_signal).is_err() {
        return Err(CriError::InvalidArgument(format!(
            "stop_signal {} is not a known signal",
            cfg.stop_signal
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn argv_table() {
        // (name, command, args, entrypoint, cmd, want)
        let cases: [(&str, &[&str], &[&str], &[&str], &[&str], Result<&[&str], ()>); 10] = [
            (
                "image only",
                &[],
                &[],
                &["/ep"],
                &["c1", "c2"],
                Ok(&["/ep", "c1", "c2"]),
            ),
            (
                "image cmd only",
                &[],
                &[],
                &[],
                &["sh", "-c", "x"],
                Ok(&["sh", "-c", "x"]),
            ),
            ("image entrypoint only", &[], &[], &["/ep", "a"], &[], Ok(&["/ep", "a"])),
            (
                "args replace cmd",
                &[],
                &["x", "y"],
                &["/ep"],
                &["c1"],
                Ok(&["/ep", "x", "y"]),
            ),
            (
                "args without entrypoint",
                &[],
                &["ls", "/"],
                &[],
                &["c1"],
                Ok(&["ls", "/"]),
            ),
            (
                "command drops cmd",
                &["/bin/true"],
                &[],
                &["/ep"],
                &["c1"],
                Ok(&["/bin/true"]),
            ),
            (
                "command and args",
                &["sh", "-c"],
                &["echo hi"],
                &["/ep"],
                &["c1"],
                Ok(&["sh", "-c", "echo hi"]),
            ),
            ("empty-string entrypoint is none", &[], &[], &[""], &["c1"], Ok(&["c1"])),
            ("nothing at all", &[], &[], &[], &[], Err(())),
            ("empty-string entrypoint and no cmd", &[], &[], &[""], &[], Err(())),
        ];
        for (name, command, args, ep, cmd, want) in cases {
            let got = argv(&v(command), &v(args), &v(ep), &v(cmd));
            match want {
                Ok(w) => assert_eq!(got.unwrap(), v(w), "{name}"),
                Err(()) => {
                    let e = got.unwrap_err();
                    assert!(
                        matches!(&e, CriError::InvalidArgument(m) if m.starts_with("no command specified")),
                        "{name}: {e}"
                    );
                }
            }
        }
    }

    fn kv(k: &str, val: &str) -> api::KeyValue {
        api::KeyValue {
            key: k.into(),
            value: val.into(),
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn env_table() {
        let cases: Vec<(&str, Vec<String>, Vec<api::KeyValue>, Option<&str>, Vec<&str>)> = vec![
            (
                "defaults only",
                vec![],
                vec![],
                None,
                vec![DEFAULT_PATH, "HOSTNAME=web-0", "HOME=/"],
            ),
            (
                "image PATH replaces the default in place",
                v(&["PATH=/opt/bin", "LANG=C"]),
                vec![],
                Some("/root"),
                vec!["PATH=/opt/bin", "HOSTNAME=web-0", "LANG=C", "HOME=/root"],
            ),
            (
                "CRI overrides the image, same key replaced",
                v(&["A=1", "B=2"]),
                vec![kv("B", "3"), kv("C", "")],
                None,
                vec![DEFAULT_PATH, "HOSTNAME=web-0", "A=1", "B=3", "C=", "HOME=/"],
            ),
            (
                "CRI may override HOSTNAME and HOME",
                vec![],
                vec![kv("HOSTNAME", "x"), kv("HOME", "/data")],
                Some("/root"),
                vec![DEFAULT_PATH, "HOSTNAME=x", "HOME=/data"],
            ),
            (
                "image entry without '=' unsets",
                v(&["A=1", "A"]),
                vec![],
                None,
                vec![DEFAULT_PATH, "HOSTNAME=web-0", "HOME=/"],
            ),
            (
                "values keep their '='",
                vec![],
                vec![kv("OPTS", "a=b=c")],
                None,
                vec![DEFAULT_PATH, "HOSTNAME=web-0", "OPTS=a=b=c", "HOME=/"],
            ),
            (
                "duplicate CRI keys: last wins",
                vec![],
                vec![kv("X", "1"), kv("X", "2")],
                None,
                vec![DEFAULT_PATH, "HOSTNAME=web-0", "X=2", "HOME=/"],
            ),
        ];
        for (name, image, cri, home, want) in cases {
            assert_eq!(env("web-0", &image, &cri, home), v(&want), "{name}");
        }
    }

    #[test]
    fn cwd_table() {
        assert_eq!(cwd("/work", "/img"), "/work");
        assert_eq!(cwd("", "/img"), "/img");
        assert_eq!(cwd("", "rel/dir"), "/rel/dir");
        assert_eq!(cwd("", ""), "/");
    }

    #[test]
    fn signals_parse() {
        for (s, n) in [
            ("SIGTERM", Some(15)),
            ("TERM", Some(15)),
            ("sigquit", Some(3)),
            ("9", Some(9)),
            ("SIGRTMIN", Some(34)),
            ("SIGRTMIN+3", Some(37)),
            ("RTMAX-1", Some(63)),
            ("SIGRTMAX", Some(64)),
            ("SIGXFSZ", Some(25)),
            ("SIGRTMIN+40", None),
            ("SIGNOPE", None),
            ("0", None),
            ("65", None),
            ("", None),
        ] {
            assert_eq!(parse_signal(s), n, "{s}");
        }
    }

    #[test]
    fn stop_signal_prefers_cri() {
        assert_eq!(stop_signal(Signal::Sigquit as i32, Some("SIGINT")).unwrap(), Some(3));
        assert_eq!(stop_signal(0, Some("SIGINT")).unwrap(), Some(2));
        assert_eq!(stop_signal(0, Some("bogus")).unwrap(), None);
        assert_eq!(stop_signal(0, None).unwrap(), None);
        assert_eq!(stop_signal(Signal::Sigrtminplus2 as i32, None).unwrap(), Some(36));
        assert_eq!(stop_signal(Signal::Sigrtmaxminus1 as i32, None).unwrap(), Some(63));
        assert!(stop_signal(999, None).is_err());
        // every CRI signal maps to a number
        for n in 1..=65 {
            assert!(stop_signal(n, None).unwrap().is_some(), "signal enum {n}");
        }
    }
}
