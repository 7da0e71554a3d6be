//! Builds a [`Snapshot`] from sources in priority order.
//!
//! - A user or group comes from the first source that has it: a name or an
//!   id already taken by a higher-priority source keeps its record. When the
//!   losing record disagrees (same name with another id, same id with
//!   another name) that is a conflict, reported in words.
//! - Memberships are the union over every source and every record, losers
//!   included: group records' `members`, user records' `memberOf`, and
//!   membership drop-ins, each pair once, remembering which sources stated it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use userdb_proto::names::valid_name;

use crate::snapshot::{GroupEntry, Membership, Snapshot, SourceId, SourceStatus, UserEntry};
use crate::sources::{SourceData, SourceGroup, SourceKind, SourceUser};

/// The configured priority order of sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priority {
    order: Vec<String>,
}

/// Sorts sources by priority: smaller is preferred.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank(usize, u8, String);

impl Priority {
    pub fn new(order: Vec<String>) -> Self {
        Priority { order }
    }

    /// Named sources by their position; the others after them, local
    /// sources first (files, then drop-ins), services by name.
    pub fn rank(&self, name: &str, kind: SourceKind) -> Rank {
        let position = self
            .order
            .iter()
            .position(|n| n == name)
            .unwrap_or(self.order.len());
        let kind_order = match kind {
            SourceKind::Files => 0,
            SourceKind::DropIns => 1,
            SourceKind::Varlink => 2,
        };
        Rank(position, kind_order, name.to_owned())
    }
}

/// One source's data with what `merge` needs to know about the source.
pub struct LoadedSource {
    pub name: String,
    pub kind: SourceKind,
    pub data: SourceData,
    pub load_time: Duration,
}

/// The merged snapshot, and every problem and conflict found on the way
/// (the caller decides which of them are new enough to log).
pub struct Merged {
    pub snapshot: Snapshot,
    pub messages: Vec<String>,
}

pub fn merge(sources: Vec<LoadedSource>, generation: u64) -> Merged {
    let mut builder = Builder {
        snapshot: Snapshot::empty(),
        messages: Vec::new(),
    };
    builder.snapshot.generation = generation;
    for (id, source) in sources.into_iter().enumerate() {
        builder.add_source(id, source);
    }
    builder.snapshot.built_at = Instant::now();
    Merged {
        snapshot: builder.snapshot,
        messages: builder.messages,
    }
}

struct Builder {
    snapshot: Snapshot,
    messages: Vec<String>,
}

impl Builder {
    fn add_source(&mut self, id: SourceId, source: LoadedSource) {
        let LoadedSource {
            name,
            kind,
            data,
            load_time,
        } = source;
        self.snapshot.sources.push(SourceStatus {
            name,
            kind,
            users: 0,
            groups: 0,
            memberships: 0,
            problems: data.problems.len(),
            load_time,
        });
        self.messages.extend(data.problems);
        for user in data.users {
            for group in string_list(&user.record, "memberOf") {
                self.add_membership(id, &user.name, &group);
            }
            self.add_user(id, user);
        }
        for group in data.groups {
            for member in string_list(&group.record, "members") {
                self.add_membership(id, &member, &group.name);
            }
            self.add_group(id, group);
        }
        for (user, group) in data.memberships {
            self.add_membership(id, &user, &group);
        }
    }

    fn source_name(&self, id: SourceId) -> &str {
        &self.snapshot.sources[id].name
    }

    fn add_user(&mut self, id: SourceId, user: SourceUser) {
        let s = &self.snapshot;
        let by_name = s.user_by_name.get(&user.name).map(|&i| &s.users[i]);
        let by_uid = s.user_by_uid.get(&user.uid).map(|&i| &s.users[i]);
        if let Some(winner) = by_name.or(by_uid) {
            if winner.name != user.name || winner.uid != user.uid {
                let message = format!(
                    "conflict: user {}:{} from {} wins over user {}:{} from {}",
                    winner.name,
                    winner.uid,
                    self.source_name(winner.source),
                    user.name,
                    user.uid,
                    self.source_name(id),
                );
                self.messages.push(message);
            }
            return;
        }
        let index = self.snapshot.users.len();
        if user.listed {
            self.snapshot.user_by_name.insert(user.name.clone(), index);
            self.snapshot.sources[id].users += 1;
        }
        self.snapshot.user_by_uid.insert(user.uid, index);
        self.snapshot.users.push(UserEntry {
            name: user.name,
            uid: user.uid,
            source: id,
            record: user.record,
            listed: user.listed,
        });
    }

    fn add_group(&mut self, id: SourceId, group: SourceGroup) {
        let s = &self.snapshot;
        let by_name = s.group_by_name.get(&group.name).map(|&i| &s.groups[i]);
        let by_gid = s.group_by_gid.get(&group.gid).map(|&i| &s.groups[i]);
        if let Some(winner) = by_name.or(by_gid) {
            if winner.name != group.name || winner.gid != group.gid {
                let message = format!(
                    "conflict: group {}:{} from {} wins over group {}:{} from {}",
                    winner.name,
                    winner.gid,
                    self.source_name(winner.source),
                    group.name,
                    group.gid,
                    self.source_name(id),
                );
                self.messages.push(message);
            }
            return;
        }
        let mut record = group.record;
        if let Some(obj) = record.as_object_mut() {
            obj.remove("members");
        }
        let index = self.snapshot.groups.len();
        if group.listed {
            self.snapshot
                .group_by_name
                .insert(group.name.clone(), index);
            self.snapshot.sources[id].groups += 1;
        }
        self.snapshot.group_by_gid.insert(group.gid, index);
        self.snapshot.groups.push(GroupEntry {
            name: group.name,
            gid: group.gid,
            source: id,
            record,
            listed: group.listed,
        });
    }

    fn add_membership(&mut self, id: SourceId, user: &str, group: &str) {
        let s = &mut self.snapshot;
        let key = (user.to_owned(), group.to_owned());
        let index = match s.membership_index.get(&key) {
            Some(&i) => i,
            None => {
                let i = s.memberships.len();
                s.memberships.push(Membership {
                    user: key.0.clone(),
                    group: key.1.clone(),
                    origins: Default::default(),
                });
                s.memberships_by_user
                    .entry(key.0.clone())
                    .or_default()
                    .push(i);
                s.memberships_by_group
                    .entry(key.1.clone())
                    .or_default()
                    .push(i);
                s.membership_index.insert(key, i);
                i
            }
        };
        let origins = &mut s.memberships[index].origins;
        if !origins.contains(id) {
            origins.insert(id);
            s.sources[id].memberships += 1;
        }
    }
}

/// The valid names in a record's string array field; records were validated
/// on load, `memberOf` is not part of that, so invalid names are dropped.
fn string_list(record: &Value, key: &str) -> Vec<String> {
    record
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|name| valid_name(name))
        .map(str::to_owned)
        .collect()
}

/// Logs each problem or conflict once while it persists: a message is logged
/// when it first appears and again only if it goes away and comes back.
#[derive(Debug, Default)]
pub struct LogOnce {
    current: HashSet<String>,
}

impl LogOnce {
    /// Takes the full list of this build's messages; returns those not in
    /// the previous build's list (the ones to log now).
    pub fn update(&mut self, messages: Vec<String>) -> Vec<String> {
        let fresh = messages
            .iter()
            .filter(|m| !self.current.contains(*m))
            .cloned()
            .collect();
        self.current = messages.into_iter().collect();
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, uid: u32, extra: Value) -> SourceUser {
        let mut record = json!({"userName": name, "uid": uid});
        if let (Some(r), Some(e)) = (record.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        SourceUser {
            name: name.into(),
            uid,
            record,
            listed: true,
        }
    }

    fn group(name: &str, gid: u32, members: &[&str]) -> SourceGroup {
        SourceGroup {
            name: name.into(),
            gid,
            record: json!({"groupName": name, "gid": gid, "members": members}),
            listed: true,
        }
    }

    fn source(name: &str, kind: SourceKind, data: SourceData) -> LoadedSource {
        LoadedSource {
            name: name.into(),
            kind,
            data,
            load_time: Duration::ZERO,
        }
    }

    fn two_sources() -> Merged {
        let files = SourceData {
            users: vec![user("root", 0, json!({})), user("alice", 1000, json!({}))],
            groups: vec![group("wheel", 10, &["alice"]), group("users", 100, &[])],
            ..Default::default()
        };
        let mut uid_only = user("alice", 1000, json!({}));
        uid_only.listed = false;
        let dropins = SourceData {
            users: vec![
                user("alice", 2000, json!({})),
                user("mallory", 0, json!({})),
                user("bob", 1001, json!({"memberOf": ["wheel", "a,b"]})),
                uid_only,
            ],
            groups: vec![
                group("wheel", 11, &["carol", "alice"]),
                group("devs", 500, &["bob"]),
            ],
            memberships: vec![
                ("dave".into(), "wheel".into()),
                ("alice".into(), "wheel".into()),
            ],
            problems: vec!["x.user: skipped: broken".into()],
        };
        merge(
            vec![
                source("files", SourceKind::Files, files),
                source("dropins", SourceKind::DropIns, dropins),
            ],
            7,
        )
    }

    #[test]
    fn first_source_wins_and_conflicts_are_reported() {
        let merged = two_sources();
        let s = &merged.snapshot;
        assert_eq!(s.generation, 7);
        assert_eq!(s.user_by_name("alice").unwrap().uid, 1000);
        assert_eq!(s.user_by_name("alice").unwrap().source, 0);
        assert_eq!(s.user_by_uid(0).unwrap().name, "root");
        assert!(s.user_by_name("mallory").is_none());
        assert_eq!(s.user_by_name("bob").unwrap().source, 1);
        assert_eq!(s.group_by_name("wheel").unwrap().gid, 10);
        assert_eq!(
            merged.messages,
            [
                "x.user: skipped: broken",
                "conflict: user alice:1000 from files wins over user alice:2000 from dropins",
                "conflict: user root:0 from files wins over user mallory:0 from dropins",
                "conflict: group wheel:10 from files wins over group wheel:11 from dropins",
            ]
        );
    }

    #[test]
    fn indexes_and_enumeration_order() {
        let merged = two_sources();
        let s = &merged.snapshot;
        let names: Vec<&str> = s.users().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "alice", "bob"]);
        let groups: Vec<(&str, u32)> = s.groups().map(|g| (g.name.as_str(), g.gid)).collect();
        assert_eq!(groups, [("wheel", 10), ("users", 100), ("devs", 500)]);
        assert_eq!(s.group_by_gid(500).unwrap().name, "devs");
        assert!(s.group_by_gid(11).is_none());
        assert!(s
            .group_by_name("wheel")
            .unwrap()
            .record
            .get("members")
            .is_none());
        assert_eq!((s.sources[0].users, s.sources[1].users), (2, 1));
        assert_eq!(s.sources[1].problems, 1);
    }

    #[test]
    fn memberships_are_a_union_with_origins() {
        let merged = two_sources();
        let s = &merged.snapshot;
        let wheel: Vec<&str> = s
            .memberships_of_group("wheel")
            .map(|m| m.user.as_str())
            .collect();
        assert_eq!(wheel, ["alice", "bob", "carol", "dave"]);
        let alice = s.membership("alice", "wheel").unwrap();
        assert!(alice.origins.contains(0) && alice.origins.contains(1));
        assert!(s.stated_by_files(alice));
        let bob: Vec<&str> = s
            .memberships_of_user("bob")
            .map(|m| m.group.as_str())
            .collect();
        assert_eq!(bob, ["wheel", "devs"]);
        assert!(s.membership("bob", "a,b").is_none());
        assert!(s.memberships_of_user("nobody").next().is_none());
        assert_eq!(s.memberships().count(), 5);
    }

    #[test]
    fn memberships_stated_by_files_are_recognised() {
        let files = SourceData {
            groups: vec![group("wheel", 10, &["alice"])],
            ..Default::default()
        };
        let dropins = SourceData {
            memberships: vec![("bob".into(), "wheel".into())],
            ..Default::default()
        };
        let merged = merge(
            vec![
                source("files", SourceKind::Files, files),
                source("dropins", SourceKind::DropIns, dropins),
            ],
            1,
        );
        let s = &merged.snapshot;
        assert!(s.stated_by_files(s.membership("alice", "wheel").unwrap()));
        assert!(!s.stated_by_files(s.membership("bob", "wheel").unwrap()));
    }

    #[test]
    fn priority_follows_the_configured_order() {
        let default = Priority::new(vec!["files".into(), "dropins".into()]);
        let mut ranks = [
            ("io.systemd.Home", SourceKind::Varlink),
            ("dropins", SourceKind::DropIns),
            ("files", SourceKind::Files),
            ("io.a.Directory", SourceKind::Varlink),
        ]
        .map(|(n, k)| (default.rank(n, k), n));
        ranks.sort();
        assert_eq!(
            ranks.map(|(_, n)| n),
            ["files", "dropins", "io.a.Directory", "io.systemd.Home"]
        );
        let custom = Priority::new(vec!["io.systemd.Home".into(), "dropins".into()]);
        assert!(
            custom.rank("io.systemd.Home", SourceKind::Varlink)
                < custom.rank("dropins", SourceKind::DropIns)
        );
        assert!(
            custom.rank("dropins", SourceKind::DropIns) < custom.rank("files", SourceKind::Files)
        );
        assert!(
            custom.rank("files", SourceKind::Files)
                < custom.rank("io.a.Directory", SourceKind::Varlink)
        );
    }

    #[test]
    fn log_once_reports_only_new_messages() {
        let mut log = LogOnce::default();
        assert_eq!(log.update(vec!["a".into(), "b".into()]), ["a", "b"]);
        assert!(log.update(vec!["a".into(), "b".into()]).is_empty());
        assert_eq!(log.update(vec!["b".into(), "c".into()]), ["c"]);
        assert_eq!(log.update(vec!["a".into()]), ["a"]);
    }
}
