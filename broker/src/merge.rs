//! The merge rules, written once: which source wins, which records count,
//! how memberships combine. The snapshot of the local sources is built by
//! [`build`]; a look-up that also asks Varlink services combines their
//! answers with the snapshot's by [`pick`] and [`MemberList`], the same
//! rules applied per key.
//!
//! 1. Sources have a fixed priority ([`Priority`]): the configured `order`,
//!    then the unnamed local sources (`files`, `dropins`), then services by
//!    name. Sources serving PID 1's dynamic users always come last, so that
//!    leaving them out (the dynamic bypass) changes no other answer.
//! 2. Records are taken in priority order, then in each source's own order.
//!    A record whose name or id a higher-priority source already has is
//!    *shadowed*: it answers nothing and contributes nothing, its members
//!    and `memberOf` included. When its name and id differ from the winner's
//!    that is a conflict, reported in words.
//! 3. Within one source, a name or id goes to the first record that has it,
//!    as glibc's `files` module reads duplicate lines: a second line with a
//!    known name is still found by its own id, and its members belong to it.
//! 4. A group's members are the members its own record lists, then, if it
//!    holds its name, every membership stated by name for that name in any
//!    source (membership drop-ins, users' `memberOf`, services'
//!    `GetMemberships`), in priority order, each name once.
//! 5. A user's groups are exactly the groups that list it by rule 4.

use std::sync::Arc;
use std::time::Instant;

use crate::model::{Group, Name, User};
use crate::snapshot::{
    group_name, member_name, user_name, GroupEntry, GroupRef, Map, Member, MemberName, MemberRef,
    NameIndex, NameLists, Set, Snapshot, SourceId, SourceStatus, UserEntry,
};
use crate::sources::{LoadReport, SourceData, SourceInfo, SourceKind};

/// The configured priority order of sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priority {
    order: Vec<String>,
}

/// Sorts sources by priority: smaller is preferred.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank(bool, usize, u8, String);

impl Priority {
    pub fn new(order: Vec<String>) -> Self {
        Priority { order }
    }

    pub fn rank(&self, source: &SourceInfo) -> Rank {
        let position = self
            .order
            .iter()
            .position(|n| *n == source.name)
            .unwrap_or(self.order.len());
        let kind_order = match source.kind {
            SourceKind::Files => 0,
            SourceKind::DropIns => 1,
            SourceKind::DynamicUsers => 2,
            SourceKind::Varlink => 3,
        };
        Rank(source.pid1_users, position, kind_order, source.name.clone())
    }
}

/// What identifies a user or a group record, for the rules above.
pub trait Keyed {
    const LABEL: &'static str;
    fn name(&self) -> &str;
    fn id(&self) -> u32;
    /// Found by name and listed, not only found by id.
    fn listed(&self) -> bool;
}

impl Keyed for User {
    const LABEL: &'static str = "user";
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> u32 {
        self.uid
    }
    fn listed(&self) -> bool {
        self.listed
    }
}

impl Keyed for Group {
    const LABEL: &'static str = "group";
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> u32 {
        self.gid
    }
    fn listed(&self) -> bool {
        self.listed
    }
}

/// Rule 2's report of a shadowed record that disagrees with the winner.
pub fn conflict<R: Keyed>(
    winner: &R,
    winner_source: &str,
    loser: &R,
    loser_source: &str,
) -> Option<String> {
    ((winner.name(), winner.id()) != (loser.name(), loser.id())).then(|| {
        format!(
            "conflict: {label} {}:{} from {winner_source} wins over {label} {}:{} from {loser_source}",
            winner.name(),
            winner.id(),
            loser.name(),
            loser.id(),
            label = R::LABEL
        )
    })
}

/// A record offered for one key, by one source.
pub struct Candidate<'a, R> {
    pub rank: Rank,
    pub source: &'a str,
    pub record: &'a R,
}

/// Rules 1 and 2 for one key: the best-ranked candidate, and the conflicts
/// with the others.
pub fn pick<'a, R: Keyed>(
    mut candidates: Vec<Candidate<'a, R>>,
) -> (Option<Candidate<'a, R>>, Vec<String>) {
    candidates.sort_by(|a, b| a.rank.cmp(&b.rank));
    let mut candidates = candidates.into_iter();
    let Some(winner) = candidates.next() else {
        return (None, Vec::new());
    };
    let conflicts = candidates
        .filter_map(|loser| conflict(winner.record, winner.source, loser.record, loser.source))
        .collect();
    (Some(winner), conflicts)
}

/// Rule 4: a member list in first-seen order, each name once.
#[derive(Debug, Default)]
pub struct MemberList {
    members: Vec<Member>,
    /// Names counted but not listed ([`Self::skip`]).
    skipped: Vec<Name>,
    /// Every name counted, once there are too many to compare one by one
    /// (most groups have a few members; a few have thousands).
    index: Option<Set<Name>>,
}

/// Up to this many names are compared one by one.
const SCAN: usize = 16;

impl MemberList {
    pub fn add(&mut self, name: &Name, by_files: bool) {
        if self.count(name) {
            self.members.push(Member {
                name: Name::clone(name),
                by_files,
            });
        }
    }

    /// Counts `name` as listed without listing it: the caller has it from
    /// `/etc/group` already, and glibc's merge would repeat it.
    pub fn skip(&mut self, name: &Name) {
        if self.count(name) && self.index.is_none() {
            self.skipped.push(Name::clone(name));
        }
    }

    /// Counts `name`; whether it is new.
    fn count(&mut self, name: &Name) -> bool {
        if let Some(index) = &mut self.index {
            return index.insert(Name::clone(name));
        }
        let mut counted = self.members.iter().map(|m| &m.name).chain(&self.skipped);
        if counted.any(|n| n == name) {
            return false;
        }
        if self.members.len() + self.skipped.len() >= SCAN {
            let counted = self.members.iter().map(|m| &m.name).chain(&self.skipped);
            let mut index: Set<Name> = counted.chain([name]).cloned().collect();
            index.shrink_to_fit();
            self.index = Some(index);
            self.skipped = Vec::new();
        }
        true
    }

    pub fn into_members(self) -> Box<[Member]> {
        self.members.into_boxed_slice()
    }

    /// The members listed so far.
    pub fn listed(&self) -> &[Member] {
        &self.members
    }

    /// Empties the list, keeping its room for the next one.
    pub fn clear(&mut self) {
        self.members.clear();
        self.skipped.clear();
        self.index = None;
    }
}

/// One local source as the build takes it.
pub struct Loaded {
    pub info: SourceInfo,
    pub data: Arc<SourceData>,
    pub load: LoadReport,
}

/// The merged snapshot, and every problem and conflict found on the way
/// (the caller logs the new ones).
pub struct Merged {
    pub snapshot: Snapshot,
    pub messages: Vec<String>,
}

/// Builds the snapshot of the local sources by the rules above, in time
/// linear in the number of records and memberships.
pub fn build(mut sources: Vec<Loaded>, priority: &Priority, generation: u64) -> Merged {
    sources.sort_by_key(|s| priority.rank(&s.info));
    let mut b = Builder::with_capacity(&sources);
    b.snapshot.generation = generation;
    for (id, source) in sources.iter().enumerate() {
        b.snapshot.sources.push(SourceStatus {
            info: source.info.clone(),
            users: 0,
            groups: 0,
            memberships: 0,
            problems: source.data.problems.len(),
            load: source.load.clone(),
        });
        b.messages.extend(source.data.problems.iter().cloned());
        b.users_from.push(b.snapshot.users.len());
        for user in &source.data.users {
            b.add_user(id as SourceId, user);
        }
        b.users_until.push(b.snapshot.users.len());
        for group in &source.data.groups {
            b.add_group(id as SourceId, group);
        }
    }
    // Memberships stated by name, in priority order (rule 4).
    let s = &mut b.snapshot;
    let users = std::mem::take(&mut s.users);
    let mut stated: Vec<(&Name, &Name)> = Vec::with_capacity(b.stated);
    for (id, source) in sources.iter().enumerate() {
        let before = stated.len();
        for entry in &users[b.users_from[id]..b.users_until[id]] {
            let user = &entry.user;
            stated.extend(user.member_of.iter().map(|group| (&user.name, group)));
        }
        stated.extend(source.data.memberships.iter());
        s.sources[id].memberships = stated.len() - before;
    }
    s.stated_by_group = NameLists::from_pairs(stated.iter().map(|&(user, group)| (group, user)));
    // By user, only the groups no local record holds are ever asked for
    // (their gids come from the services): the others are left out.
    let unheld: Vec<(&Name, &Name)> = stated
        .iter()
        .copied()
        .filter(|(_, group)| s.group_by_name(group).is_none())
        .collect();
    s.unheld_by_user = NameLists::from_pairs(unheld.into_iter());
    finish_members(s);
    drop(stated);
    s.users = users;
    b.snapshot.built_at = Instant::now();
    Merged {
        snapshot: b.snapshot,
        messages: b.messages,
    }
}

#[derive(Default)]
struct Builder {
    snapshot: Snapshot,
    messages: Vec<String>,
    /// Names first had by a record found only by id (rule 2 and 3 count
    /// them; the snapshot's name index holds listed records only). Rare:
    /// systemd's `UID.user` drop-ins that no `NAME.user` links to.
    unlisted_users: Map<Name, u32>,
    unlisted_groups: Map<Name, u32>,
    /// The range of `snapshot.users` each source's visible users occupy.
    users_from: Vec<usize>,
    users_until: Vec<usize>,
    /// How many memberships the sources state by name.
    stated: usize,
}

/// The earlier source's record that shadows one from `id` with this name
/// or id, if any (rule 2): which record holds the name or id, and its source.
fn shadowing(
    by_name: Option<u32>,
    by_id: Option<u32>,
    source_of: impl Fn(u32) -> SourceId,
    id: SourceId,
) -> Option<(SourceId, u32)> {
    [by_name, by_id]
        .into_iter()
        .flatten()
        .map(|index| (source_of(index), index))
        .find(|(owner, _)| *owner != id)
}

/// What the log says of a record from source `id` that `winner`, from
/// source `owner`, shadows: a conflict, unless the two have the same keys.
fn shadowed<R: Keyed>(
    sources: &[SourceStatus],
    winner: &R,
    owner: SourceId,
    loser: &R,
    id: SourceId,
) -> Option<String> {
    let name = |id: SourceId| sources.get(id as usize).map_or("", |s| &*s.info.name);
    conflict(winner, name(owner), loser, name(id))
}

/// The indexes of one kind of record (rule 3: the first record to have a
/// name or an id holds it).
struct Keys<'a> {
    by_name: &'a mut NameIndex,
    /// Names first had by records found only by id.
    unlisted: &'a mut Map<Name, u32>,
    by_id: &'a mut Map<u32, u32>,
}

impl Keys<'_> {
    /// The records that have `name` and `id` first, if any; by name,
    /// listed or not: records are added in order, so the smaller index.
    fn holders<'n>(
        &self,
        name: &str,
        id: u32,
        name_of: impl Fn(u32) -> Option<&'n str>,
    ) -> (Option<u32>, Option<u32>) {
        let listed = self.by_name.get(name, name_of);
        let by_name = if self.unlisted.is_empty() {
            listed
        } else {
            listed
                .into_iter()
                .chain(self.unlisted.get(name).copied())
                .min()
        };
        (by_name, self.by_id.get(&id).copied())
    }

    /// Puts record `index` under its name and id where no record has them
    /// yet; whether it holds its name (only a listed record can) and its id.
    fn claim<'n>(
        self,
        name: &Name,
        id: u32,
        listed: bool,
        index: u32,
        name_of: impl Fn(u32) -> Option<&'n str>,
    ) -> (bool, bool) {
        let holds_name = if listed {
            self.by_name.claim(name, index, name_of)
        } else {
            if !self.unlisted.contains_key(name) {
                self.unlisted.insert(Name::clone(name), index);
            }
            false
        };
        let holds_id = match self.by_id.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
                true
            }
        };
        (holds_name, holds_id)
    }
}

impl Builder {
    /// A builder whose indexes have room for every record and membership
    /// of `sources`: at hundreds of thousands of records, growing them
    /// step by step cost more than filling them.
    fn with_capacity(sources: &[Loaded]) -> Builder {
        let count = |f: fn(&SourceData) -> usize| sources.iter().map(|s| f(&s.data)).sum();
        let users = count(|d| d.users.len());
        let groups = count(|d| d.groups.len());
        let stated = count(|d| {
            d.memberships.len() + d.users.iter().map(|u| u.member_of.len()).sum::<usize>()
        });
        let mut b = Builder {
            stated,
            ..Builder::default()
        };
        let s = &mut b.snapshot;
        s.users.reserve(users);
        s.user_by_name = NameIndex::with_capacity(users);
        s.user_by_uid.reserve(users);
        s.groups.reserve(groups);
        s.group_by_name = NameIndex::with_capacity(groups);
        s.group_by_gid.reserve(groups);
        s.members.reserve(users);
        s.member_by_name = NameIndex::with_capacity(users);
        b
    }

    fn add_user(&mut self, id: SourceId, user: &Arc<User>) {
        let s = &mut self.snapshot;
        let users = &s.users;
        let name_of = |at| user_name(users, at);
        let keys = Keys {
            by_name: &mut s.user_by_name,
            unlisted: &mut self.unlisted_users,
            by_id: &mut s.user_by_uid,
        };
        let (by_name, by_id) = keys.holders(&user.name, user.uid, name_of);
        if let Some((owner, index)) = shadowing(by_name, by_id, |i| users[i as usize].source, id) {
            let winner = &users[index as usize].user;
            let message = shadowed(&s.sources, &**winner, owner, &**user, id);
            self.messages.extend(message);
            return;
        }
        let index = users.len() as u32;
        let (holds_name, holds_id) = keys.claim(&user.name, user.uid, user.listed, index, name_of);
        if user.listed {
            s.sources[id as usize].users += 1;
        }
        s.users.push(UserEntry {
            user: Arc::clone(user),
            source: id,
            holds_name,
            holds_id,
        });
    }

    fn add_group(&mut self, id: SourceId, group: &Arc<Group>) {
        let s = &mut self.snapshot;
        let groups = &s.groups;
        let name_of = |at| group_name(groups, at);
        let keys = Keys {
            by_name: &mut s.group_by_name,
            unlisted: &mut self.unlisted_groups,
            by_id: &mut s.group_by_gid,
        };
        let (by_name, by_id) = keys.holders(&group.name, group.gid, name_of);
        if let Some((owner, index)) = shadowing(by_name, by_id, |i| groups[i as usize].source, id) {
            let winner = &groups[index as usize].group;
            let message = shadowed(&s.sources, &**winner, owner, &**group, id);
            self.messages.extend(message);
            return;
        }
        let index = groups.len() as u32;
        let (holds_name, holds_id) =
            keys.claim(&group.name, group.gid, group.listed, index, name_of);
        if group.listed {
            s.sources[id as usize].groups += 1;
        }
        s.groups.push(GroupEntry {
            group: Arc::clone(group),
            source: id,
            holds_name,
            holds_id,
            members: Box::default(),
        });
    }
}

/// Rules 4 and 5 for every group.
fn finish_members(s: &mut Snapshot) {
    let mut counts: Vec<u32> = Vec::with_capacity(s.members.capacity());
    // One list for every group in turn: only each group's final places
    // are allocated, by the hundred thousand.
    let mut members = MemberList::default();
    for entry in s.groups.iter_mut() {
        let by_files = s
            .sources
            .get(entry.source as usize)
            .is_some_and(|src| src.info.kind == SourceKind::Files);
        members.clear();
        for name in entry.group.members.iter() {
            members.add(name, by_files);
        }
        if entry.holds_name {
            for name in s.stated_by_group.get(&entry.group.name) {
                members.add(name, false);
            }
        }
        let mut refs = Vec::with_capacity(members.listed().len());
        for member in members.listed() {
            let known = |at| member_name(&s.members, at);
            let at = match s.member_by_name.get(&member.name, known) {
                Some(at) => at,
                None => {
                    let at = s.members.len() as u32;
                    s.members.push(MemberName {
                        name: Name::clone(&member.name),
                        groups: 0..0,
                    });
                    let members = &s.members;
                    s.member_by_name
                        .claim(&member.name, at, |i| member_name(members, i));
                    counts.push(0);
                    at
                }
            };
            counts[at as usize] += 1;
            refs.push(MemberRef {
                at,
                by_files: member.by_files,
            });
        }
        entry.members = refs.into_boxed_slice();
    }
    // Each member's groups, one list after another.
    let mut next = 0;
    for (member, count) in s.members.iter_mut().zip(&counts) {
        member.groups = next..next;
        next += count;
    }
    s.member_groups = vec![
        GroupRef {
            group: 0,
            by_files: false
        };
        next as usize
    ];
    for (index, entry) in s.groups.iter().enumerate() {
        for member in entry.members.iter() {
            let groups = &mut s.members[member.at as usize].groups;
            s.member_groups[groups.end as usize] = GroupRef {
                group: index as u32,
                by_files: member.by_files,
            };
            groups.end += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use userdb_proto::record::{GroupRecord, UserRecord};

    fn user(name: &str, uid: u32, member_of: &[&str]) -> Arc<User> {
        let mut u = User::from_nss(
            UserRecord {
                name: name.into(),
                uid,
                gid: uid,
                gecos: String::new(),
                home: "/".into(),
                shell: "/bin/sh".into(),
                shadow: None,
            },
            true,
        );
        u.member_of = member_of.iter().map(|g| Name::from(*g)).collect();
        Arc::new(u)
    }

    fn group(name: &str, gid: u32, members: &[&str]) -> Arc<Group> {
        Arc::new(Group::from_nss(
            GroupRecord {
                name: name.into(),
                gid,
                members: members.iter().map(|m| m.to_string()).collect(),
                shadow: None,
            },
            true,
        ))
    }

    fn loaded(kind: SourceKind, data: SourceData) -> Loaded {
        Loaded {
            info: SourceInfo::local(kind),
            data: Arc::new(data),
            load: LoadReport::default(),
        }
    }

    fn pair(u: &str, g: &str) -> (Name, Name) {
        (Name::from(u), Name::from(g))
    }

    fn default_priority() -> Priority {
        Priority::new(vec!["files".into(), "dropins".into()])
    }

    fn two_sources() -> Merged {
        let files = SourceData {
            users: vec![user("root", 0, &[]), user("alice", 1000, &[])],
            groups: vec![group("wheel", 10, &["alice"]), group("users", 100, &[])],
            ..Default::default()
        };
        let dropins = SourceData {
            users: vec![
                user("alice", 2000, &["devs"]),
                user("mallory", 0, &[]),
                user("bob", 1001, &["wheel", "devs"]),
            ],
            groups: vec![
                group("wheel", 5000, &["mallory"]),
                group("devs", 500, &["bob"]),
            ],
            memberships: [pair("dave", "wheel"), pair("alice", "wheel")]
                .into_iter()
                .collect(),
            problems: vec!["x.user: skipped: broken".into()],
        };
        // Given in the wrong order: build sorts by priority.
        build(
            vec![
                loaded(SourceKind::DropIns, dropins),
                loaded(SourceKind::Files, files),
            ],
            &default_priority(),
            7,
        )
    }

    fn member_names<'s>(s: &'s Snapshot, entry: &'s GroupEntry) -> Vec<&'s str> {
        s.members_of(entry).map(|(name, _)| name.as_ref()).collect()
    }

    #[test]
    fn first_source_wins_and_conflicts_are_reported() {
        let merged = two_sources();
        let s = &merged.snapshot;
        assert_eq!(s.generation, 7);
        assert_eq!(s.user_by_name("alice").unwrap().user.uid, 1000);
        assert_eq!(s.user_by_uid(0).unwrap().user.name.as_ref(), "root");
        assert!(s.user_by_name("mallory").is_none());
        assert!(
            s.user_by_uid(2000).is_none(),
            "a shadowed record answers nothing"
        );
        assert_eq!(s.group_by_name("wheel").unwrap().group.gid, 10);
        assert!(s.group_by_gid(5000).is_none());
        assert_eq!(
            merged.messages,
            [
                "x.user: skipped: broken",
                "conflict: user alice:1000 from files wins over user alice:2000 from dropins",
                "conflict: user root:0 from files wins over user mallory:0 from dropins",
                "conflict: group wheel:10 from files wins over group wheel:5000 from dropins",
            ]
        );
    }

    #[test]
    fn a_shadowed_record_contributes_no_members() {
        let merged = two_sources();
        let s = &merged.snapshot;
        let wheel = s.group_by_name("wheel").unwrap();
        // mallory is listed only by the shadowed wheel:5000; alice's
        // memberOf of the shadowed alice:2000 does not count either.
        assert_eq!(member_names(s, wheel), ["alice", "bob", "dave"]);
        assert_eq!(
            wheel.members.iter().map(|m| m.by_files).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(member_names(s, s.group_by_name("devs").unwrap()), ["bob"]);
        assert_eq!(s.groups_of("mallory").count(), 0);
        let bob: Vec<&str> = s.groups_of("bob").map(|g| g.group.name.as_ref()).collect();
        assert_eq!(bob, ["wheel", "devs"]);
    }

    #[test]
    fn duplicate_lines_in_one_source_keep_each_key_and_their_own_members() {
        let files = SourceData {
            users: vec![
                user("dup", 1, &[]),
                user("dup", 2, &[]),
                user("other", 1, &[]),
            ],
            groups: vec![group("dupg", 1004, &["x1"]), group("dupg", 1005, &["x2"])],
            ..Default::default()
        };
        let merged = build(
            vec![loaded(SourceKind::Files, files)],
            &default_priority(),
            1,
        );
        let s = &merged.snapshot;
        assert_eq!(s.user_by_name("dup").unwrap().user.uid, 1);
        assert_eq!(s.user_by_uid(2).unwrap().user.name.as_ref(), "dup");
        assert_eq!(s.user_by_uid(1).unwrap().user.name.as_ref(), "dup");
        let x2: Vec<u32> = s.groups_of("x2").map(|g| g.group.gid).collect();
        assert_eq!(x2, [1005]);
        assert_eq!(member_names(s, s.group_by_gid(1005).unwrap()), ["x2"]);
        assert!(merged.messages.is_empty(), "{:?}", merged.messages);
    }

    #[test]
    fn pid1_sources_rank_last_whatever_the_order() {
        let custom = Priority::new(vec!["dynamic".into(), "files".into()]);
        let dynamic = SourceInfo::local(SourceKind::DynamicUsers);
        let files = SourceInfo::local(SourceKind::Files);
        assert!(custom.rank(&files) < custom.rank(&dynamic));
        let service = |name: &str, pid1| SourceInfo {
            name: name.into(),
            kind: SourceKind::Varlink,
            pid1_users: pid1,
        };
        let p = default_priority();
        let mut ranks = [
            service("io.systemd.Home", false),
            SourceInfo::local(SourceKind::DropIns),
            service("io.systemd.DynamicUser", true),
            files.clone(),
            service("io.a.Directory", false),
        ]
        .map(|s| (p.rank(&s), s.name));
        ranks.sort();
        assert_eq!(
            ranks.map(|(_, n)| n),
            [
                "files",
                "dropins",
                "io.a.Directory",
                "io.systemd.Home",
                "io.systemd.DynamicUser"
            ]
        );
    }

    #[test]
    fn pick_takes_the_best_rank_and_reports_disagreement() {
        let p = default_priority();
        let files = SourceInfo::local(SourceKind::Files);
        let svc = SourceInfo {
            name: "io.a.Directory".into(),
            kind: SourceKind::Varlink,
            pid1_users: false,
        };
        let a = user("alice", 1000, &[]);
        let b = user("alice", 6000, &[]);
        let (winner, conflicts) = pick(vec![
            Candidate {
                rank: p.rank(&svc),
                source: &svc.name,
                record: &*b,
            },
            Candidate {
                rank: p.rank(&files),
                source: &files.name,
                record: &*a,
            },
        ]);
        assert_eq!(winner.unwrap().record.uid, 1000);
        assert_eq!(
            conflicts,
            ["conflict: user alice:1000 from files wins over user alice:6000 from io.a.Directory"]
        );
        let (none, _) = pick::<User>(Vec::new());
        assert!(none.is_none());
    }

    #[test]
    fn a_users_stated_groups_that_no_local_record_holds_are_kept_for_the_services() {
        // Kept by user only where no local record holds the group: none of
        // bob's in two_sources (wheel and devs are local), all four with no
        // local group, svc and devs once files hold wheel and svc2.
        let mut merged = two_sources();
        let names = |s: &Snapshot, user| -> Vec<String> {
            s.stated_unheld_groups(user)
                .iter()
                .map(|g| g.to_string())
                .collect()
        };
        assert!(names(&merged.snapshot, "bob").is_empty());
        let dropins = SourceData {
            users: vec![user("bob", 1001, &["wheel", "svc"])],
            memberships: [pair("bob", "devs"), pair("bob", "svc2")]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        merged = build(
            vec![loaded(SourceKind::DropIns, dropins)],
            &default_priority(),
            8,
        );
        assert_eq!(
            names(&merged.snapshot, "bob"),
            ["wheel", "svc", "devs", "svc2"]
        );
        let files = SourceData {
            groups: vec![group("wheel", 10, &[]), group("svc2", 600, &[])],
            ..Default::default()
        };
        let dropins = SourceData {
            users: vec![user("bob", 1001, &["wheel", "svc"])],
            memberships: [pair("bob", "devs"), pair("bob", "svc2")]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        merged = build(
            vec![
                loaded(SourceKind::Files, files),
                loaded(SourceKind::DropIns, dropins),
            ],
            &default_priority(),
            9,
        );
        assert_eq!(names(&merged.snapshot, "bob"), ["svc", "devs"]);
    }

    #[test]
    fn building_is_linear_at_scale() {
        // 100,000 users in two sources that list the same names: each
        // duplicate costs a hash look-up, not a scan of earlier winners.
        let users: Vec<Arc<User>> = (0..100_000)
            .map(|i| user(&format!("u{i}"), 10_000 + i, &[]))
            .collect();
        let files = SourceData {
            users: users.clone(),
            groups: vec![group("big", 5, &[])],
            ..Default::default()
        };
        let dropins = SourceData {
            users,
            memberships: (0..100_000)
                .map(|i| pair(&format!("u{i}"), "big"))
                .collect(),
            ..Default::default()
        };
        let started = Instant::now();
        let merged = build(
            vec![
                loaded(SourceKind::Files, files),
                loaded(SourceKind::DropIns, dropins),
            ],
            &default_priority(),
            1,
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(merged.snapshot.users().count(), 100_000);
        assert_eq!(
            merged.snapshot.group_by_gid(5).unwrap().members.len(),
            100_000
        );
    }
}
