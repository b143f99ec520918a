//! The container's user: CRI `run_as_user` / `run_as_username` / `run_as_group`, else the image's `User`,
//! resolved against the image's /etc/passwd and /etc/group the way containerd does (`oci.WithUser`,
//! `WithAdditionalGIDs`, `WithSupplementalGroups`).

use crate::api::{self, SupplementalGroupsPolicy};
use crate::error::{CriError, CriResult};

/// One line of /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of /etc/group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses /etc/passwd, skipping comments and malformed lines (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses /etc/group, skipping comments and malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The identity of the container's first process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The user's home in the image's /etc/passwd (for `HOME`), if it has an entry.
    pub home: Option<String>,
    pub username: Option<String>,
}

/// /etc/passwd and /etc/group of the image, parsed; `None` where the image has no such file.
pub struct UserDb {
    passwd: Option<Vec<PasswdEntry>>,
    group: Option<Vec<GroupEntry>>,
}

impl UserDb {
    pub fn new(passwd: Option<&str>, group: Option<&str>) -> UserDb {
        UserDb {
            passwd: passwd.map(parse_passwd),
            group: group.map(parse_group),
        }
    }

    fn user_by_name(&self, name: &str) -> CriResult<&PasswdEntry> {
        let entries = self.passwd.as_ref().ok_or_else(|| {
            CriError::InvalidArgument(format!(
                "user {name:?} cannot be resolved: the image has no /etc/passwd"
            ))
        })?;
        entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| CriError::InvalidArgument(format!("user {name:?} not found in the image's /etc/passwd")))
    }

    fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.as_ref()?.iter().find(|e| e.uid == uid)
    }

    fn group_by_name(&self, name: &str) -> CriResult<u32> {
        let entries = self.group.as_ref().ok_or_else(|| {
            CriError::InvalidArgument(format!(
                "group {name:?} cannot be resolved: the image has no /etc/group"
            ))
        })?;
        entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.gid)
            .ok_or_else(|| CriError::InvalidArgument(format!("group {name:?} not found in the image's /etc/group")))
    }

    /// gids of the groups listing `username` as a member (not the user's own primary group by name).
    fn memberships(&self, username: &str) -> Vec<u32> {
        self.group
            .iter()
            .flatten()
            .filter(|g| g.name != username && g.members.iter().any(|m| m == username))
            .map(|g| g.gid)
            .collect()
    }
}

fn id_value(v: i64, field: &str) -> CriResult<u32> {
    u32::try_from(v).map_err(|_| CriError::InvalidArgument(format!("{field} must be within 0..=4294967295, got {v}")))
}

/// The user string containerd builds from the security context (`name`, `uid`, `uid:gid`, `name:gid`), or
/// `None` when the context names no user.
fn cri_user_string(sc: &api::LinuxContainerSecurityContext, field: &str) -> CriResult<Option<String>> {
    let user = if !sc.run_as_username.is_empty() {
        Some(sc.run_as_username.clone())
    } else {
        sc.run_as_user
            .map(|u| id_value(u.value, &format!("{field}.run_as_user")).map(|v| v.to_string()))
            .transpose()?
    };
    match (user, sc.run_as_group) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(CriError::InvalidArgument(format!(
            "{field}.run_as_group is set without run_as_user or run_as_username"
        ))),
        (Some(u), None) => Ok(Some(u)),
        (Some(u), Some(g)) => Ok(Some(format!(
            "{u}:{}",
            id_value(g.value, &format!("{field}.run_as_group"))?
        ))),
    }
}

/// Checks the user fields of a container security context (no image needed).
pub fn validate(sc: &api::LinuxContainerSecurityContext, field: &str) -> CriResult<()> {
    if !sc.run_as_username.is_empty() && sc.run_as_user.is_some() {
        return Err(CriError::InvalidArgument(format!(
            "{field}: only one of run_as_user and run_as_username may be set"
        )));
    }
    if sc.run_as_username.contains(':') || sc.run_as_username.contains('\0') {
        return Err(CriError::InvalidArgument(format!(
            "{field}.run_as_username {:?} is not a user name",
            sc.run_as_username
        )));
    }
    cri_user_string(sc, field)?;
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        id_value(*g, &format!("{field}.supplemental_groups[{i}]"))?;
    }
    if SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy).is_err() {
        return Err(CriError::InvalidArgument(format!(
            "{field}.supplemental_groups_policy {} is not Merge (0) or Strict (1)",
            sc.supplemental_groups_policy
        )));
    }
    Ok(())
}

/// Resolves `spec` (`uid`, `name`, `uid:gid`, `name:group`, `uid:group`, `name:gid`) to uid and gid, like
/// containerd's `oci.WithUser`: a bare numeric uid absent from /etc/passwd runs with gid 0.
fn resolve_user_spec(spec: &str, db: &UserDb) -> CriResult<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) || group.is_some_and(|g| g.contains(':')) {
        return Err(CriError::InvalidArgument(format!(
            "user {spec:?} is not of the form user[:group]"
        )));
    }
    let numeric_user = user.parse::<u32>().ok();
    match group {
        None => match numeric_user {
            Some(uid) => Ok((uid, db.user_by_uid(uid).map_or(0, |e| e.gid))),
            None => db.user_by_name(user).map(|e| (e.uid, e.gid)),
        },
        Some(group) => {
            let uid = match numeric_user {
                Some(uid) => uid,
                None => db.user_by_name(user)?.uid,
            };
            let gid = match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => db.group_by_name(group)?,
            };
            Ok((uid, gid))
        }
    }
}

/// The container's user: CRI security context first, then the image's `User`, else root.
///
/// Supplemental groups: with `Merge` (the default), the image's /etc/group memberships of the user, the
/// primary gid (containerd's CVE-2023-25173 fix) and the CRI `supplemental_groups`; with `Strict`, only the
/// CRI `supplemental_groups`.
pub fn resolve(
    sc: &api::LinuxContainerSecurityContext,
    image_user: &str,
    db: &UserDb,
    field: &str,
) -> CriResult<ResolvedUser> {
    validate(sc, field)?;
    let spec = match cri_user_string(sc, field)? {
        Some(s) => s,
        None if !image_user.trim().is_empty() => image_user.trim().to_string(),
        None => "0".to_string(),
    };
    let (uid, gid) = resolve_user_spec(&spec, db).map_err(|e| match e {
        CriError::InvalidArgument(m) => CriError::InvalidArgument(format!("{field}: {m}")),
        other => other,
    })?;
    let entry = db.user_by_uid(uid);
    let mut gids: Vec<u32> = Vec::new();
    if sc.supplemental_groups_policy == SupplementalGroupsPolicy::Merge as i32 {
        // The user part of the spec names the user whose memberships count (containerd: a uid is looked up).
        let user_part = spec.split(':').next().unwrap_or_default();
        let username = match user_part.parse::<u32>() {
            Ok(_) => entry.map(|e| e.name.clone()),
            Err(_) => Some(user_part.to_string()),
        };
        if let Some(name) = username {
            gids.extend(db.memberships(&name));
        }
        gids.push(gid);
    }
    gids.extend(sc.supplemental_groups.iter().map(|g| *g as u32));
    gids.sort_unstable();
    gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: gids,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
        username: entry.map(|e| e.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
broken line
nogid:x:1002
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
www-data:x:33:alice
alice:x:1000:
bob:x:1001:
video:x:44:alice,bob
audio:x:29: alice
wheel:x:10:bob
";

    fn db() -> UserDb {
        UserDb::new(Some(PASSWD), Some(GROUP))
    }

    fn sc() -> api::LinuxContainerSecurityContext {
        api::LinuxContainerSecurityContext::default()
    }

    fn int(v: i64) -> Option<api::Int64Value> {
        Some(api::Int64Value { value: v })
    }

    #[test]
    fn passwd_and_group_parse() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 5, "comment, broken and short lines are skipped");
        assert_eq!(
            p[3],
            PasswdEntry {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into()
            }
        );
        let g = parse_group(GROUP);
        assert_eq!(
            g.iter().find(|g| g.name == "video").unwrap().members,
            vec!["alice", "bob"]
        );
        assert_eq!(g.iter().find(|g| g.name == "audio").unwrap().members, vec!["alice"]);
    }

    #[test]
    fn user_resolution_table() {
        struct Case {
            name: &'static str,
            sc: api::LinuxContainerSecurityContext,
            image_user: &'static str,
            want: Result<(u32, u32, Vec<u32>), &'static str>,
        }
        let strict = SupplementalGroupsPolicy::Strict as i32;
        let cases = vec![
            Case {
                name: "nothing: root with its primary group",
                sc: sc(),
                image_user: "",
                want: Ok((0, 0, vec![0])),
            },
            Case {
                name: "image user by name picks passwd gid and memberships",
                sc: sc(),
                image_user: "alice",
                want: Ok((1000, 1000, vec![29, 33, 44, 1000])),
            },
            Case {
                name: "image uid known to passwd",
                sc: sc(),
                image_user: "1001",
                want: Ok((1001, 1001, vec![10, 44, 1001])),
            },
            Case {
                name: "image uid unknown to passwd runs with gid 0",
                sc: sc(),
                image_user: "4242",
                want: Ok((4242, 0, vec![0])),
            },
            Case {
                name: "image uid:gid numeric needs no lookup",
                sc: sc(),
                image_user: "5000:6000",
                want: Ok((5000, 6000, vec![6000])),
            },
            Case {
                name: "image name:group",
                sc: sc(),
                image_user: "alice:video",
                want: Ok((1000, 44, vec![29, 33, 44])),
            },
            Case {
                name: "image name:gid",
                sc: sc(),
                image_user: "bob:7",
                want: Ok((1001, 7, vec![7, 10, 44])),
            },
            Case {
                name: "run_as_user overrides the image",
                sc: api::LinuxContainerSecurityContext {
                    run_as_user: int(1000),
                    ..sc()
                },
                image_user: "bob",
                want: Ok((1000, 1000, vec![29, 33, 44, 1000])),
            },
            Case {
                name: "run_as_user + run_as_group",
                sc: api::LinuxContainerSecurityContext {
                    run_as_user: int(1000),
                    run_as_group: int(3000),
                    ..sc()
                },
                image_user: "",
                want: Ok((1000, 3000, vec![29, 33, 44, 3000])),
            },
            Case {
                name: "run_as_username resolved in passwd",
                sc: api::LinuxContainerSecurityContext {
                    run_as_username: "www-data".into(),
                    ..sc()
                },
                image_user: "",
                want: Ok((33, 33, vec![33])),
            },
            Case {
                name: "numeric run_as_username",
                sc: api::LinuxContainerSecurityContext {
                    run_as_username: "1001".into(),
                    ..sc()
                },
                image_user: "",
                want: Ok((1001, 1001, vec![10, 44, 1001])),
            },
            Case {
                name: "supplemental groups merge",
                sc: api::LinuxContainerSecurityContext {
                    run_as_user: int(1000),
                    supplemental_groups: vec![5555, 44],
                    ..sc()
                },
                image_user: "",
                want: Ok((1000, 1000, vec![29, 33, 44, 1000, 5555])),
            },
            Case {
                name: "strict policy: only the CRI groups",
                sc: api::LinuxContainerSecurityContext {
                    run_as_user: int(1000),
                    supplemental_groups: vec![5555],
                    supplemental_groups_policy: strict,
                    ..sc()
                },
                image_user: "",
                want: Ok((1000, 1000, vec![5555])),
            },
            Case {
                name: "unknown user name",
                sc: api::LinuxContainerSecurityContext {
                    run_as_username: "mallory".into(),
                    ..sc()
                },
                image_user: "",
                want: Err("ctx: user \"mallory\" not found in the image's /etc/passwd"),
            },
            Case {
                name: "unknown image group",
                sc: sc(),
                image_user: "alice:nogroup",
                want: Err("ctx: group \"nogroup\" not found in the image's /etc/group"),
            },
            Case {
                name: "run_as_group alone",
                sc: api::LinuxContainerSecurityContext {
                    run_as_group: int(5),
                    ..sc()
                },
                image_user: "alice",
                want: Err("ctx.run_as_group is set without run_as_user or run_as_username"),
            },
            Case {
                name: "negative uid",
                sc: api::LinuxContainerSecurityContext {
                    run_as_user: int(-1),
                    ..sc()
                },
                image_user: "",
                want: Err("ctx.run_as_user must be within 0..=4294967295, got -1"),
            },
            Case {
                name: "both user fields",
                sc: api::LinuxContainerSecurityContext {
                    run_as_user: int(1),
                    run_as_username: "daemon".into(),
                    ..sc()
                },
                image_user: "",
                want: Err("ctx: only one of run_as_user and run_as_username may be set"),
            },
            Case {
                name: "malformed image user",
                sc: sc(),
                image_user: "a:b:c",
                want: Err("ctx: user \"a:b:c\" is not of the form user[:group]"),
            },
        ];
        for c in cases {
            let got = resolve(&c.sc, c.image_user, &db(), "ctx")
                .map(|u| (u.uid, u.gid, u.additional_gids))
                .map_err(|e| e.to_string());
            assert_eq!(got, c.want.map_err(String::from), "{}", c.name);
        }
    }

    #[test]
    fn image_without_passwd() {
        let db = UserDb::new(None, None);
        let u = resolve(&sc(), "123", &db, "ctx").unwrap();
        assert_eq!((u.uid, u.gid, u.home), (123, 0, None));
        let e = resolve(&sc(), "alice", &db, "ctx").unwrap_err();
        assert!(
            matches!(e, CriError::InvalidArgument(ref m) if m.contains("no /etc/passwd")),
            "{e}"
        );
    }

    #[test]
    fn home_comes_from_passwd() {
        let u = resolve(&sc(), "alice", &db(), "ctx").unwrap();
        assert_eq!(u.home.as_deref(), Some("/home/alice"));
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(resolve(&sc(), "", &db(), "ctx").unwrap().home.as_deref(), Some("/root"));
    }
}
