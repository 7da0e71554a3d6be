//! PID 1's dynamic users (`DynamicUser=yes`), read from the links PID 1
//! keeps for code that must not ask it over IPC: for every user it
//! allocates, `run/systemd/dynamic-uid/direct:NAME` points to the uid and
//! `direct:UID` to the name (systemd's `src/core/dynamic-user.c`,
//! `make_uid_symlinks`; they are removed with the user).
//!
//! A pair of links that agree makes one user and its group, with the fields
//! PID 1's own `io.systemd.DynamicUser` service returns
//! (`src/core/core-varlink.c`, `build_user_json` / `build_group_json`).
//! With this source present the broker never asks `io.systemd.DynamicUser`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};
use userdb_proto::names::{valid_id, valid_name};
use userdb_proto::record::{GroupRecord, UserRecord};

use super::{LoadReport, LocalSource, SourceData, SourceInfo, SourceKind};
use crate::model::{Group, JsonRecord, User};

/// PID 1's directory of dynamic users below the root.
pub const DIR: &str = "run/systemd/dynamic-uid";

/// Link names start with this.
const PREFIX: &str = "direct:";

/// systemd's range for dynamic users (`DYNAMIC_UID_MIN`..`DYNAMIC_UID_MAX`).
const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// The range holds 4336 ids, two links each; anything past this is not PID 1's.
const MAX_ENTRIES: usize = 16 * 1024;

/// The fields PID 1 gives every dynamic user (`NOLOGIN` is Debian's and
/// systemd's default `nologin-path`).
const REAL_NAME: &str = "Dynamic User";
const GROUP_DESCRIPTION: &str = "Dynamic Group";
const HOME: &str = "/";
const SHELL: &str = "/usr/sbin/nologin";
const SERVICE: &str = "io.systemd.DynamicUser";

pub fn dir(root: &Path) -> PathBuf {
    root.join(DIR)
}

/// The `dynamic` source.
pub struct DynamicUsers {
    info: SourceInfo,
    dir: PathBuf,
    /// The pairs last read, by name.
    pairs: Vec<(String, u32)>,
    present: bool,
    /// The last read of the directory failed: read it again soon.
    unread: bool,
    data: Arc<SourceData>,
    report: LoadReport,
}

impl DynamicUsers {
    pub fn new(root: &Path) -> DynamicUsers {
        DynamicUsers {
            info: SourceInfo::local(SourceKind::DynamicUsers),
            dir: dir(root),
            pairs: Vec::new(),
            present: false,
            unread: false,
            data: Arc::default(),
            report: LoadReport::default(),
        }
    }

    /// Whether PID 1's directory exists: then its links are the whole truth
    /// about dynamic users, and `io.systemd.DynamicUser` is never asked.
    pub fn present(&self) -> bool {
        self.present
    }

    fn read_pairs(&self) -> Result<Option<Vec<(String, u32)>>, String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: cannot be listed: {e}", self.dir.display())),
        };
        let mut uid_of: HashMap<String, u32> = HashMap::new();
        let mut name_of: HashMap<u32, String> = HashMap::new();
        for entry in entries.flatten().take(MAX_ENTRIES) {
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            let Some(key) = file_name.strip_prefix(PREFIX) else {
                continue;
            };
            // Only links: PID 1 makes nothing else with this prefix.
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let Some(target) = target.to_str() else {
                continue;
            };
            match key.parse::<u32>() {
                Ok(uid) => {
                    name_of.insert(uid, target.to_owned());
                }
                Err(_) => {
                    if let Ok(uid) = target.parse::<u32>() {
                        uid_of.insert(key.to_owned(), uid);
                    }
                }
            }
        }
        let mut pairs: Vec<(String, u32)> = uid_of
            .into_iter()
            .filter(|(name, uid)| {
                valid_name(name)
                    && valid_id(*uid)
                    && DYNAMIC_UIDS.contains(uid)
                    && name_of.get(uid) == Some(name)
            })
            .collect();
        pairs.sort_by_key(|(_, uid)| *uid);
        Ok(Some(pairs))
    }
}

fn user(name: &str, uid: u32) -> User {
    let mut out = User::from_nss(
        UserRecord {
            name: name.to_owned(),
            uid,
            gid: uid,
            gecos: REAL_NAME.to_owned(),
            home: HOME.to_owned(),
            shell: SHELL.to_owned(),
            shadow: None,
        },
        true,
    );
    let Value::Object(record) = json!({
        "userName": name,
        "uid": uid,
        "gid": uid,
        "realName": REAL_NAME,
        "homeDirectory": HOME,
        "shell": SHELL,
        "locked": true,
        "service": SERVICE,
        "disposition": "dynamic",
    }) else {
        return out;
    };
    out.json = Some(Box::new(JsonRecord::split(record, &[])));
    out
}

fn group(name: &str, gid: u32) -> Group {
    let mut out = Group::from_nss(
        GroupRecord {
            name: name.to_owned(),
            gid,
            members: Vec::new(),
            shadow: None,
        },
        true,
    );
    let mut record = Map::new();
    record.insert("groupName".into(), json!(name));
    record.insert("description".into(), json!(GROUP_DESCRIPTION));
    record.insert("gid".into(), json!(gid));
    record.insert("service".into(), json!(SERVICE));
    record.insert("disposition".into(), json!("dynamic"));
    out.json = Some(Box::new(JsonRecord::split(record, &[])));
    out
}

impl LocalSource for DynamicUsers {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn watched(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn refresh(&mut self, changed: Option<&[PathBuf]>) -> bool {
        if let Some(paths) = changed {
            if !paths.iter().any(|p| super::in_dir(p, &self.dir)) {
                return false;
            }
        }
        let started = Instant::now();
        let result = self.read_pairs();
        self.report.took = started.elapsed();
        self.unread = result.is_err();
        let (present, pairs) = match result {
            Ok(Some(pairs)) => (true, pairs),
            Ok(None) => (false, Vec::new()),
            Err(why) => {
                // Keep the last good pairs.
                self.report.last_error = Some(why);
                return false;
            }
        };
        if present == self.present && pairs == self.pairs {
            return false;
        }
        self.present = present;
        self.data = Arc::new(SourceData {
            users: pairs.iter().map(|(n, id)| Arc::new(user(n, *id))).collect(),
            groups: pairs
                .iter()
                .map(|(n, id)| Arc::new(group(n, *id)))
                .collect(),
            memberships: Default::default(),
            problems: Vec::new(),
        });
        self.pairs = pairs;
        true
    }

    fn data(&self) -> Arc<SourceData> {
        Arc::clone(&self.data)
    }

    fn report(&self) -> LoadReport {
        self.report.clone()
    }

    fn read_unread(&mut self) -> bool {
        self.unread && self.refresh(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn agreeing_link_pairs_are_users_and_groups() {
        let root = std::env::temp_dir().join(format!("brokerd-dynamic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut source = DynamicUsers::new(&root);
        assert!(!source.refresh(None));
        assert!(!source.present());
        let dir = dir(&root);
        std::fs::create_dir_all(&dir).unwrap();
        symlink("61200", dir.join("direct:svc")).unwrap();
        symlink("svc", dir.join("direct:61200")).unwrap();
        // Half a pair, a pair that disagrees, and one outside the range.
        symlink("61201", dir.join("direct:half")).unwrap();
        symlink("other", dir.join("direct:61202")).unwrap();
        symlink("61202", dir.join("direct:wrong")).unwrap();
        symlink("1000", dir.join("direct:low")).unwrap();
        symlink("low", dir.join("direct:1000")).unwrap();
        // The lock file PID 1 keeps beside them is not a link.
        std::fs::write(dir.join("61200"), "svc\n").unwrap();
        assert!(source.refresh(Some(&[dir.join("direct:svc")])));
        assert!(source.present());
        let data = source.data();
        assert_eq!(data.users.len(), 1);
        let svc = &data.users[0];
        assert_eq!(
            (
                svc.name.as_ref(),
                svc.uid,
                svc.gid,
                svc.gecos(),
                svc.home(),
                svc.shell()
            ),
            ("svc", 61200, 61200, REAL_NAME, HOME, SHELL)
        );
        let (record, _) = svc.userdb_json(false);
        assert_eq!(record["disposition"], "dynamic");
        assert_eq!(record["service"], SERVICE);
        assert_eq!(data.groups[0].gid, 61200);
        std::fs::remove_file(dir.join("direct:svc")).unwrap();
        assert!(source.refresh(Some(&[dir.join("direct:svc")])));
        assert!(source.data().users.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
