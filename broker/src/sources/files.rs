//! The classic databases: `etc/passwd`, `etc/shadow`, `etc/group` and
//! `etc/gshadow` below the root, parsed here (never through NSS, which could
//! lead back into the broker).
//!
//! Comments, blank lines and NIS compat lines (`+`/`-`) are skipped, an
//! invalid line is skipped and reported, a missing file is an empty source.
//! Shadow data becomes the privileged part of the records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use userdb_proto::record::{GroupRecord, GroupShadow, UserRecord, UserShadow};

use super::{SourceData, SourceGroup, SourceUser};

/// The four files of this source below `root`, in the order they are read.
pub fn paths(root: &Path) -> [PathBuf; 4] {
    ["passwd", "shadow", "group", "gshadow"].map(|f| root.join("etc").join(f))
}

/// Reads the source below `root`.
pub fn load(root: &Path) -> SourceData {
    let [passwd, shadow, group, gshadow] = paths(root);
    let mut data = SourceData::default();
    let shadows = parse_shadow(
        &read(&shadow, &mut data.problems),
        &shadow,
        &mut data.problems,
    );
    data.users = parse_passwd(
        &read(&passwd, &mut data.problems),
        &passwd,
        &shadows,
        &mut data.problems,
    );
    let gshadows = parse_gshadow(
        &read(&gshadow, &mut data.problems),
        &gshadow,
        &mut data.problems,
    );
    data.groups = parse_group(
        &read(&group, &mut data.problems),
        &group,
        &gshadows,
        &mut data.problems,
    );
    data
}

/// The file's text; missing is empty, unreadable is empty and reported.
fn read(path: &Path, problems: &mut Vec<String>) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            problems.push(format!("{}: cannot read: {e}", path.display()));
            String::new()
        }
    }
}

/// The lines that carry entries, numbered from 1, split on `:`.
fn entries(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let skip = line.trim().is_empty()
            || line.starts_with('#')
            || line.starts_with('+')
            || line.starts_with('-');
        (!skip).then(|| (i + 1, line.split(':').collect()))
    })
}

fn bad_line(problems: &mut Vec<String>, path: &Path, line: usize, why: impl std::fmt::Display) {
    problems.push(format!("{}:{line}: skipped: {why}", path.display()));
}

fn parse_id(field: &str) -> Option<u32> {
    field.parse().ok()
}

/// An optional day count; empty means unset.
fn parse_days(field: &str) -> Result<Option<i64>, String> {
    if field.is_empty() {
        Ok(None)
    } else {
        field
            .parse()
            .map(Some)
            .map_err(|_| format!("{field:?} is not a number of days"))
    }
}

/// A password field that carries a hash rather than pointing elsewhere.
fn inline_hash(field: &str) -> Option<String> {
    (field != "x").then(|| field.to_owned())
}

/// `name:hash:lastchg:min:max:warn:inactive:expire:reserved`.
pub fn parse_shadow(
    text: &str,
    path: &Path,
    problems: &mut Vec<String>,
) -> HashMap<String, UserShadow> {
    let mut out = HashMap::new();
    for (line, fields) in entries(text) {
        if fields.len() != 9 {
            bad_line(
                problems,
                path,
                line,
                format!("{} fields instead of 9", fields.len()),
            );
            continue;
        }
        let days: Result<Vec<Option<i64>>, String> =
            fields[2..8].iter().map(|f| parse_days(f)).collect();
        match days {
            Ok(d) => {
                out.entry(fields[0].to_owned()).or_insert(UserShadow {
                    hashed_password: Some(fields[1].to_owned()),
                    last_change_days: d[0],
                    min_days: d[1],
                    max_days: d[2],
                    warn_days: d[3],
                    inactive_days: d[4],
                    expire_days: d[5],
                });
            }
            Err(why) => bad_line(problems, path, line, why),
        }
    }
    out
}

/// `name:password:uid:gid:gecos:home:shell`, with shadow data attached.
pub fn parse_passwd(
    text: &str,
    path: &Path,
    shadows: &HashMap<String, UserShadow>,
    problems: &mut Vec<String>,
) -> Vec<SourceUser> {
    let mut out = Vec::new();
    for (line, f) in entries(text) {
        if f.len() != 7 {
            bad_line(
                problems,
                path,
                line,
                format!("{} fields instead of 7", f.len()),
            );
            continue;
        }
        let (Some(uid), Some(gid)) = (parse_id(f[2]), parse_id(f[3])) else {
            bad_line(problems, path, line, "uid or gid is not a number");
            continue;
        };
        let shadow = shadows.get(f[0]).cloned().or_else(|| {
            inline_hash(f[1]).map(|hash| UserShadow {
                hashed_password: Some(hash),
                ..UserShadow::default()
            })
        });
        // glibc reads an empty home as "/" and an empty shell as /bin/sh.
        let user = UserRecord {
            name: f[0].to_owned(),
            uid,
            gid,
            gecos: f[4].to_owned(),
            home: if f[5].is_empty() { "/" } else { f[5] }.to_owned(),
            shell: if f[6].is_empty() { "/bin/sh" } else { f[6] }.to_owned(),
            shadow,
        };
        // Validate exactly as records from any other source are validated.
        let record = user.to_json();
        match UserRecord::from_json(&record) {
            Ok(_) => out.push(SourceUser {
                name: user.name,
                uid,
                record,
                listed: true,
            }),
            Err(why) => bad_line(problems, path, line, why),
        }
    }
    out
}

/// `name:hash:administrators:members`.
pub fn parse_gshadow(
    text: &str,
    path: &Path,
    problems: &mut Vec<String>,
) -> HashMap<String, GroupShadow> {
    let mut out = HashMap::new();
    for (line, f) in entries(text) {
        if f.len() != 4 {
            bad_line(
                problems,
                path,
                line,
                format!("{} fields instead of 4", f.len()),
            );
            continue;
        }
        out.entry(f[0].to_owned()).or_insert(GroupShadow {
            hashed_password: Some(f[1].to_owned()),
            administrators: name_list(f[2]),
        });
    }
    out
}

fn name_list(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `name:password:gid:member,member,...`, with gshadow data attached.
pub fn parse_group(
    text: &str,
    path: &Path,
    gshadows: &HashMap<String, GroupShadow>,
    problems: &mut Vec<String>,
) -> Vec<SourceGroup> {
    let mut out = Vec::new();
    for (line, f) in entries(text) {
        if f.len() != 4 {
            bad_line(
                problems,
                path,
                line,
                format!("{} fields instead of 4", f.len()),
            );
            continue;
        }
        let Some(gid) = parse_id(f[2]) else {
            bad_line(problems, path, line, "gid is not a number");
            continue;
        };
        let shadow = gshadows.get(f[0]).cloned().or_else(|| {
            inline_hash(f[1]).map(|hash| GroupShadow {
                hashed_password: Some(hash),
                administrators: Vec::new(),
            })
        });
        let group = GroupRecord {
            name: f[0].to_owned(),
            gid,
            members: name_list(f[3]),
            shadow,
        };
        let record = group.to_json();
        match GroupRecord::from_json(&record) {
            Ok(_) => out.push(SourceGroup {
                name: group.name,
                gid,
                record,
                listed: true,
            }),
            Err(why) => bad_line(problems, path, line, why),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> &'static Path {
        Path::new("/etc/x")
    }

    #[test]
    fn passwd_lines_with_shadow() {
        let mut problems = Vec::new();
        let shadows = parse_shadow("alice:$6$salt$h:19000:0:99999:7:::\n", p(), &mut problems);
        let users = parse_passwd(
            "# comment\n\nroot:x:0:0:root:/root:/bin/bash\n+nisuser::::::\n-other\nalice:x:1000:1000:Alice,,,:/home/alice:\n",
            p(),
            &shadows,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].record["homeDirectory"], "/root");
        assert!(users[0].record.get("privileged").is_none());
        let alice = UserRecord::from_json(&users[1].record).unwrap();
        assert_eq!(
            (alice.uid, alice.gid, alice.gecos.as_str()),
            (1000, 1000, "Alice,,,")
        );
        assert_eq!(alice.shell, "/bin/sh");
        let shadow = alice.shadow.unwrap();
        assert_eq!(shadow.hashed_password.as_deref(), Some("$6$salt$h"));
        assert_eq!(
            (
                shadow.last_change_days,
                shadow.max_days,
                shadow.inactive_days
            ),
            (Some(19000), Some(99999), None)
        );
    }

    #[test]
    fn invalid_passwd_lines_are_reported_and_skipped() {
        let mut problems = Vec::new();
        let users = parse_passwd(
            "short:x:1\nbad:x:uid:1:::/bin/sh\nneg:x:-1:1::/:/bin/sh\nbad name:x:5:5::/:/bin/sh\nhome:x:6:6::rel:/bin/sh\nok:x:7:7::/:/bin/sh\n",
            p(),
            &HashMap::new(),
            &mut problems,
        );
        assert_eq!(
            users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["bad name", "ok"]
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].starts_with("/etc/x:1: skipped"),
            "{}",
            problems[0]
        );
        assert!(problems[3].starts_with("/etc/x:5:"), "{}", problems[3]);
    }

    #[test]
    fn inline_passwd_hash_is_privileged() {
        let users = parse_passwd(
            "old:$1$abc:9:9::/:/bin/sh\n",
            p(),
            &HashMap::new(),
            &mut Vec::new(),
        );
        assert_eq!(
            users[0].record["privileged"],
            json!({"hashedPassword": ["$1$abc"]})
        );
    }

    #[test]
    fn shadow_with_bad_days_is_skipped() {
        let mut problems = Vec::new();
        let s = parse_shadow(
            "a:x:soon:0:0:0:::\nb:*:1:2:3:4:5:6:\nc:x\n",
            p(),
            &mut problems,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s["b"].expire_days, Some(6));
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn group_lines_with_gshadow() {
        let mut problems = Vec::new();
        let gshadows = parse_gshadow("wheel:!:alice:alice,bob\nbroken\n", p(), &mut problems);
        let groups = parse_group(
            "wheel:x:10:alice,bob\nempty:x:11:\nbad:x:ten:\nbadmember:x:12:a:b\n",
            p(),
            &gshadows,
            &mut problems,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(groups.len(), 2);
        let wheel = GroupRecord::from_json(&groups[0].record).unwrap();
        assert_eq!(wheel.members, ["alice", "bob"]);
        let shadow = wheel.shadow.unwrap();
        assert_eq!(
            (shadow.hashed_password.as_deref(), shadow.administrators),
            (Some("!"), vec!["alice".to_owned()])
        );
        assert!(groups[1].record.get("members").is_none());
        assert!(groups[1].record.get("privileged").is_none());
    }

    #[test]
    fn missing_root_is_an_empty_source() {
        let data = load(Path::new("/nonexistent-root"));
        assert_eq!(data, SourceData::default());
    }
}
