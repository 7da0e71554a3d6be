//! One immutable, indexed view of every local source, built by `merge`,
//! swapped in whole by the watcher, read by every request and published to
//! the snapshot file.
//!
//! Swapping never stalls a reader: the new snapshot is put in place under a
//! write lock held for one pointer store, and the old one is freed later by
//! the watcher ([`SnapshotStore::reap`]), never by a request that happened to
//! hold the last reference.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use userdb_proto::visibility::Origin;

use crate::model::{Group, Name, User};
use crate::sources::{LoadReport, SourceInfo, SourceKind};

/// Index of a source in [`Snapshot::sources`].
pub type SourceId = u32;

/// The maps of a snapshot and of its building. Every key in them comes from
/// a local source, which only root can write (`/etc`, the drop-in
/// directories, PID 1's links; a Varlink service's records never enter a
/// snapshot), and a caller's name only ever looks one up: nobody else can
/// choose keys that collide. So a fast hash (foldhash, seeded per map) is
/// used where SipHash's defence against flooding cost a third of every
/// rebuild at 100,000 users.
pub(crate) type Map<K, V> = foldhash::HashMap<K, V>;
pub(crate) type Set<T> = foldhash::HashSet<T>;

/// Record numbers by name, four bytes a slot where a map would hold the
/// name too: the name is read from the record (`name_of`). The records'
/// vectors are indexed this way at hundreds of thousands of entries.
#[derive(Debug, Default)]
pub(crate) struct NameIndex {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl NameIndex {
    pub fn with_capacity(capacity: usize) -> NameIndex {
        NameIndex {
            table: hashbrown::HashTable::with_capacity(capacity),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The record of `name`, given each record's name.
    pub fn get<'a>(&self, name: &str, name_of: impl Fn(u32) -> Option<&'a str>) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&at| name_of(at) == Some(name))
            .copied()
    }

    /// Records `index` under `name` unless a record has it already;
    /// whether it did.
    pub fn claim<'a>(
        &mut self,
        name: &str,
        index: u32,
        name_of: impl Fn(u32) -> Option<&'a str>,
    ) -> bool {
        let NameIndex { table, hasher } = self;
        let hash = hasher.hash_one(name);
        let entry = table.entry(
            hash,
            |&at| name_of(at) == Some(name),
            |&at| hasher.hash_one(name_of(at).unwrap_or_default()),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(index);
                true
            }
        }
    }
}

/// What one source contributed, for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub info: SourceInfo,
    pub users: usize,
    pub groups: usize,
    pub memberships: usize,
    /// Entries skipped because they were broken.
    pub problems: usize,
    pub load: LoadReport,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserEntry {
    pub user: Arc<User>,
    /// The source whose record this is.
    pub source: SourceId,
    /// This record answers look-ups by its name (it is listed and the first
    /// to have it) / by its uid.
    pub holds_name: bool,
    pub holds_id: bool,
}

/// One member of a group as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: Name,
    /// Listed by the `/etc/group` line the answer comes from: a caller that
    /// read `/etc/group` itself already has it.
    pub by_files: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupEntry {
    pub group: Arc<Group>,
    pub source: SourceId,
    /// As for [`UserEntry`].
    pub holds_name: bool,
    pub holds_id: bool,
    /// The merged member list (see `merge`), each name once, as places in
    /// [`Snapshot::members`]: [`Snapshot::members_of`] names them.
    pub members: Box<[MemberRef]>,
}

/// One member of a group as answered, eight bytes (groups list hundreds of
/// thousands of them): which member name, and whether the `/etc/group` line
/// the answer comes from lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef {
    /// Index in [`Snapshot::members`].
    pub at: u32,
    pub by_files: bool,
}

/// A name some group lists as a member, and where the groups that list it
/// are in [`Snapshot::member_groups`].
#[derive(Debug, Clone, PartialEq)]
pub struct MemberName {
    pub name: Name,
    pub groups: std::ops::Range<u32>,
}

/// A group that lists a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef {
    /// Index in [`Snapshot::all_groups`].
    pub group: u32,
    /// Whether the group's `/etc/group` line states the membership.
    pub by_files: bool,
}

/// The name of the user at `at`: what `user_by_name` indexes.
pub(crate) fn user_name(users: &[UserEntry], at: u32) -> Option<&str> {
    users.get(at as usize).map(|u| &*u.user.name)
}

pub(crate) fn group_name(groups: &[GroupEntry], at: u32) -> Option<&str> {
    groups.get(at as usize).map(|g| &*g.group.name)
}

pub(crate) fn member_name(members: &[MemberName], at: u32) -> Option<&str> {
    members.get(at as usize).map(|m| &*m.name)
}

/// Every index is built once by `merge`; nothing is ever modified.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub built_at: Instant,
    pub sources: Vec<SourceStatus>,
    pub(crate) users: Vec<UserEntry>,
    pub(crate) user_by_name: NameIndex,
    pub(crate) user_by_uid: Map<u32, u32>,
    pub(crate) groups: Vec<GroupEntry>,
    pub(crate) group_by_name: NameIndex,
    pub(crate) group_by_gid: Map<u32, u32>,
    /// Every member name, in the order the groups first list it, with the
    /// groups that list it; those lists lie one after another in
    /// `member_groups`, each in group order.
    pub(crate) members: Vec<MemberName>,
    pub(crate) member_by_name: NameIndex,
    pub(crate) member_groups: Vec<GroupRef>,
    /// Memberships stated by name (membership drop-ins, `memberOf`), by
    /// group name: what a group served by a Varlink service gets from the
    /// local sources.
    pub(crate) stated_by_group: NameLists,
    /// The same memberships of groups no local record holds, by user name:
    /// the groups whose gids a user's `initgroups` asks the services for.
    pub(crate) unheld_by_user: NameLists,
}

/// Lists of names by name, each in the order given, in one allocation
/// rather than one per name (hundreds of thousands of them at scale).
#[derive(Debug, Default)]
pub struct NameLists {
    index: Map<Name, u32>,
    /// Where each list starts in `items`, and where the last one ends.
    starts: Vec<u32>,
    items: Vec<Name>,
}

impl NameLists {
    /// The lists of `(key, item)` pairs, by key, each in the pairs' order.
    pub fn from_pairs<'a>(pairs: impl ExactSizeIterator<Item = (&'a Name, &'a Name)>) -> Self {
        // As many keys as half the pairs, say: growing the index step by
        // step costs more than a guess that is too large.
        let mut index: Map<Name, u32> =
            Map::with_capacity_and_hasher(pairs.len() / 2, Default::default());
        let mut counts: Vec<u32> = Vec::with_capacity(pairs.len() / 2);
        let mut keyed: Vec<(u32, &Name)> = Vec::with_capacity(pairs.len());
        for (key, item) in pairs {
            let list = match index.get(key) {
                Some(&list) => list,
                None => {
                    let list = counts.len() as u32;
                    index.insert(Name::clone(key), list);
                    counts.push(0);
                    list
                }
            };
            counts[list as usize] += 1;
            keyed.push((list, item));
        }
        let mut starts = Vec::with_capacity(counts.len() + 1);
        let mut next = 0;
        for count in &counts {
            starts.push(next);
            next += count;
        }
        starts.push(next);
        // Where each pair goes: after the earlier pairs of its key.
        let mut cursor = starts.clone();
        let mut order = vec![0u32; keyed.len()];
        for (i, (list, _)) in keyed.iter().enumerate() {
            let at = &mut cursor[*list as usize];
            order[*at as usize] = i as u32;
            *at += 1;
        }
        let items = order
            .iter()
            .map(|&i| Name::clone(keyed[i as usize].1))
            .collect();
        NameLists {
            index,
            starts,
            items,
        }
    }

    /// How many names the lists hold in all.
    pub fn total(&self) -> usize {
        self.items.len()
    }

    /// The list of `key`, empty if it has none.
    pub fn get(&self, key: &str) -> &[Name] {
        let Some(&list) = self.index.get(key) else {
            return &[];
        };
        let range = self.starts.get(list as usize..list as usize + 2);
        range
            .and_then(|r| self.items.get(r[0] as usize..r[1] as usize))
            .unwrap_or_default()
    }
}

impl Snapshot {
    /// A snapshot with no sources.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            built_at: Instant::now(),
            sources: Vec::new(),
            users: Vec::new(),
            user_by_name: NameIndex::default(),
            user_by_uid: Map::default(),
            groups: Vec::new(),
            group_by_name: NameIndex::default(),
            group_by_gid: Map::default(),
            members: Vec::new(),
            member_by_name: NameIndex::default(),
            member_groups: Vec::new(),
            stated_by_group: NameLists::default(),
            unheld_by_user: NameLists::default(),
        }
    }

    pub fn source(&self, id: SourceId) -> Option<&SourceInfo> {
        self.sources.get(id as usize).map(|s| &s.info)
    }

    /// Where a record of source `id` comes from, as callers' options see it.
    pub fn origin(&self, id: SourceId) -> Origin {
        Origin {
            files: self.source(id).is_some_and(|s| s.kind == SourceKind::Files),
            pid1: self.source(id).is_some_and(|s| s.pid1_users),
        }
    }

    pub fn user_by_name(&self, name: &str) -> Option<&UserEntry> {
        self.user_by_name
            .get(name, |at| user_name(&self.users, at))
            .and_then(|i| self.users.get(i as usize))
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<&UserEntry> {
        self.user_by_uid
            .get(&uid)
            .and_then(|&i| self.users.get(i as usize))
    }

    /// Users in enumeration order (source priority, then source order).
    pub fn users(&self) -> impl Iterator<Item = &UserEntry> {
        self.users.iter().filter(|u| u.user.listed)
    }

    pub fn all_users(&self) -> &[UserEntry] {
        &self.users
    }

    pub fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.group_by_name
            .get(name, |at| group_name(&self.groups, at))
            .and_then(|i| self.groups.get(i as usize))
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<&GroupEntry> {
        self.group_by_gid
            .get(&gid)
            .and_then(|&i| self.groups.get(i as usize))
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupEntry> {
        self.groups.iter().filter(|g| g.group.listed)
    }

    pub fn all_groups(&self) -> &[GroupEntry] {
        &self.groups
    }

    /// The groups that list `user` as a member, in group order.
    pub fn groups_of(&self, user: &str) -> impl Iterator<Item = &GroupEntry> {
        self.member_by_name
            .get(user, |at| member_name(&self.members, at))
            .and_then(|i| self.members.get(i as usize))
            .into_iter()
            .flat_map(|m| self.groups_listing(m))
            .filter_map(|r| self.groups.get(r.group as usize))
    }

    /// Every member name, in the order the groups first list it.
    pub fn member_names(&self) -> &[MemberName] {
        &self.members
    }

    /// The members of `entry`, each with whether its `/etc/group` line
    /// lists it.
    pub fn members_of<'s>(
        &'s self,
        entry: &'s GroupEntry,
    ) -> impl Iterator<Item = (&'s Name, bool)> + 's {
        entry.members.iter().filter_map(|m| {
            let member = self.members.get(m.at as usize)?;
            Some((&member.name, m.by_files))
        })
    }

    /// The groups that list `member`, in group order.
    pub fn groups_listing(&self, member: &MemberName) -> &[GroupRef] {
        let range = member.groups.start as usize..member.groups.end as usize;
        self.member_groups.get(range).unwrap_or_default()
    }

    /// Members stated by name for a group that no local record holds.
    pub fn stated_members(&self, group: &str) -> &[Name] {
        self.stated_by_group.get(group)
    }

    /// Groups no local record holds that a user is stated a member of by
    /// name.
    pub fn stated_unheld_groups(&self, user: &str) -> &[Name] {
        self.unheld_by_user.get(user)
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::empty()
    }
}

/// The current snapshot, replaced whole; readers keep the `Arc` they took.
#[derive(Debug)]
pub struct SnapshotStore {
    current: RwLock<Arc<Snapshot>>,
    /// Replaced snapshots not yet freed: some reader may still hold them.
    retired: Mutex<Vec<Arc<Snapshot>>>,
}

impl SnapshotStore {
    pub fn new(initial: Snapshot) -> Self {
        SnapshotStore {
            current: RwLock::new(Arc::new(initial)),
            retired: Mutex::new(Vec::new()),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock still holds a complete Arc: the swap is one store.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `snapshot` in place; the old one is kept for [`Self::reap`].
    pub fn replace(&self, snapshot: Arc<Snapshot>) {
        let old = match self.current.write() {
            Ok(mut guard) => std::mem::replace(&mut *guard, snapshot),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), snapshot),
        };
        self.retired_list().push(old);
    }

    /// Frees the replaced snapshots nobody reads any more, on the calling
    /// thread (the watcher's). Returns how many are still held by readers.
    pub fn reap(&self) -> usize {
        let done: Vec<Arc<Snapshot>> = {
            let mut retired = self.retired_list();
            let (done, held) = retired.drain(..).partition(|s| Arc::strong_count(s) == 1);
            *retired = held;
            done
        };
        if !done.is_empty() {
            drop(done);
            // Or the resident size keeps each rebuild's high-water mark.
            crate::memory::release_free_pages();
        }
        self.retired_list().len()
    }

    fn retired_list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Snapshot>>> {
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_snapshot_is_freed_by_reap_not_by_its_last_reader() {
        let store = SnapshotStore::new(Snapshot::empty());
        let reader = store.current();
        let mut next = Snapshot::empty();
        next.generation = 2;
        store.replace(Arc::new(next));
        assert_eq!(store.current().generation, 2);
        assert_eq!(store.reap(), 1, "a reader still holds the old one");
        let weak = Arc::downgrade(&reader);
        drop(reader);
        assert!(weak.upgrade().is_some(), "the reader did not free it");
        assert_eq!(store.reap(), 0);
        assert!(weak.upgrade().is_none(), "reap freed it");
    }
}
