//! One immutable, indexed view of every local source. `merge` builds it,
//! `watch` swaps a new one in whole when a source changes, and every request
//! reads the one that was current when it started.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sources::SourceKind;

/// Index of a source in [`Snapshot::sources`], which is priority order.
pub type SourceId = usize;

/// A set of sources; sources beyond 63 share the last bit (there are never
/// that many: the local sources and the Varlink services of one machine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSet(u64);

impl SourceSet {
    pub fn insert(&mut self, id: SourceId) {
        self.0 |= 1 << id.min(63);
    }

    pub fn contains(self, id: SourceId) -> bool {
        self.0 & (1 << id.min(63)) != 0
    }

    /// True when some source in the set is of `kind`.
    pub fn any_of(self, kind: SourceKind, sources: &[SourceStatus]) -> bool {
        sources
            .iter()
            .enumerate()
            .any(|(id, s)| s.kind == kind && self.contains(id))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    /// The source whose record won.
    pub source: SourceId,
    /// The full record, privileged parts included.
    pub record: Value,
    pub listed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub source: SourceId,
    /// The record without `members`: those come from the membership index.
    pub record: Value,
    pub listed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub user: String,
    pub group: String,
    /// Every source that states this membership.
    pub origins: SourceSet,
}

/// What one source contributed to the snapshot, for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub name: String,
    pub kind: SourceKind,
    pub users: usize,
    pub groups: usize,
    pub memberships: usize,
    /// Entries skipped because they were broken.
    pub problems: usize,
    pub load_time: Duration,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub built_at: Instant,
    pub sources: Vec<SourceStatus>,
    pub(crate) users: Vec<UserEntry>,
    pub(crate) user_by_name: HashMap<String, usize>,
    pub(crate) user_by_uid: HashMap<u32, usize>,
    pub(crate) groups: Vec<GroupEntry>,
    pub(crate) group_by_name: HashMap<String, usize>,
    pub(crate) group_by_gid: HashMap<u32, usize>,
    pub(crate) memberships: Vec<Membership>,
    pub(crate) membership_index: HashMap<(String, String), usize>,
    pub(crate) memberships_by_user: HashMap<String, Vec<usize>>,
    pub(crate) memberships_by_group: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    /// A snapshot with no sources, served until the first build is done.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            built_at: Instant::now(),
            sources: Vec::new(),
            users: Vec::new(),
            user_by_name: HashMap::new(),
            user_by_uid: HashMap::new(),
            groups: Vec::new(),
            group_by_name: HashMap::new(),
            group_by_gid: HashMap::new(),
            memberships: Vec::new(),
            membership_index: HashMap::new(),
            memberships_by_user: HashMap::new(),
            memberships_by_group: HashMap::new(),
        }
    }

    pub fn user_by_name(&self, name: &str) -> Option<&UserEntry> {
        self.user_by_name.get(name).map(|&i| &self.users[i])
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<&UserEntry> {
        self.user_by_uid.get(&uid).map(|&i| &self.users[i])
    }

    /// Users in enumeration order (source priority, then source order).
    pub fn users(&self) -> impl Iterator<Item = &UserEntry> {
        self.users.iter().filter(|u| u.listed)
    }

    pub fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.group_by_name.get(name).map(|&i| &self.groups[i])
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<&GroupEntry> {
        self.group_by_gid.get(&gid).map(|&i| &self.groups[i])
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupEntry> {
        self.groups.iter().filter(|g| g.listed)
    }

    /// Every membership in a stable order: by source priority, then the
    /// order each source states them.
    pub fn memberships(&self) -> impl Iterator<Item = &Membership> {
        self.memberships.iter()
    }

    pub fn memberships_of_user(&self, user: &str) -> impl Iterator<Item = &Membership> {
        self.indexed(&self.memberships_by_user, user)
    }

    pub fn memberships_of_group(&self, group: &str) -> impl Iterator<Item = &Membership> {
        self.indexed(&self.memberships_by_group, group)
    }

    pub fn membership(&self, user: &str, group: &str) -> Option<&Membership> {
        self.membership_index
            .get(&(user.to_owned(), group.to_owned()))
            .map(|&i| &self.memberships[i])
    }

    fn indexed<'a>(
        &'a self,
        index: &'a HashMap<String, Vec<usize>>,
        key: &str,
    ) -> impl Iterator<Item = &'a Membership> {
        index
            .get(key)
            .into_iter()
            .flatten()
            .map(|&i| &self.memberships[i])
    }

    /// Whether `/etc/group` states the membership: a caller that has read
    /// that file itself already has it, and glibc's merge would repeat it.
    pub fn stated_by_files(&self, membership: &Membership) -> bool {
        membership.origins.any_of(SourceKind::Files, &self.sources)
    }
}

/// The current snapshot, replaced whole; readers keep the `Arc` they took.
#[derive(Debug, Clone)]
pub struct SnapshotStore(Arc<RwLock<Arc<Snapshot>>>);

impl SnapshotStore {
    pub fn new(initial: Snapshot) -> Self {
        SnapshotStore(Arc::new(RwLock::new(Arc::new(initial))))
    }

    pub fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock still holds a complete Arc: the swap is one store.
        match self.0.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn replace(&self, snapshot: Snapshot) {
        let new = Arc::new(snapshot);
        match self.0.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}
