//! Answers look-ups from the local snapshot and the Varlink services
//! together, by the rules of `merge`:
//!
//! - with no service to ask, the snapshot is the whole answer (it was built
//!   by those rules);
//! - otherwise, per key: the snapshot's record and the services' records for
//!   that key are candidates, the best-ranked wins ([`merge::pick`]); services
//!   ranked below a local hit are not asked for it; a group's members are
//!   the winner's own, then the memberships stated by name for it, local and
//!   remote ([`merge::MemberList`]); listings drop every record whose name or
//!   id a better-ranked one already has.
//!
//! What the caller asked leaves things out by the rules of
//! `userdb_proto::visibility` (shared with the module's snapshot-file
//! reader), applied to the snapshot by [`View`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};
use userdb_proto::api::LookupOptions;
use userdb_proto::visibility;

use crate::log_once::LogOnce;
use crate::merge::{self, Candidate, MemberList, Priority};
use crate::model::{Group, Name, User};
use crate::snapshot::{GroupEntry, Snapshot, SnapshotStore, SourceId, UserEntry};
use crate::sources::varlink::{Answers, Request, VarlinkSource, VarlinkSources};
use crate::sources::{SourceData, SourceInfo};

/// A look-up key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Name(&'a str),
    Id(u32),
}

/// A group as answered: its record and its merged members.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundGroup {
    pub group: Arc<Group>,
    pub members: Vec<Name>,
}

/// A miss that may not be one: these services could not be asked or did
/// not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete(pub Vec<String>);

/// A look-up's answer: found, not found, or not known for sure.
pub type Answer<T> = Result<Option<T>, Incomplete>;

/// One membership as answered; `gid` when the group is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub user: Name,
    pub group: Name,
    pub gid: Option<u32>,
}

/// What a request's options leave out of the snapshot's answers.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    snapshot: &'a Snapshot,
    options: LookupOptions,
}

impl<'a> View<'a> {
    pub fn new(snapshot: &'a Snapshot, options: LookupOptions) -> Self {
        View { snapshot, options }
    }

    fn visible(&self, source: SourceId) -> bool {
        visibility::visible(self.snapshot.origin(source), self.options)
    }

    fn listed(&self, source: SourceId) -> bool {
        visibility::listed(self.snapshot.origin(source), self.options)
    }

    pub fn user(&self, key: Key) -> Option<&'a UserEntry> {
        let entry = match key {
            Key::Name(n) => self.snapshot.user_by_name(n),
            Key::Id(id) => self.snapshot.user_by_uid(id),
        }?;
        self.visible(entry.source).then_some(entry)
    }

    pub fn group(&self, key: Key) -> Option<&'a GroupEntry> {
        let entry = match key {
            Key::Name(n) => self.snapshot.group_by_name(n),
            Key::Id(id) => self.snapshot.group_by_gid(id),
        }?;
        self.visible(entry.source).then_some(entry)
    }

    /// The members of a local group this caller does not have already.
    pub fn members(&self, entry: &'a GroupEntry) -> impl Iterator<Item = &'a Name> + 'a {
        let options = self.options;
        self.snapshot
            .members_of(entry)
            .filter(move |(_, by_files)| visibility::member_answered(*by_files, options))
            .map(|(name, _)| name)
    }

    /// Starts a merged member list with a local group's members: those the
    /// caller has already are counted but not listed, so that nobody else
    /// can list them again.
    pub fn fill(&self, entry: &GroupEntry, members: &mut MemberList) {
        for (name, by_files) in self.snapshot.members_of(entry) {
            if visibility::member_answered(by_files, self.options) {
                members.add(name, false);
            } else {
                members.skip(name);
            }
        }
    }

    /// Users in enumeration order.
    pub fn users(&self) -> impl Iterator<Item = &'a UserEntry> + 'a {
        let view = *self;
        self.snapshot.users().filter(move |u| view.listed(u.source))
    }

    pub fn groups(&self) -> impl Iterator<Item = &'a GroupEntry> + 'a {
        let view = *self;
        self.snapshot
            .groups()
            .filter(move |g| view.listed(g.source))
    }

    /// The local groups that list `user`, less those whose `/etc/group`
    /// line states it when the caller reads that file itself.
    pub fn groups_of(&self, user: &'a str) -> impl Iterator<Item = &'a GroupEntry> + 'a {
        let view = *self;
        self.snapshot.groups_of(user).filter(move |g| {
            view.visible(g.source)
                && view.snapshot.members_of(g).any(|(name, by_files)| {
                    &**name == user && visibility::member_answered(by_files, view.options)
                })
        })
    }
}

pub struct Resolver {
    store: Arc<SnapshotStore>,
    varlink: Arc<VarlinkSources>,
    priority: RwLock<Priority>,
    conflicts: Mutex<LogOnce>,
}

impl Resolver {
    pub fn new(
        store: Arc<SnapshotStore>,
        varlink: Arc<VarlinkSources>,
        priority: Priority,
    ) -> Self {
        Resolver {
            store,
            varlink,
            priority: RwLock::new(priority),
            conflicts: Mutex::default(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.current()
    }

    pub fn varlink(&self) -> &VarlinkSources {
        &self.varlink
    }

    pub fn set_priority(&self, priority: Priority) {
        match self.priority.write() {
            Ok(mut p) => *p = priority,
            Err(poisoned) => *poisoned.into_inner() = priority,
        }
    }

    fn priority(&self) -> Priority {
        match self.priority.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The services a request with these options asks now; none means the
    /// snapshot answers alone, at once.
    pub fn services(&self, options: LookupOptions) -> Vec<Arc<VarlinkSource>> {
        self.varlink.usable(options.dynamic_bypass)
    }

    fn log_conflicts(&self, messages: Vec<String>) {
        if messages.is_empty() {
            return;
        }
        let mut log = self
            .conflicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for message in messages {
            if log.first(&message) {
                tracing::warn!("{message}");
            }
        }
    }

    /// The services ranked above `local` (all of them without a local hit).
    fn above(
        &self,
        services: Vec<Arc<VarlinkSource>>,
        local: Option<&SourceInfo>,
    ) -> Vec<Arc<VarlinkSource>> {
        let priority = self.priority();
        match local {
            None => services,
            Some(local) => {
                let local = priority.rank(local);
                services
                    .into_iter()
                    .filter(|s| priority.rank(&s.info) < local)
                    .collect()
            }
        }
    }

    pub fn user(&self, key: Key, options: LookupOptions) -> Answer<Arc<User>> {
        let mut failed = Vec::new();
        let found = self.find_user(key, options, &mut failed);
        self.settle(found, failed, options)
    }

    pub fn group(&self, key: Key, options: LookupOptions) -> Answer<FoundGroup> {
        let mut failed = Vec::new();
        let found = self.find_group(key, options, &mut failed);
        self.settle(found, failed, options)
    }

    /// A miss is a miss only if every service that would be asked answered.
    fn settle<T>(
        &self,
        found: Option<T>,
        failed: Vec<String>,
        options: LookupOptions,
    ) -> Answer<T> {
        if found.is_some() {
            return Ok(found);
        }
        let mut down = self.varlink.down(options.dynamic_bypass);
        down.extend(failed);
        down.sort();
        down.dedup();
        if down.is_empty() {
            Ok(None)
        } else {
            Err(Incomplete(down))
        }
    }

    fn find_user(
        &self,
        key: Key,
        options: LookupOptions,
        failed: &mut Vec<String>,
    ) -> Option<Arc<User>> {
        let snapshot = self.snapshot();
        let view = View::new(&snapshot, options);
        let local = view.user(key);
        let local_info = local.and_then(|u| snapshot.source(u.source));
        let services = self.above(self.services(options), local_info);
        if services.is_empty() {
            return local.map(|u| Arc::clone(&u.user));
        }
        let request = match key {
            Key::Name(n) => Request::UserByName(n.to_owned()),
            Key::Id(id) => Request::UserById(id),
        };
        let answers = self.varlink.ask(services, &[request]);
        failed.extend(failures(&answers));
        let priority = self.priority();
        let mut candidates: Vec<Candidate<User>> = remote_records(&answers, 0, |d| &d.users)
            .map(|(source, user)| Candidate {
                rank: priority.rank(&source.info),
                source: source.name(),
                record: &**user,
            })
            .collect();
        if let (Some(entry), Some(info)) = (local, local_info) {
            candidates.push(Candidate {
                rank: priority.rank(info),
                source: &info.name,
                record: &entry.user,
            });
        }
        let (winner, conflicts) = merge::pick(candidates);
        self.log_conflicts(conflicts);
        let winner = winner?;
        // The winner is either the local entry or a record of an answer.
        Some(match local {
            Some(entry) if std::ptr::eq(winner.record, &*entry.user) => Arc::clone(&entry.user),
            _ => remote_records(&answers, 0, |d| &d.users)
                .map(|(_, u)| u)
                .find(|u| std::ptr::eq(&***u, winner.record))
                .cloned()?,
        })
    }

    fn find_group(
        &self,
        key: Key,
        options: LookupOptions,
        failed: &mut Vec<String>,
    ) -> Option<FoundGroup> {
        let snapshot = self.snapshot();
        let view = View::new(&snapshot, options);
        let local = view.group(key);
        let services = self.services(options);
        if services.is_empty() {
            return local.map(|entry| FoundGroup {
                group: Arc::clone(&entry.group),
                members: view.members(entry).cloned().collect(),
            });
        }
        let local_info = local.and_then(|g| snapshot.source(g.source));
        let above = self.above(services.clone(), local_info);
        let request = match key {
            Key::Name(n) => Request::GroupByName(n.to_owned()),
            Key::Id(id) => Request::GroupById(id),
        };
        let answers = self.varlink.ask(above, &[request]);
        failed.extend(failures(&answers));
        let priority = self.priority();
        let mut candidates: Vec<Candidate<Group>> = remote_records(&answers, 0, |d| &d.groups)
            .map(|(source, group)| Candidate {
                rank: priority.rank(&source.info),
                source: source.name(),
                record: &**group,
            })
            .collect();
        if let (Some(entry), Some(info)) = (local, local_info) {
            candidates.push(Candidate {
                rank: priority.rank(info),
                source: &info.name,
                record: &entry.group,
            });
        }
        let (winner, conflicts) = merge::pick(candidates);
        self.log_conflicts(conflicts);
        let winner = winner?;
        let name = winner.record.name.clone();
        // Every service may state members of the winner by name.
        let stated = self.varlink.ask(
            services,
            &[Request::Memberships {
                user: None,
                group: Some(name.to_string()),
            }],
        );
        let mut members = MemberList::default();
        let group = match local {
            Some(entry) if std::ptr::eq(winner.record, &*entry.group) => {
                view.fill(entry, &mut members);
                Arc::clone(&entry.group)
            }
            _ => {
                let group = remote_records(&answers, 0, |d| &d.groups)
                    .map(|(_, g)| g)
                    .find(|g| std::ptr::eq(&***g, winner.record))
                    .cloned()?;
                for name in group.members.iter().chain(snapshot.stated_members(&name)) {
                    members.add(name, false);
                }
                group
            }
        };
        for answer in &stated {
            for (user, _) in answer
                .data
                .first()
                .into_iter()
                .flat_map(|a| a.memberships.iter())
            {
                members.add(user, false);
            }
        }
        Some(FoundGroup {
            group,
            members: members
                .into_members()
                .into_vec()
                .into_iter()
                .map(|m| m.name)
                .collect(),
        })
    }

    /// Memberships of a user, of a group, one pair, or all of them.
    pub fn memberships(
        &self,
        user: Option<&str>,
        group: Option<&str>,
        options: LookupOptions,
    ) -> Vec<Membership> {
        match (user, group) {
            (Some(u), Some(g)) => self
                .memberships_of_user(u, options)
                .into_iter()
                .filter(|m| &*m.group == g)
                .collect(),
            (Some(u), None) => self.memberships_of_user(u, options),
            (None, Some(g)) => self
                .group(Key::Name(g), options)
                .ok()
                .flatten()
                .map(|found| {
                    found
                        .members
                        .into_iter()
                        .map(|user| Membership {
                            user,
                            group: Name::clone(&found.group.name),
                            gid: Some(found.group.gid),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            (None, None) => {
                let mut all = Vec::new();
                for found in self.groups(options) {
                    for user in found.members {
                        all.push(Membership {
                            user,
                            group: Name::clone(&found.group.name),
                            gid: Some(found.group.gid),
                        });
                    }
                }
                all
            }
        }
    }

    fn memberships_of_user(&self, user: &str, options: LookupOptions) -> Vec<Membership> {
        let snapshot = self.snapshot();
        let view = View::new(&snapshot, options);
        let mut seen: HashSet<Name> = HashSet::new();
        let mut out = Vec::new();
        let user_name = Name::from(user);
        for entry in view.groups_of(user) {
            if seen.insert(Name::clone(&entry.group.name)) {
                out.push(Membership {
                    user: Name::clone(&user_name),
                    group: Name::clone(&entry.group.name),
                    gid: Some(entry.group.gid),
                });
            }
        }
        let services = self.services(options);
        if services.is_empty() {
            return out;
        }
        // Groups stated locally by name but not held locally, and every
        // membership the services state: their gids come from the services.
        let mut unresolved: Vec<Name> = snapshot.stated_unheld_groups(user).to_vec();
        let answers = self.varlink.ask(
            services,
            &[Request::Memberships {
                user: Some(user.to_owned()),
                group: None,
            }],
        );
        for answer in &answers {
            for (_, group) in answer
                .data
                .first()
                .into_iter()
                .flat_map(|a| a.memberships.iter())
            {
                unresolved.push(Name::clone(group));
            }
        }
        for group in unresolved {
            if seen.insert(Name::clone(&group)) {
                let gid = self
                    .group(Key::Name(&group), options)
                    .ok()
                    .flatten()
                    .map(|g| g.group.gid);
                out.push(Membership {
                    user: Name::clone(&user_name),
                    group,
                    gid,
                });
            }
        }
        out
    }

    /// Every user, by priority, each name and id once.
    pub fn users(&self, options: LookupOptions) -> UserListing {
        let snapshot = self.snapshot();
        let services = self.services(options);
        if services.is_empty() {
            return UserListing::Local {
                snapshot,
                options,
                next: 0,
            };
        }
        let answers = self.varlink.ask(services, &[Request::AllUsers]);
        let view = View::new(&snapshot, options);
        let winners = self.listed_winners(
            &view,
            snapshot.users().map(|u| (u.source, &u.user)),
            remote_records(&answers, 0, |d| &d.users),
        );
        UserListing::Merged {
            items: winners.into_iter().cloned().collect(),
            next: 0,
        }
    }

    /// Every group, by priority, each name and id once, members merged.
    pub fn groups(&self, options: LookupOptions) -> GroupListing {
        let snapshot = self.snapshot();
        let services = self.services(options);
        if services.is_empty() {
            return GroupListing::Local {
                snapshot,
                options,
                next: 0,
            };
        }
        let answers = self.varlink.ask(
            services,
            &[
                Request::AllGroups,
                Request::Memberships {
                    user: None,
                    group: None,
                },
            ],
        );
        let view = View::new(&snapshot, options);
        let mut remote_members: HashMap<&str, Vec<&Name>> = HashMap::new();
        for answer in &answers {
            for (user, group) in answer
                .data
                .get(1)
                .into_iter()
                .flat_map(|a| a.memberships.iter())
            {
                remote_members.entry(group).or_default().push(user);
            }
        }
        let winners = self.listed_winners(
            &view,
            snapshot.groups().map(|g| (g.source, &g.group)),
            remote_records(&answers, 0, |d| &d.groups),
        );
        let local_entries: HashMap<*const Group, &GroupEntry> = snapshot
            .groups()
            .map(|g| (Arc::as_ptr(&g.group), g))
            .collect();
        let items = winners
            .into_iter()
            .map(|group| {
                let mut members = MemberList::default();
                match local_entries.get(&Arc::as_ptr(group)) {
                    Some(entry) => view.fill(entry, &mut members),
                    None => group
                        .members
                        .iter()
                        .chain(snapshot.stated_members(&group.name))
                        .for_each(|m| members.add(m, false)),
                }
                for user in remote_members.get(&*group.name).into_iter().flatten() {
                    members.add(user, false);
                }
                FoundGroup {
                    group: Arc::clone(group),
                    members: members
                        .into_members()
                        .into_vec()
                        .into_iter()
                        .map(|m| m.name)
                        .collect(),
                }
            })
            .collect();
        GroupListing::Merged { items, next: 0 }
    }

    /// A listing by rule 2 over the local records and the services'
    /// answers. Records the caller reads itself still take their keys; they
    /// are only not listed.
    fn listed_winners<'a, R: merge::Keyed>(
        &self,
        view: &View<'a>,
        local: impl Iterator<Item = (SourceId, &'a Arc<R>)>,
        remote: impl Iterator<Item = (&'a Arc<VarlinkSource>, &'a Arc<R>)>,
    ) -> Vec<&'a Arc<R>> {
        let priority = self.priority();
        let mut candidates: Vec<(merge::Rank, &str, &Arc<R>, bool)> = local
            .filter(|(source, _)| view.visible(*source))
            .filter_map(|(source, record)| {
                let info = view.snapshot.source(source)?;
                Some((
                    priority.rank(info),
                    info.name.as_str(),
                    record,
                    view.listed(source),
                ))
            })
            .collect();
        candidates.extend(
            remote
                .filter(|(_, record)| record.listed())
                .map(|(s, record)| (priority.rank(&s.info), s.name(), record, true)),
        );
        let (winners, conflicts) = first_per_key(candidates);
        self.log_conflicts(conflicts);
        winners
    }

    /// Every source in priority order, for status output.
    pub fn sources_status(&self) -> Vec<Value> {
        let snapshot = self.snapshot();
        let priority = self.priority();
        let mut ranked: Vec<(merge::Rank, Value)> = snapshot
            .sources
            .iter()
            .map(|s| {
                let status = json!({
                    "name": s.info.name,
                    "kind": s.info.kind.name(),
                    "state": if s.load.last_error.is_some() { "failing, last good data kept" } else { "ok" },
                    "servedByPid1": s.info.pid1_users,
                    "users": s.users,
                    "groups": s.groups,
                    "memberships": s.memberships,
                    "problems": s.problems,
                    "latencyUSec": s.load.took.as_micros() as u64,
                    "lastError": s.load.last_error,
                });
                (priority.rank(&s.info), status)
            })
            .collect();
        ranked.extend(
            self.varlink
                .all()
                .iter()
                .map(|s| (priority.rank(&s.info), s.status())),
        );
        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        ranked.into_iter().map(|(_, v)| v).collect()
    }
}

/// The services whose answer could not be had.
fn failures(answers: &Answers) -> impl Iterator<Item = String> + '_ {
    answers
        .iter()
        .filter(|a| a.failed)
        .map(|a| a.source.name().to_owned())
}

/// The records of every answer to request `index`, with their service.
fn remote_records<'a, T: 'a>(
    answers: &'a Answers,
    index: usize,
    records: fn(&SourceData) -> &Vec<Arc<T>>,
) -> impl Iterator<Item = (&'a Arc<VarlinkSource>, &'a Arc<T>)> + 'a {
    answers.iter().flat_map(move |answer| {
        let source = &answer.source;
        answer
            .data
            .get(index)
            .into_iter()
            .flat_map(move |data| records(data).iter())
            .map(move |record| (source, record))
    })
}

/// Rule 2 over a listing, in linear time: in priority order (stable, so each
/// source's own order is kept), a record whose name or id an earlier source
/// has is dropped; within one source duplicates stay, as `files` lists them.
/// Each candidate says whether it is to be listed; one that is not still
/// takes its keys.
fn first_per_key<'a, R: merge::Keyed>(
    mut candidates: Vec<(merge::Rank, &'a str, &'a Arc<R>, bool)>,
) -> (Vec<&'a Arc<R>>, Vec<String>) {
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: HashMap<&str, (&str, &Arc<R>)> = HashMap::new();
    let mut ids: HashMap<u32, (&str, &Arc<R>)> = HashMap::new();
    let mut winners = Vec::with_capacity(candidates.len());
    let mut conflicts = Vec::new();
    for (_, source, record, listed) in candidates {
        let taken = [names.get(record.name()), ids.get(&record.id())]
            .into_iter()
            .flatten()
            .find(|(owner, _)| *owner != source)
            .copied();
        if let Some((owner, winner)) = taken {
            conflicts.extend(merge::conflict(&**winner, owner, &**record, source));
            continue;
        }
        names.entry(record.name()).or_insert((source, record));
        ids.entry(record.id()).or_insert((source, record));
        if listed {
            winners.push(record);
        }
    }
    (winners, conflicts)
}

/// A listing handed out one item at a time, so that a stream is produced as
/// the client reads it: from the snapshot itself when no service is asked,
/// otherwise from the merged list.
pub enum UserListing {
    Local {
        snapshot: Arc<Snapshot>,
        options: LookupOptions,
        next: usize,
    },
    Merged {
        items: Vec<Arc<User>>,
        next: usize,
    },
}

impl Iterator for UserListing {
    type Item = Arc<User>;

    fn next(&mut self) -> Option<Arc<User>> {
        match self {
            UserListing::Local {
                snapshot,
                options,
                next,
            } => {
                let view = View::new(snapshot, *options);
                let users = snapshot.all_users();
                while let Some(entry) = users.get(*next) {
                    *next += 1;
                    if entry.user.listed && view.listed(entry.source) {
                        return Some(Arc::clone(&entry.user));
                    }
                }
                None
            }
            UserListing::Merged { items, next } => {
                let item = items.get(*next).cloned();
                *next += 1;
                item
            }
        }
    }
}

/// As [`UserListing`], for groups with their merged members.
pub enum GroupListing {
    Local {
        snapshot: Arc<Snapshot>,
        options: LookupOptions,
        next: usize,
    },
    Merged {
        items: Vec<FoundGroup>,
        next: usize,
    },
}

impl Iterator for GroupListing {
    type Item = FoundGroup;

    fn next(&mut self) -> Option<FoundGroup> {
        match self {
            GroupListing::Local {
                snapshot,
                options,
                next,
            } => {
                let view = View::new(snapshot, *options);
                let groups = snapshot.all_groups();
                while let Some(entry) = groups.get(*next) {
                    *next += 1;
                    if entry.group.listed && view.listed(entry.source) {
                        return Some(FoundGroup {
                            group: Arc::clone(&entry.group),
                            members: view.members(entry).cloned().collect(),
                        });
                    }
                }
                None
            }
            GroupListing::Merged { items, next } => {
                let item = items.get(*next).cloned();
                *next += 1;
                item
            }
        }
    }
}
