//! systemd's JSON user and group drop-ins, read by the rules of systemd's
//! `userdb-dropin.c` and `conf-files.c`:
//!
//! - directories in priority order ([`DIRS`] below the root); a file name in
//!   an earlier directory hides the same name in later ones;
//! - an empty file, or a link to `/dev/null` (any device: systemd's
//!   `null_or_empty`), masks the name;
//! - `NAME.user` must hold `"userName": NAME`, and may not carry a
//!   `privileged` section; its `NAME.user-privileged` companion in the same
//!   directory is merged into it (top-level keys), and everything the
//!   companion holds is privileged: only root sees it;
//! - `UID.user` must hold that uid; such files answer look-ups by uid only
//!   and are not listed as separate users;
//! - `NAME.group`, `GID.group`, `NAME.group-privileged` likewise;
//! - `USER:GROUP.membership` states a membership (content ignored, but an
//!   empty file is a mask like any other, so write `{}` into it);
//! - a file larger than [`MAX_FILE_SIZE`], a FIFO, socket or directory is
//!   refused without being read.
//!
//! The source is kept file by file: a change re-reads only the files it
//! names (with the companion's record and the links in the same directory
//! that point at it), and a file that cannot be read keeps what it held.
//! At a directory's first read, a `UID.user` (`GID.group`) link beside the
//! record that holds that id is taken for its alias and read right after
//! ([`presume_aliases`]).

use std::borrow::Cow;
use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::fs::FileType;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};
use userdb_proto::names::valid_name;
use userdb_proto::record::{GroupRecord, UserRecord};

use super::name_table::{self, NameTable};
use super::read::{self, ReadError};
use super::{LoadReport, LocalSource, Memberships, SourceData, SourceInfo, SourceKind};
use crate::model::{Group, JsonRecord, Name, User, SHADOW_FIELDS};

/// Drop-in directories below the root, earlier ones win.
pub const DIRS: [&str; 5] = [
    "etc/userdb",
    "run/userdb",
    "run/host/userdb",
    "usr/local/lib/userdb",
    "usr/lib/userdb",
];

/// Largest drop-in file read; real records are a few KiB.
pub const MAX_FILE_SIZE: u64 = 256 * 1024;

/// Most entries read from one directory; the rest are ignored, logged.
pub const MAX_ENTRIES: usize = 4_000_000;

/// Below this many files to read, one thread reads them all.
const PARALLEL_THRESHOLD: usize = 1024;
/// How many names a reader thread takes at a time.
const PARALLEL_BLOCK: usize = 512;
/// How many presumed aliases are read at a time.
const PRESUMED_BLOCK: usize = 4096;

/// The drop-in directories below `root`, in priority order.
pub fn dirs(root: &Path) -> Vec<PathBuf> {
    DIRS.iter().map(|d| root.join(d)).collect()
}

/// What a drop-in file name declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropInName<'a> {
    UserByName(&'a str),
    UserByUid(u32),
    GroupByName(&'a str),
    GroupByGid(u32),
    Membership {
        user: &'a str,
        group: &'a str,
    },
    /// `.user-privileged` / `.group-privileged`: read with their record.
    Companion,
    /// Not a drop-in at all (other suffix): ignored silently.
    Unrelated,
}

const USER_COMPANION: &str = ".user-privileged";
const GROUP_COMPANION: &str = ".group-privileged";

/// Classifies a file name; `Err` says why a name with a drop-in suffix is
/// unusable.
pub fn classify(file_name: &str) -> Result<DropInName<'_>, String> {
    if is_companion(file_name) {
        return Ok(DropInName::Companion);
    }
    if let Some(stem) = file_name.strip_suffix(".user") {
        return match stem.parse::<u32>() {
            Ok(uid) => Ok(DropInName::UserByUid(uid)),
            Err(_) if valid_name(stem) => Ok(DropInName::UserByName(stem)),
            Err(_) => Err(format!("{} is not a valid user name", super::quote(stem))),
        };
    }
    if let Some(stem) = file_name.strip_suffix(".group") {
        return match stem.parse::<u32>() {
            Ok(gid) => Ok(DropInName::GroupByGid(gid)),
            Err(_) if valid_name(stem) => Ok(DropInName::GroupByName(stem)),
            Err(_) => Err(format!("{} is not a valid group name", super::quote(stem))),
        };
    }
    if let Some(stem) = file_name.strip_suffix(".membership") {
        return match stem.split_once(':') {
            Some((user, group)) if valid_name(user) && valid_name(group) => {
                Ok(DropInName::Membership { user, group })
            }
            _ => Err("not USER:GROUP with two valid names".to_owned()),
        };
    }
    Ok(DropInName::Unrelated)
}

/// Whether a file name is a companion's (what [`classify`] calls
/// [`DropInName::Companion`]), without classifying the rest.
fn is_companion(file_name: &str) -> bool {
    file_name.ends_with(USER_COMPANION) || file_name.ends_with(GROUP_COMPANION)
}

/// The record file a companion belongs to (`x.user-privileged` → `x.user`).
fn companion_of(file_name: &str) -> Option<String> {
    [(USER_COMPANION, ".user"), (GROUP_COMPANION, ".group")]
        .iter()
        .find_map(|(suffix, record)| {
            file_name
                .strip_suffix(suffix)
                .map(|stem| format!("{stem}{record}"))
        })
}

/// What one file in one directory provides. Sixteen bytes: one is kept
/// per file, by the hundred thousand.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    /// Hides the name in later directories and provides nothing.
    Masked,
    User(Arc<User>),
    Group(Arc<Group>),
    /// A `UID.user` (`GID.group`) link to a `NAME.user` (`NAME.group`) of
    /// the same directory whose record holds that id: the record is shared,
    /// not read again, and answers by id through the named file.
    UserAlias(Arc<User>),
    GroupAlias(Arc<Group>),
    /// A `USER:GROUP.membership`; the names are the file name's.
    Membership,
    /// A companion or an unrelated file: nothing on its own.
    Nothing,
    /// Refused, with the reason (logged once while it persists).
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps Content at 16 bytes; refusals are rare"
    )]
    Broken(Box<String>),
}

impl Content {
    fn broken(why: impl Into<String>) -> Content {
        Content::Broken(Box::new(why.into()))
    }
}

/// What one file provides, as its directory keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    stamp: Stamp,
    content: Content,
}

/// What reading a name found: its entry and, for a link to another file
/// of the same directory, that file's name, so that a change to it re-reads
/// the link too. Few links store one ([`Directory::targets`]): an alias of a
/// named record at that record's id stores none, it is that record's file
/// ([`Directory::link_target`]).
#[derive(Debug, Clone, PartialEq)]
struct Found {
    entry: Entry,
    links_to: Option<Box<str>>,
}

impl Found {
    fn new(stamp: Stamp, links_to: Option<Box<str>>, content: Content) -> Found {
        Found {
            entry: Entry { stamp, content },
            links_to,
        }
    }
}

/// What a name led to (`stat`, links followed) when last read, in eight
/// bytes: its [`read::Identity::fingerprint`], or why there is none. A
/// rescan re-reads the names whose fingerprint changed or who have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(u64);

impl Stamp {
    /// Nothing read (a dangling link).
    const NONE: Stamp = Stamp(0);
    /// The last read failed for a reason that may pass: read again soon.
    const UNREAD: Stamp = Stamp(1);
    /// A link taken for an alias without being read ([`presume_aliases`]).
    const PRESUMED: Stamp = Stamp(2);

    fn of(st: &read::Stat) -> Stamp {
        // The three fingerprints in 2^64 that are marks count as the next.
        Stamp(st.identity.fingerprint().max(3))
    }

    fn is_read(self) -> bool {
        self.0 >= 3
    }
}

impl Directory {
    /// The file of the same directory `entry`, at `name`, is a link to,
    /// spelled in `scratch` when it is derived from the record an alias
    /// shares.
    fn link_target<'a>(
        &'a self,
        name: &str,
        entry: &'a Entry,
        scratch: &'a mut String,
    ) -> Option<&'a str> {
        if let Some(target) = self.targets.get(name) {
            return Some(target);
        }
        let (name, suffix) = match &entry.content {
            Content::UserAlias(u) => (&u.name, ".user"),
            Content::GroupAlias(g) => (&g.name, ".group"),
            _ => return None,
        };
        scratch.clear();
        scratch.push_str(name);
        scratch.push_str(suffix);
        Some(scratch)
    }
}

/// The id a `UID.user` or `GID.group` file is named by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdName {
    Uid(u32),
    Gid(u32),
}

impl IdName {
    /// The file name, spelled as systemd writes it, in `buffer` (room for
    /// the longest): the only alias name that need not store its target.
    /// Written in place, since every link is checked.
    fn spell(self, buffer: &mut [u8; 24]) -> Option<&str> {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut buffer[..]);
        match self {
            IdName::Uid(uid) => write!(cursor, "{uid}.user"),
            IdName::Gid(gid) => write!(cursor, "{gid}.group"),
        }
        .ok()?;
        let written = usize::try_from(cursor.position()).ok()?;
        std::str::from_utf8(buffer.get(..written)?).ok()
    }

    fn file_name(self) -> Option<String> {
        self.spell(&mut [0; 24]).map(str::to_owned)
    }
}

impl Content {
    /// The name of the `UID.user` (`GID.group`) alias of the record this
    /// holds, as [`IdName::spell`] spells it.
    fn alias_name(&self) -> Option<String> {
        match self {
            Content::User(u) => IdName::Uid(u.uid).file_name(),
            Content::Group(g) => IdName::Gid(g.gid).file_name(),
            _ => None,
        }
    }
}

// One entry is kept per file: at fleet size, every byte counts 600,000 times.
const _: () = assert!(std::mem::size_of::<Content>() == 16 && std::mem::size_of::<Entry>() == 24);

/// One drop-in directory, file by file, in file name order.
#[derive(Debug, Default)]
struct Directory {
    path: PathBuf,
    entries: NameTable<Entry>,
    /// The links that store their target, by name: a few, beside the
    /// hundreds of thousands of entries.
    targets: HashMap<Box<str>, Box<str>>,
    /// The names whose entry is `unread`, so that finding them costs
    /// nothing while idle.
    unread: HashSet<Box<str>>,
    /// A membership file came, went or changed since the last rebuild:
    /// otherwise the last rebuild's memberships stand as they were.
    memberships_changed: bool,
    /// While links its first read took for aliases without reading them
    /// ([`presume_aliases`]) wait for [`DropIns::read_presumed`]: the type
    /// the listing gave them (a link), to read them as links.
    presumed: Option<FileType>,
}

/// Whether a name is a membership's (a valid one or not).
fn is_membership(name: &str) -> bool {
    name.ends_with(".membership")
}

/// A name to read, with what the directory listing said it was (`d_type`),
/// when it was listed.
type Wanted = (String, Option<FileType>);

/// Where the merge of the directories' entries is in one directory.
type Cursor<'a> = Peekable<name_table::Iter<'a, Entry>>;

/// The `dropins` source.
pub struct DropIns {
    info: SourceInfo,
    dirs: Vec<Directory>,
    data: Arc<SourceData>,
    report: LoadReport,
}

impl DropIns {
    pub fn new(root: &Path) -> DropIns {
        DropIns::in_dirs(dirs(root))
    }

    pub fn in_dirs(dirs: Vec<PathBuf>) -> DropIns {
        DropIns {
            info: SourceInfo::local(SourceKind::DropIns),
            dirs: dirs
                .into_iter()
                .map(|path| Directory {
                    path,
                    ..Directory::default()
                })
                .collect(),
            data: Arc::default(),
            report: LoadReport::default(),
        }
    }

    /// Makes the data of the visible entries, in systemd's order: named
    /// records by file name, then the id-named ones. The directories are
    /// kept in name order, so this is one merge of sorted lists, without
    /// sorting.
    fn rebuild(&mut self) {
        let mut data = SourceData::default();
        let mut by_id_users = Vec::new();
        let mut by_id_groups = Vec::new();
        let mut memberships = Vec::new();
        // Sharing 200,000 memberships' names costs more than the rest of a
        // rebuild: done again only when one of them changed.
        let memberships_changed = self.dirs.iter().any(|dir| dir.memberships_changed);
        let mut cursors: Vec<(usize, Cursor<'_>)> = self
            .dirs
            .iter()
            .enumerate()
            .filter(|(_, dir)| !dir.entries.is_empty())
            .map(|(index, dir)| (index, dir.entries.iter().peekable()))
            .collect();
        loop {
            // The smallest name next in any directory, from the earliest
            // directory that has it; the later ones' entries are hidden.
            let mut next: Option<(usize, &str, &Entry)> = None;
            for (index, cursor) in &mut cursors {
                if let Some((name, entry)) = cursor.peek() {
                    if next.is_none_or(|(_, smallest, _)| *name < smallest) {
                        next = Some((*index, name, entry));
                    }
                }
            }
            let Some((index, name, entry)) = next else {
                break;
            };
            for (_, cursor) in &mut cursors {
                cursor.next_if(|(n, _)| *n == name);
            }
            let dir = &self.dirs[index];
            match &entry.content {
                Content::User(u) if u.listed => data.users.push(Arc::clone(u)),
                Content::User(u) => by_id_users.push(ById::Own(u)),
                Content::Group(g) if g.listed => data.groups.push(Arc::clone(g)),
                Content::Group(g) => by_id_groups.push(ById::Own(g)),
                Content::UserAlias(u) => by_id_users.push(ById::Alias(u)),
                Content::GroupAlias(g) => by_id_groups.push(ById::Alias(g)),
                Content::Membership if memberships_changed => {
                    if let Ok(DropInName::Membership { user, group }) = classify(name) {
                        memberships.push((user, group));
                    }
                }
                Content::Broken(why) => data
                    .problems
                    .push(format!("{}: skipped: {why}", dir.path.join(name).display())),
                Content::Masked | Content::Membership | Content::Nothing => {}
            }
        }
        data.memberships = if memberships_changed {
            memberships_sharing_names(&data.users, &data.groups, &memberships)
        } else {
            self.data.memberships.clone()
        };
        let users = answering_by_id(by_id_users, &data.users, User::unlisted);
        let groups = answering_by_id(by_id_groups, &data.groups, Group::unlisted);
        data.users.extend(users);
        data.groups.extend(groups);
        for dir in &mut self.dirs {
            dir.memberships_changed = false;
        }
        self.data = Arc::new(data);
    }

    /// Re-reads the given names of one directory, with what depends on
    /// them: the record of a companion, and the links to a file.
    fn reload_changed(&mut self, index: usize, names: Vec<Wanted>) -> bool {
        // The names' own vector, in place: at first read every name.
        let mut wanted = names;
        let records: Vec<Wanted> = wanted
            .iter()
            .filter_map(|(name, _)| Some((companion_of(name)?, None)))
            .collect();
        wanted.extend(records);
        // Only a named record is ever the target of a link worth
        // following. An alias that stores no target is at its record's id
        // ([`alias`]); the others are among the few that store one.
        let dir = &self.dirs[index];
        let entries = &dir.entries;
        if !entries.is_empty() {
            let targets: HashSet<&str> = wanted
                .iter()
                .map(|(name, _)| name.as_str())
                .filter(|name| {
                    matches!(
                        classify(name),
                        Ok(DropInName::UserByName(_) | DropInName::GroupByName(_))
                    )
                })
                .collect();
            let mut links: Vec<Wanted> = Vec::new();
            if !targets.is_empty() {
                let mut scratch = String::new();
                let aliases = targets
                    .iter()
                    .filter_map(|target| entries.get(target)?.content.alias_name());
                for alias in aliases {
                    let leads_back = entries.get(alias.as_str()).is_some_and(|entry| {
                        dir.link_target(&alias, entry, &mut scratch)
                            .is_some_and(|t| targets.contains(t))
                    });
                    if leads_back {
                        links.push((alias, None));
                    }
                }
                for (link, target) in &dir.targets {
                    if targets.contains(&**target) {
                        links.push((link.to_string(), None));
                    }
                }
            }
            wanted.extend(links);
        }
        self.reload(index, wanted)
    }

    /// Re-reads exactly `names` of one directory.
    fn reload(&mut self, index: usize, mut wanted: Vec<Wanted>) -> bool {
        // A name listed and also wanted for another's sake is kept with
        // what the listing said of it.
        let order = |(a, a_listed): &Wanted, (b, b_listed): &Wanted| {
            a.cmp(b).then(b_listed.is_some().cmp(&a_listed.is_some()))
        };
        // A whole listing comes sorted: not sorted a second time.
        if !wanted.is_sorted_by(|a, b| order(a, b).is_le()) {
            wanted.sort_by(order);
        }
        wanted.dedup_by(|(a, _), (b, _)| a == b);
        let dir = &self.dirs[index];
        let first_read = dir.entries.is_empty();
        let mut loaded = load_all(&dir.path, &wanted, dir, first_read);
        let presumed = if first_read {
            presume_aliases(dir, &self.dirs[..index], &wanted, &mut loaded)
        } else {
            None
        };
        // Links to a sibling share its record, as just read or, when it
        // was not read again, as it was; a link whose sibling holds no
        // record to share is read as a file of its own.
        let sibling = |target: &str| match wanted.binary_search_by(|(n, _)| n.as_str().cmp(target))
        {
            Ok(i) => match &loaded[i] {
                Loaded::Entry(found) => Some(Cow::Borrowed(found)),
                Loaded::Alias(_) | Loaded::PutOff(_) | Loaded::Gone => None,
            },
            Err(_) => dir.found(target).map(Cow::Owned),
        };
        let shared: Vec<Option<Found>> = wanted
            .iter()
            .zip(&loaded)
            .filter_map(|((name, _), loaded)| match loaded {
                Loaded::Alias(target) => Some(alias(name, target, sibling(target).as_deref())),
                _ => None,
            })
            .collect();
        let mut shared = shared.into_iter();
        let mut read = Vec::with_capacity(wanted.len());
        let mut unshared = Vec::new();
        for ((name, _), loaded) in wanted.into_iter().zip(loaded) {
            match loaded {
                Loaded::Entry(found) => read.push((name, Some(found))),
                // [`presume_aliases`] left none.
                Loaded::Gone | Loaded::PutOff(_) => read.push((name, None)),
                Loaded::Alias(_) => match shared.next().flatten() {
                    Some(found) => read.push((name, Some(found))),
                    None => unshared.push(name),
                },
            }
        }
        let mut changed = self.dirs[index].put_all(read);
        self.dirs[index].presumed = self.dirs[index].presumed.or(presumed);
        if !unshared.is_empty() {
            let dir = &self.dirs[index];
            let loaded = load_all_followed(&dir.path, &unshared, dir);
            changed |= self.dirs[index].put_all(unshared.into_iter().zip(loaded).collect());
        }
        changed
    }

    /// Rebuilds after a refresh that changed something or failed somewhere;
    /// returns whether anything changed.
    fn finish_refresh(&mut self, started: Instant, any: bool, mut failures: Vec<String>) -> bool {
        let read = started.elapsed();
        if any || !failures.is_empty() {
            self.rebuild();
            if !failures.is_empty() {
                let data = Arc::make_mut(&mut self.data);
                data.problems.extend(failures.iter().cloned());
                self.report.last_error = failures.pop();
            }
        }
        self.report.took = started.elapsed();
        if any {
            tracing::debug!(
                read_ms = read.as_millis() as u64,
                total_ms = self.report.took.as_millis() as u64,
                entries = self.dirs.iter().map(|d| d.entries.len()).sum::<usize>(),
                "drop-ins refreshed"
            );
        }
        any
    }

    /// Reads the links [`presume_aliases`] took for aliases, a block at a
    /// time, so that what a block needs on the way stays small.
    fn read_presumed(&mut self, index: usize) -> bool {
        let Some(link) = self.dirs[index].presumed.take() else {
            return false;
        };
        let mut changed = false;
        let mut after = String::new();
        loop {
            let block: Vec<Wanted> = self.dirs[index]
                .entries
                .iter_after(&after)
                .filter(|(_, entry)| entry.stamp == Stamp::PRESUMED)
                .take(PRESUMED_BLOCK)
                .map(|(name, _)| (name.to_owned(), Some(link)))
                .collect();
            let Some((last, _)) = block.last() else {
                // The blocks' allocations came and went in the holes the
                // first read left: hand their pages back.
                crate::memory::release_free_pages();
                return changed;
            };
            after.clone_from(last);
            changed |= self.reload(index, block);
        }
    }

    /// Reads a whole directory again; only files whose stamp changed are read.
    fn rescan(&mut self, index: usize) -> (bool, Option<String>) {
        let path = self.dirs[index].path.clone();
        let mut listing: Vec<Keyed> = match std::fs::read_dir(&path) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| {
                    // The type from the listing costs nothing where the
                    // file system gives it (std `lstat`s where it does not).
                    let listed = e.file_type().ok();
                    Some(keyed((e.file_name().into_string().ok()?, listed)))
                })
                .take(MAX_ENTRIES + 1)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return (
                    false,
                    Some(format!(
                        "{}: cannot be listed: {e}; keeping what it held",
                        path.display()
                    )),
                )
            }
        };
        let mut failure = None;
        if listing.len() > MAX_ENTRIES {
            listing.truncate(MAX_ENTRIES);
            failure = Some(format!(
                "{}: more than {MAX_ENTRIES} entries; the rest are ignored",
                path.display()
            ));
        }
        let names = sorted_by_name(listing);
        let dir = &mut self.dirs[index];
        let before = dir.entries.len();
        // Both in name order: one walk keeps the entries still listed.
        let mut listed = names.iter().map(|(name, _)| name.as_str()).peekable();
        let mut memberships_gone = false;
        let targets = &mut dir.targets;
        dir.entries.retain(|name, _| {
            while listed.next_if(|listed| *listed < name).is_some() {}
            let kept = listed.peek() == Some(&name);
            memberships_gone |= !kept && is_membership(name);
            if !kept && !targets.is_empty() {
                targets.remove(name);
            }
            kept
        });
        dir.memberships_changed |= memberships_gone;
        dir.unread.retain(|name| {
            names
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .is_ok()
        });
        let mut changed = dir.entries.len() != before;
        let handle = read::Dir::open(&path).ok();
        // The listing's own vector, in place: at first read every name.
        let stale: Vec<Wanted> = names
            .into_iter()
            .filter(|(name, _)| match dir.entries.get(name.as_str()) {
                Some(entry) if entry.stamp.is_read() => {
                    let now = handle.as_ref().and_then(|h| h.stat(name).ok());
                    now.is_none_or(|st| Stamp::of(&st) != entry.stamp)
                }
                _ => true,
            })
            .collect();
        if !stale.is_empty() {
            changed |= self.reload_changed(index, stale);
        }
        (changed, failure)
    }
}

/// A listed name with its first eight bytes beside it, to sort by.
type Keyed = (u64, Wanted);

fn keyed(wanted: Wanted) -> Keyed {
    let mut prefix = [0; 8];
    let n = wanted.0.len().min(8);
    prefix[..n].copy_from_slice(&wanted.0.as_bytes()[..n]);
    // Big-endian, padded with zeros (no file name holds a NUL): the
    // prefixes order as the names' bytes do.
    (u64::from_be_bytes(prefix), wanted)
}

/// Sorts a listing by name. The prefixes are compared first, so that most
/// comparisons need not visit the names' allocations: 600,000 names in
/// hash order sort in a third of the time.
fn sorted_by_name(mut listing: Vec<Keyed>) -> Vec<Wanted> {
    listing.sort_unstable_by(|(a_prefix, (a, _)), (b_prefix, (b, _))| {
        a_prefix.cmp(b_prefix).then_with(|| a.cmp(b))
    });
    listing.into_iter().map(|(_, wanted)| wanted).collect()
}

impl Directory {
    /// What `name` holds, as [`Files::load`] would find it unchanged.
    fn found(&self, name: &str) -> Option<Found> {
        Some(Found {
            entry: self.entries.get(name)?.clone(),
            links_to: self.targets.get(name).cloned(),
        })
    }

    /// Puts what was read in place of what the names held (`None`: the
    /// name is gone); whether that changed what they provide. `read` is in name
    /// order, so a directory read for the first time is built at once, and
    /// the names that come or go are added or removed in one pass.
    fn put_all(&mut self, read: Vec<(String, Option<Found>)>) -> bool {
        if self.entries.is_empty() {
            let entries = read.into_iter().filter_map(|(name, found)| {
                let found = found?;
                if found.entry.stamp == Stamp::UNREAD {
                    self.unread.insert(name.as_str().into());
                }
                if let Some(target) = found.links_to {
                    self.targets.insert(name.as_str().into(), target);
                }
                self.memberships_changed |= is_membership(&name);
                Some((name, found.entry))
            });
            self.entries = NameTable::from_sorted(entries);
            return !self.entries.is_empty();
        }
        let mut changed = false;
        let mut added = Vec::new();
        let mut gone = Vec::new();
        for (name, found) in read {
            if found
                .as_ref()
                .is_some_and(|f| f.entry.stamp == Stamp::UNREAD)
            {
                self.unread.insert(name.as_str().into());
            } else if !self.unread.is_empty() {
                self.unread.remove(name.as_str());
            }
            let membership = is_membership(&name);
            let (entry, links_to) = match found {
                Some(found) => (Some(found.entry), found.links_to),
                None => (None, None),
            };
            let retargeted = self.targets.get(name.as_str()) != links_to.as_ref();
            if retargeted {
                match links_to {
                    Some(target) => self.targets.insert(name.as_str().into(), target),
                    None => self.targets.remove(name.as_str()),
                };
            }
            let this_changed = match (self.entries.get_mut(&name), entry) {
                // A new stamp alone (a file touched, a presumed alias
                // read) provides nothing new: no rebuild.
                (Some(previous), Some(entry)) => {
                    let same = previous.content == entry.content;
                    *previous = entry;
                    retargeted || !same
                }
                (None, Some(entry)) => {
                    added.push((name, entry));
                    true
                }
                (Some(_), None) => {
                    gone.push(name);
                    true
                }
                (None, None) => false,
            };
            self.memberships_changed |= this_changed && membership;
            changed |= this_changed;
        }
        self.entries.remove_sorted(&gone);
        self.entries.insert_sorted(added);
        changed
    }
}

impl LocalSource for DropIns {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn watched(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    fn refresh(&mut self, changed: Option<&[PathBuf]>) -> bool {
        let started = Instant::now();
        let mut any = false;
        let mut failures = Vec::new();
        for index in 0..self.dirs.len() {
            let dir = self.dirs[index].path.clone();
            let whole = changed.is_none_or(|paths| paths.contains(&dir));
            if whole {
                let (did, failure) = self.rescan(index);
                any |= did;
                failures.extend(failure);
                continue;
            }
            let names: Vec<Wanted> = changed
                .into_iter()
                .flatten()
                .filter(|p| p.parent() == Some(dir.as_path()))
                .filter_map(|p| Some((p.file_name()?.to_str()?.to_owned(), None)))
                .collect();
            if !names.is_empty() {
                any |= self.reload_changed(index, names);
            }
        }
        self.finish_refresh(started, any, failures)
    }

    fn read_unread(&mut self) -> bool {
        let started = Instant::now();
        let mut any = false;
        for index in 0..self.dirs.len() {
            let failed: Vec<Wanted> = self.dirs[index]
                .unread
                .iter()
                .map(|name| (name.to_string(), None))
                .collect();
            if !failed.is_empty() {
                any |= self.reload_changed(index, failed);
            }
            any |= self.read_presumed(index);
        }
        self.finish_refresh(started, any, Vec::new())
    }

    fn data(&self) -> Arc<SourceData> {
        Arc::clone(&self.data)
    }

    fn report(&self) -> LoadReport {
        self.report.clone()
    }
}

/// A record found only by id: its own (`UID.user`), or one an alias shares.
enum ById<'a, T> {
    Own(&'a Arc<T>),
    Alias(&'a Arc<T>),
}

/// The records of `found` that answer by id, in order. An alias answers
/// only when the record it shares is not seen (its file hidden by an
/// earlier directory): otherwise that record, from the same directory,
/// already answers the id, and a second copy would answer nothing.
fn answering_by_id<T>(
    found: Vec<ById<'_, T>>,
    listed: &[Arc<T>],
    unlisted: impl Fn(&T) -> T,
) -> Vec<Arc<T>> {
    let seen: foldhash::HashSet<*const T> = if found.iter().any(|f| matches!(f, ById::Alias(_))) {
        let own = found.iter().filter_map(|f| match f {
            ById::Own(record) => Some(*record),
            ById::Alias(_) => None,
        });
        listed.iter().chain(own).map(Arc::as_ptr).collect()
    } else {
        foldhash::HashSet::default()
    };
    found
        .into_iter()
        .filter_map(|f| match f {
            ById::Own(record) => Some(Arc::clone(record)),
            ById::Alias(record) if seen.contains(&Arc::as_ptr(record)) => None,
            ById::Alias(record) => Some(Arc::new(unlisted(record))),
        })
        .collect()
}

/// The memberships, each name held once and sharing the allocation of
/// this source's record of that name where it has one. The names come
/// from root's directories, so a fast hash without flooding defence will
/// do.
fn memberships_sharing_names<'a>(
    users: &'a [Arc<User>],
    groups: &'a [Arc<Group>],
    pairs: &[(&'a str, &'a str)],
) -> Memberships {
    /// What is known of a name: a record holds it, or it is held at a place.
    enum Known<'a> {
        Record(&'a Name),
        Held(u32),
    }
    if pairs.is_empty() {
        return Memberships::default();
    }
    let mut known: foldhash::HashMap<&'a str, Known<'a>> =
        foldhash::HashMap::with_capacity_and_hasher(users.len() + groups.len(), Default::default());
    for name in users
        .iter()
        .map(|u| &u.name)
        .chain(groups.iter().map(|g| &g.name))
    {
        known.entry(name).or_insert(Known::Record(name));
    }
    let mut names: Vec<Name> = Vec::new();
    // One hash of the name, whether it is held already or not.
    let mut place = |name: &'a str| -> u32 {
        let next = names.len() as u32;
        let held = match known.entry(name) {
            Slot::Occupied(mut seen) => match *seen.get() {
                Known::Held(place) => return place,
                Known::Record(record) => {
                    seen.insert(Known::Held(next));
                    Name::clone(record)
                }
            },
            Slot::Vacant(new) => {
                new.insert(Known::Held(next));
                Name::from(name)
            }
        };
        names.push(held);
        next
    };
    let places = pairs
        .iter()
        .map(|&(user, group)| (place(user), place(group)))
        .collect();
    Memberships::from_places(names, places)
}

/// What reading one name gave.
enum Loaded {
    Entry(Found),
    /// A link to this sibling, resolved once the sibling is read.
    Alias(Box<str>),
    /// A link named by this id, spelled as the id is written, at a
    /// directory's first read: not read yet ([`presume_aliases`]).
    PutOff(IdName),
    /// Nothing at that name any more.
    Gone,
}

// One is made per name of a first read (600,000 at fleet size): a larger
// variant would make every batch's vectors larger (a `DropInName` in
// `PutOff` added 9 MB to a fleet start's peak).
const _: () = assert!(std::mem::size_of::<Loaded>() == std::mem::size_of::<Found>());

/// Runs `load` on every name (on several threads when there are many).
/// The threads take blocks of names in turn, so that one meeting the
/// costlier kind of file (records, where the other meets memberships)
/// does not finish long after the rest. Each thread opens and closes with
/// a descriptor table of its own ([`read::use_own_descriptor_table`]).
fn in_parallel<N: Sync, T: Send>(
    names: &[N],
    gone: impl Fn() -> T + Sync,
    load: impl Fn(&N) -> T + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if names.len() < PARALLEL_THRESHOLD || threads < 2 {
        return names.iter().map(load).collect();
    }
    let blocks: Vec<&[N]> = names.chunks(PARALLEL_BLOCK).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let take = || {
        read::use_own_descriptor_table();
        let mut done = Vec::new();
        loop {
            let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(block) = blocks.get(at) else {
                return done;
            };
            done.push((at, block.iter().map(&load).collect::<Vec<_>>()));
        }
    };
    let mut loaded: Vec<Option<Vec<T>>> =
        std::iter::repeat_with(|| None).take(blocks.len()).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(take)).collect();
        for worker in workers {
            // A reader thread that panicked leaves its blocks unfilled.
            for (at, part) in worker.join().unwrap_or_default() {
                loaded[at] = Some(part);
            }
        }
    });
    // What a panicked thread took reads as "nothing there"; the next
    // rescan tries again.
    loaded
        .into_iter()
        .zip(blocks)
        .flat_map(|(part, block)| part.unwrap_or_else(|| block.iter().map(|_| gone()).collect()))
        .collect()
}

/// Loads `names` of `dir`. A file that cannot be read keeps what
/// `previous` held for it. With `put_off_links_by_id`, a name the listing
/// calls a link and that is an id's, spelled as the id is written, is not
/// read ([`Loaded::PutOff`]).
fn load_all(
    dir: &Path,
    names: &[Wanted],
    previous: &Directory,
    put_off_links_by_id: bool,
) -> Vec<Loaded> {
    let handle = match read::Dir::open(dir) {
        Ok(handle) => handle,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return names.iter().map(|_| Loaded::Gone).collect()
        }
        Err(e) => {
            let why = format!("{}: cannot be opened: {e}", dir.display());
            return names
                .iter()
                .map(|(name, _)| Loaded::Entry(unreadable(dir, name, &why, previous)))
                .collect();
        }
    };
    // Which companions exist: those listed before, and those read now
    // (in name order, as `names` is), looked up among the few companions.
    let companions: Vec<&str> = names
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| is_companion(name))
        .collect();
    let present =
        |name: &str| previous.entries.contains_key(name) || companions.binary_search(&name).is_ok();
    let files = Files {
        path: dir,
        handle: &handle,
        present: &present,
        previous,
        put_off_links_by_id,
    };
    in_parallel(
        names,
        || Loaded::Gone,
        |(name, listed)| files.load(name, *listed),
    )
}

/// Loads `names` of `dir` as the files their links lead to.
fn load_all_followed(dir: &Path, names: &[String], previous: &Directory) -> Vec<Option<Found>> {
    let Ok(handle) = read::Dir::open(dir) else {
        return names.iter().map(|_| None).collect();
    };
    let present = |name: &str| previous.entries.contains_key(name);
    let files = Files {
        path: dir,
        handle: &handle,
        present: &present,
        previous,
        put_off_links_by_id: false,
    };
    in_parallel(
        names,
        || None,
        |name| {
            let link = files.link_target(name);
            match handle.stat(name) {
                Ok(st) => Some(files.load_file(name, &classify(name), &st, None, link)),
                // A dangling link provides nothing but still takes its
                // name, as in systemd's conf-files.
                Err(ReadError::Missing) if handle.lstat(name).is_ok() => {
                    Some(Found::new(Stamp::NONE, link, Content::Masked))
                }
                Err(ReadError::Missing) => None,
                Err(e) => Some(unreadable(dir, name, &e.to_string(), previous)),
            }
        },
    )
}

/// The file of the same directory a link's target names, if it names one.
fn sibling(target: &str) -> Option<Box<str>> {
    let target = target.strip_prefix("./").unwrap_or(target);
    (!target.is_empty() && !target.contains('/') && target != "." && target != "..")
        .then(|| target.into())
}

/// What [`classify`] says of a name, decided once per read of it.
type Kind<'a> = Result<DropInName<'a>, String>;

/// Whether a name of this kind is an id's (`UID.user`, `GID.group`).
fn is_by_id(kind: &Kind<'_>) -> bool {
    matches!(
        kind,
        Ok(DropInName::UserByUid(_) | DropInName::GroupByGid(_))
    )
}

/// The id of an id's name spelled as [`IdName::spell`] spells it
/// (`1000.user`, not `01000.user`).
fn id_spelled_plainly(name: &str, kind: &Kind<'_>) -> Option<IdName> {
    let id = match kind {
        Ok(DropInName::UserByUid(uid)) => IdName::Uid(*uid),
        Ok(DropInName::GroupByGid(gid)) => IdName::Gid(*gid),
        _ => return None,
    };
    (id.spell(&mut [0; 24]) == Some(name)).then_some(id)
}

/// Whether a name of this kind has its content read (a record), not only
/// its type and size.
fn reads_content(kind: &Kind<'_>) -> bool {
    matches!(
        kind,
        Ok(DropInName::UserByName(_)
            | DropInName::UserByUid(_)
            | DropInName::GroupByName(_)
            | DropInName::GroupByGid(_))
    )
}

/// The entry of a link `name` to the sibling `target`, sharing its record;
/// `None` when the sibling holds no record to share (gone, masked, broken,
/// a link itself): then the link is read as a file of its own.
fn alias(name: &str, target: &str, sibling: Option<&Found>) -> Option<Found> {
    let sibling = sibling.filter(|s| s.links_to.is_none() && s.entry.stamp.is_read())?;
    let sibling = &sibling.entry;
    // A listed record's file is its name's, and an alias spelled as its
    // id is found from the record: such an alias need not store its target.
    let spelled_as_id = || Some(name) == sibling.content.alias_name().as_deref();
    let mut derived = false;
    let content = match (classify(name), &sibling.content) {
        (Ok(kind @ DropInName::UserByUid(_)), Content::User(u)) => {
            match listed_at(&kind, &u.name, u.uid) {
                Ok(_) => {
                    derived = u.listed && spelled_as_id();
                    Content::UserAlias(Arc::clone(u))
                }
                Err(why) => Content::broken(why),
            }
        }
        (Ok(kind @ DropInName::GroupByGid(_)), Content::Group(g)) => {
            match listed_at(&kind, &g.name, g.gid) {
                Ok(_) => {
                    derived = g.listed && spelled_as_id();
                    Content::GroupAlias(Arc::clone(g))
                }
                Err(why) => Content::broken(why),
            }
        }
        _ => return None,
    };
    Some(Found::new(
        sibling.stamp,
        (!derived).then(|| target.into()),
        content,
    ))
}

/// At a directory's first read, takes the links named by an id that were
/// not read ([`Loaded::PutOff`]) for aliases of the record that holds that
/// id, where one is listed in this directory under a name no earlier
/// directory hides, and reads the others. Such a record answers its id
/// before anything a link leads to could, so a presumed link changes no
/// answer by id, and the watcher reads it on its first turn
/// ([`DropIns::read_presumed`]), after `READY=1`. Until then a refused
/// link is not reported, and a link to a record outside the directory has
/// not yet added that record, which answers nothing but takes its name
/// from sources ranked lower. At fleet size this makes the start 0.2-0.3 s
/// shorter: the links' `readlink`s and the sharing of their records.
/// Returns the type the listing gave the links presumed, if any.
fn presume_aliases(
    dir: &Directory,
    earlier: &[Directory],
    wanted: &[Wanted],
    loaded: &mut [Loaded],
) -> Option<FileType> {
    let put_off: Vec<(usize, IdName)> = loaded
        .iter()
        .enumerate()
        .filter_map(|(i, loaded)| match loaded {
            Loaded::PutOff(id) => Some((i, *id)),
            _ => None,
        })
        .collect();
    if put_off.is_empty() {
        return None;
    }
    let visible = |name: &str| earlier.iter().all(|d| !d.entries.contains_key(name));
    let mut users = foldhash::HashMap::default();
    let mut groups = foldhash::HashMap::default();
    for ((name, _), loaded) in wanted.iter().zip(loaded.iter()) {
        let Loaded::Entry(found) = loaded else {
            continue;
        };
        match &found.entry.content {
            Content::User(u) if u.listed && visible(name) => {
                users.entry(u.uid).or_insert_with(|| Arc::clone(u));
            }
            Content::Group(g) if g.listed && visible(name) => {
                groups.entry(g.gid).or_insert_with(|| Arc::clone(g));
            }
            _ => {}
        }
    }
    let mut presumed = None;
    let mut to_read = Vec::new();
    for (i, id) in put_off {
        let content = match id {
            IdName::Uid(uid) => users.get(&uid).map(|u| Content::UserAlias(Arc::clone(u))),
            IdName::Gid(gid) => groups.get(&gid).map(|g| Content::GroupAlias(Arc::clone(g))),
        };
        match content {
            Some(content) => {
                loaded[i] = Loaded::Entry(Found::new(Stamp::PRESUMED, None, content));
                presumed = wanted[i].1;
            }
            None => to_read.push(i),
        }
    }
    if !to_read.is_empty() {
        let names: Vec<Wanted> = to_read.iter().map(|&i| wanted[i].clone()).collect();
        for (i, read) in to_read
            .into_iter()
            .zip(load_all(&dir.path, &names, dir, false))
        {
            loaded[i] = read;
        }
    }
    presumed
}

/// The entry of a name of `dir` that could not be read: what `previous`
/// held for it is kept, and read again soon.
fn unreadable(dir: &Path, name: &str, why: &str, previous: &Directory) -> Found {
    let content = match previous.entries.get(name) {
        Some(before) if !matches!(before.content, Content::Broken(_)) => {
            tracing::warn!("{}: {why}; keeping what it held", dir.join(name).display());
            before.content.clone()
        }
        _ => Content::broken(why),
    };
    // The fingerprint is forgotten, so that any rescan tries again.
    Found::new(Stamp::UNREAD, previous.targets.get(name).cloned(), content)
}

/// The files of one open directory, as one batch reads them.
struct Files<'a> {
    path: &'a Path,
    handle: &'a read::Dir,
    /// Whether a name exists in the directory (for companions).
    present: &'a (dyn Fn(&str) -> bool + Sync),
    /// What the directory held before this batch: kept for a file that
    /// cannot be read.
    previous: &'a Directory,
    /// Links named by an id are left for [`presume_aliases`].
    put_off_links_by_id: bool,
}

impl Files<'_> {
    fn unreadable(&self, name: &str, why: &str) -> Found {
        unreadable(self.path, name, why, self.previous)
    }

    /// Where the link `name` points, when that is a file of the same
    /// directory.
    fn link_target(&self, name: &str) -> Option<Box<str>> {
        sibling(self.handle.read_link(name).ok()??.as_str())
    }

    /// What `name` holds. A name the listing called a link is read as one,
    /// a record it called a regular file is opened at once (its `fstat` is
    /// the check); anything else, or a name that is no longer what the
    /// listing said, is `lstat`ed first.
    fn load(&self, name: &str, listed: Option<FileType>) -> Loaded {
        let kind = classify(name);
        if self.put_off_links_by_id && listed.is_some_and(|t| t.is_symlink()) {
            if let Some(id) = id_spelled_plainly(name, &kind) {
                return Loaded::PutOff(id);
            }
        }
        match listed {
            Some(t) if t.is_symlink() => {
                if let Ok(target) = self.handle.read_link(name) {
                    let link = target.as_deref().and_then(sibling);
                    return self.load_link(name, &kind, link);
                }
            }
            Some(t) if t.is_file() && reads_content(&kind) => {
                if let Ok(opened) = self.handle.open_listed(name) {
                    let st = opened.stat;
                    return Loaded::Entry(self.load_file(name, &kind, &st, Some(opened), None));
                }
            }
            _ => {}
        }
        match self.handle.lstat(name) {
            Ok(st) if st.is_symlink() => self.load_link(name, &kind, self.link_target(name)),
            Ok(st) => Loaded::Entry(self.load_file(name, &kind, &st, None, None)),
            Err(ReadError::Missing) => Loaded::Gone,
            Err(e) => Loaded::Entry(self.unreadable(name, &e.to_string())),
        }
    }

    /// What the link `name` holds, pointing at the sibling `link` if it
    /// does.
    fn load_link(&self, name: &str, kind: &Kind<'_>, link: Option<Box<str>>) -> Loaded {
        match link {
            Some(target) if is_by_id(kind) => Loaded::Alias(target),
            _ => match self.handle.stat(name) {
                Ok(st) => Loaded::Entry(self.load_file(name, kind, &st, None, link)),
                Err(ReadError::Missing) => {
                    Loaded::Entry(Found::new(Stamp::NONE, link, Content::Masked))
                }
                Err(e) => Loaded::Entry(self.unreadable(name, &e.to_string())),
            },
        }
    }

    /// The entry of `name`, which `st` describes (its `lstat` when it is
    /// not a link, else its `stat`, or the `fstat` of `opened`, the file
    /// already open at that name).
    fn load_file(
        &self,
        name: &str,
        kind: &Kind<'_>,
        st: &read::Stat,
        opened: Option<read::Opened>,
        links_to: Option<Box<str>>,
    ) -> Found {
        let content = match kind {
            Err(why) => Content::broken(why.as_str()),
            Ok(DropInName::Companion | DropInName::Unrelated) => Content::Nothing,
            // Empty, or a link to /dev/null (any device: systemd's
            // `null_or_empty`), masks the name.
            Ok(_) if st.is_device() || (st.irregular().is_none() && st.size == 0) => {
                Content::Masked
            }
            Ok(_) if st.irregular().is_some() => Content::broken(format!(
                "is a {}, not a regular file",
                st.irregular().unwrap_or("?")
            )),
            Ok(DropInName::Membership { .. }) => Content::Membership,
            Ok(kind) => match self.load_record(name, st, opened, kind) {
                Ok(content) => content,
                Err(Failure::Unreadable(why)) => {
                    let mut found = self.unreadable(name, &why);
                    found.links_to = links_to;
                    return found;
                }
                Err(Failure::Refused(why)) => Content::broken(why),
            },
        };
        Found::new(Stamp::of(st), links_to, content)
    }

    fn load_record(
        &self,
        name: &str,
        st: &read::Stat,
        opened: Option<read::Opened>,
        kind: &DropInName,
    ) -> Result<Content, Failure> {
        let companion = |suffix: &str| {
            let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
            let companion = [stem, suffix].concat();
            (self.present)(&companion).then_some(companion)
        };
        match kind {
            DropInName::UserByName(_) | DropInName::UserByUid(_) => {
                let (record, keys) =
                    self.read_record(name, st, opened, companion(USER_COMPANION))?;
                load_user(record, &keys, kind).map(|u| Content::User(Arc::new(u)))
            }
            DropInName::GroupByName(_) | DropInName::GroupByGid(_) => {
                let (record, keys) =
                    self.read_record(name, st, opened, companion(GROUP_COMPANION))?;
                load_group(record, &keys, kind).map(|g| Content::Group(Arc::new(g)))
            }
            _ => Ok(Content::Nothing),
        }
    }

    /// Reads a JSON object from the file `name`, which `st` describes, or
    /// from `opened`, the file already open at that name.
    fn read_object(
        &self,
        name: &str,
        st: &read::Stat,
        opened: Option<read::Opened>,
    ) -> Result<Map<String, Value>, Failure> {
        let read = match opened {
            Some(opened) => opened.read(MAX_FILE_SIZE),
            None => self.handle.read(name, st, MAX_FILE_SIZE),
        };
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e @ (ReadError::NotRegular(_) | ReadError::TooLarge { .. })) => {
                return Err(Failure::Refused(e.to_string()))
            }
            Err(e) => return Err(Failure::Unreadable(e.to_string())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(obj)) => Ok(obj),
            Ok(_) => Err(Failure::Refused("not a JSON object".to_owned())),
            Err(e) => Err(Failure::Refused(format!("invalid JSON: {e}"))),
        }
    }

    /// Reads a record and merges its `-privileged` companion, if the
    /// directory has one; returns the record and the companion's keys.
    fn read_record(
        &self,
        name: &str,
        st: &read::Stat,
        opened: Option<read::Opened>,
        companion: Option<String>,
    ) -> Result<(Map<String, Value>, Vec<String>), Failure> {
        let mut record = self.read_object(name, st, opened)?;
        if record.contains_key("privileged") {
            return Err(Failure::Refused(
                "a 'privileged' section belongs in the -privileged file".to_owned(),
            ));
        }
        let mut private_keys = Vec::new();
        let Some(companion) = companion else {
            return Ok((record, private_keys));
        };
        let in_companion = |e: Failure| {
            let path = self.path.join(&companion);
            match e {
                Failure::Unreadable(why) => {
                    Failure::Unreadable(format!("{}: {why}", path.display()))
                }
                Failure::Refused(why) => Failure::Refused(format!("{}: {why}", path.display())),
            }
        };
        match self.handle.stat(&companion) {
            Ok(cst) => {
                let extra = self
                    .read_object(&companion, &cst, None)
                    .map_err(in_companion)?;
                private_keys.extend(extra.keys().cloned());
                record.extend(extra);
            }
            Err(ReadError::Missing) => {}
            Err(e) => return Err(in_companion(Failure::Unreadable(e.to_string()))),
        }
        Ok((record, private_keys))
    }
}

/// Why a file provides nothing: it could not be read (then what it held
/// before is kept), or what it holds is refused.
enum Failure {
    Unreadable(String),
    Refused(String),
}

/// The record split for readers: what the companion holds is privileged,
/// and so are the shadow aging fields, as they are for `/etc/shadow`.
/// None when the record has no companion and its fields render as it
/// (`rendered`): then it is rendered from them.
fn json_record(
    record: Map<String, Value>,
    private_keys: &[String],
    rendered: impl FnOnce(&Map<String, Value>) -> bool,
) -> Option<Box<JsonRecord>> {
    if private_keys.is_empty() && rendered(&record) {
        return None;
    }
    let keys: Vec<&str> = private_keys
        .iter()
        .map(String::as_str)
        .chain(SHADOW_FIELDS)
        .collect();
    Some(Box::new(JsonRecord::split(record, &keys)))
}

fn names_in(record: &Map<String, Value>, key: &str) -> Box<[Name]> {
    record
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|name| valid_name(name))
        .map(Name::from)
        .collect()
}

/// Whether a record with this name and id, found at a file of this kind,
/// is listed (at `NAME.user`) or answers by id only (at `UID.user`): the
/// name or id inside must be the file name's, systemd's rule for both.
fn listed_at(kind: &DropInName, name: &str, id: u32) -> Result<bool, String> {
    let (name_key, id_key) = match kind {
        DropInName::UserByName(_) | DropInName::UserByUid(_) => ("userName", "uid"),
        _ => ("groupName", "gid"),
    };
    match *kind {
        DropInName::UserByName(file) | DropInName::GroupByName(file) if file == name => Ok(true),
        DropInName::UserByName(file) | DropInName::GroupByName(file) => Err(format!(
            "{name_key} {} does not match the file name {}",
            super::quote(name),
            super::quote(file)
        )),
        DropInName::UserByUid(file) | DropInName::GroupByGid(file) if file == id => Ok(false),
        DropInName::UserByUid(file) | DropInName::GroupByGid(file) => {
            Err(format!("{id_key} {id} does not match the file name {file}"))
        }
        _ => Err("not a user or group drop-in".to_owned()),
    }
}

fn load_user(
    record: Map<String, Value>,
    private_keys: &[String],
    expect: &DropInName,
) -> Result<User, Failure> {
    let object = Value::Object(record);
    let user = UserRecord::from_json(&object).map_err(|e| Failure::Refused(e.to_string()))?;
    let listed = listed_at(expect, &user.name, user.uid).map_err(Failure::Refused)?;
    let Value::Object(record) = object else {
        return Err(Failure::Refused("not a JSON object".to_owned()));
    };
    let member_of = names_in(&record, "memberOf");
    let mut out = User::from_nss(user, listed);
    out.member_of = member_of;
    out.json = json_record(record, private_keys, |record| out.renders_as(record));
    Ok(out)
}

fn load_group(
    record: Map<String, Value>,
    private_keys: &[String],
    expect: &DropInName,
) -> Result<Group, Failure> {
    let object = Value::Object(record);
    let group = GroupRecord::from_json(&object).map_err(|e| Failure::Refused(e.to_string()))?;
    let listed = listed_at(expect, &group.name, group.gid).map_err(Failure::Refused)?;
    let Value::Object(record) = object else {
        return Err(Failure::Refused("not a JSON object".to_owned()));
    };
    let mut out = Group::from_nss(group, listed);
    out.json = json_record(record, private_keys, |record| out.renders_as(record));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::symlink;

    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("brokerd-dropins-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for d in DIRS {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            Root(dir)
        }
        fn write(&self, dir: &str, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(dir).join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
        fn load(&self) -> SourceData {
            let mut source = DropIns::new(&self.0);
            source.refresh(None);
            (*source.data()).clone()
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn user_names(data: &SourceData) -> Vec<(&str, bool)> {
        data.users
            .iter()
            .map(|u| (u.name.as_ref(), u.listed))
            .collect()
    }

    fn public(user: &User) -> Value {
        serde_json::from_str(&user.json.as_ref().unwrap().public).unwrap()
    }

    #[test]
    fn a_record_must_carry_its_file_name_or_id() {
        let cases = [
            (DropInName::UserByName("alice"), "alice", 1000, Ok(true)),
            (DropInName::UserByUid(1000), "alice", 1000, Ok(false)),
            (DropInName::GroupByName("wheel"), "wheel", 10, Ok(true)),
            (DropInName::GroupByGid(10), "wheel", 10, Ok(false)),
            (
                DropInName::UserByName("alice"),
                "mallory",
                1000,
                Err("userName \"mallory\" does not match the file name \"alice\""),
            ),
            (
                DropInName::UserByUid(1000),
                "alice",
                0,
                Err("uid 0 does not match the file name 1000"),
            ),
            (
                DropInName::GroupByName("wheel"),
                "staff",
                10,
                Err("groupName \"staff\" does not match the file name \"wheel\""),
            ),
            (
                DropInName::GroupByGid(10),
                "wheel",
                0,
                Err("gid 0 does not match the file name 10"),
            ),
            (
                DropInName::Companion,
                "alice",
                1000,
                Err("not a user or group drop-in"),
            ),
        ];
        for (kind, name, id, expected) in cases {
            assert_eq!(
                listed_at(&kind, name, id),
                expected.map_err(str::to_owned),
                "{kind:?} holding {name} {id}"
            );
        }
    }

    #[test]
    fn file_names_are_classified() {
        assert_eq!(classify("alice.user"), Ok(DropInName::UserByName("alice")));
        assert_eq!(classify("1000.user"), Ok(DropInName::UserByUid(1000)));
        assert_eq!(
            classify("wheel.group"),
            Ok(DropInName::GroupByName("wheel"))
        );
        assert_eq!(classify("10.group"), Ok(DropInName::GroupByGid(10)));
        assert_eq!(
            classify("alice:wheel.membership"),
            Ok(DropInName::Membership {
                user: "alice",
                group: "wheel"
            })
        );
        assert_eq!(classify("alice.user-privileged"), Ok(DropInName::Companion));
        assert_eq!(classify("README"), Ok(DropInName::Unrelated));
        assert!(classify("-x.user").is_err());
        assert!(classify("a,b.group").is_err());
        assert!(classify("alice.membership").is_err());
        assert!(classify("alice:.membership").is_err());
        assert!(classify("alice:a,b.membership").is_err());
        assert_eq!(companion_of("x.user-privileged").as_deref(), Some("x.user"));
        assert_eq!(
            companion_of("x.group-privileged").as_deref(),
            Some("x.group")
        );
        assert_eq!(companion_of("x.user"), None);
    }

    #[test]
    fn earlier_directory_wins_and_masks_hide() {
        let root = Root::new("priority");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        root.write(
            "usr/lib/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":3001}"#,
        );
        root.write(
            "usr/lib/userdb",
            "bob.user",
            r#"{"userName":"bob","uid":3002}"#,
        );
        root.write("run/userdb", "bob.user", "");
        root.write(
            "usr/lib/userdb",
            "carol.user",
            r#"{"userName":"carol","uid":3003}"#,
        );
        symlink("/dev/null", root.0.join("run/host/userdb/carol.user")).unwrap();
        let data = root.load();
        assert!(data.problems.is_empty(), "{:?}", data.problems);
        assert_eq!(user_names(&data), [("alice", true)]);
        assert_eq!(data.users[0].uid, 2001);
    }

    #[test]
    fn uid_links_are_not_separate_users() {
        let root = Root::new("uidlink");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        symlink("alice.user", root.0.join("etc/userdb/2001.user")).unwrap();
        symlink("./alice.user", root.0.join("etc/userdb/2009.user")).unwrap();
        root.write(
            "etc/userdb",
            "2002.user",
            r#"{"userName":"dave","uid":2002}"#,
        );
        root.write("etc/userdb", "2003.user", r#"{"userName":"eve","uid":9}"#);
        // carol.user is hidden by an earlier directory's mask: her link,
        // in a later one, answers by uid on its own.
        root.write("etc/userdb", "carol.user", "");
        root.write(
            "usr/lib/userdb",
            "carol.user",
            r#"{"userName":"carol","uid":2004}"#,
        );
        symlink("carol.user", root.0.join("usr/lib/userdb/2004.user")).unwrap();
        let data = root.load();
        // alice's link shares her record, which answers her uid itself.
        assert_eq!(
            user_names(&data),
            [("alice", true), ("dave", false), ("carol", false)]
        );
        assert_eq!(data.users[2].uid, 2004);
        assert_eq!(data.problems.len(), 2, "{:?}", data.problems);
        assert!(data
            .problems
            .iter()
            .any(|p| p.contains("2003.user") && p.contains("does not match")));
        assert!(data
            .problems
            .iter()
            .any(|p| p.contains("2009.user") && p.contains("does not match")));
    }

    #[test]
    fn a_link_by_id_beside_its_record_is_taken_for_its_alias_and_read_on_the_next_turn() {
        let root = Root::new("presumed");
        let dir = root.0.join("etc/userdb");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        root.write("etc/userdb", "bob.user", r#"{"userName":"bob","uid":2002}"#);
        root.write(
            "etc/userdb",
            "wheel.group",
            r#"{"groupName":"wheel","gid":2010}"#,
        );
        // Alice's id leads to bob: refused once read.
        symlink("bob.user", dir.join("2001.user")).unwrap();
        symlink("bob.user", dir.join("2002.user")).unwrap();
        symlink("wheel.group", dir.join("2010.group")).unwrap();
        let mut source = DropIns::new(&root.0);
        assert!(source.refresh(None));
        let first = source.data();
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert_eq!(user_names(&first), [("alice", true), ("bob", true)]);
        let entries = &source.dirs[0].entries;
        for link in ["2001.user", "2002.user", "2010.group"] {
            assert_eq!(entries[link].stamp, Stamp::PRESUMED, "{link}");
        }
        assert!(matches!(
            &entries["2001.user"].content,
            Content::UserAlias(u) if u.name.as_ref() == "alice"
        ));

        assert!(source.read_unread(), "the refused link changed nothing");
        let read = source.data();
        assert_eq!(user_names(&read), [("alice", true), ("bob", true)]);
        assert!(
            read.problems.len() == 1
                && read.problems[0].contains("2001.user")
                && read.problems[0].contains("does not match"),
            "{:?}",
            read.problems
        );
        let entries = &source.dirs[0].entries;
        assert!(entries.iter().all(|(_, entry)| entry.stamp.is_read()));
        assert!(matches!(
            &entries["2002.user"].content,
            Content::UserAlias(u) if u.name.as_ref() == "bob"
        ));
        assert!(matches!(
            &entries["2010.group"].content,
            Content::GroupAlias(g) if g.name.as_ref() == "wheel"
        ));
        // Verified aliases provide what the presumed ones did: nothing to rebuild.
        assert!(!source.read_unread(), "nothing was left unread");
        assert!(
            !source.refresh(None),
            "a rescan without changes changes nothing"
        );
    }

    #[test]
    fn everything_a_privileged_companion_holds_is_privileged() {
        let root = Root::new("privileged");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        root.write(
            "etc/userdb",
            "alice.user-privileged",
            r#"{"privileged":{"hashedPassword":["$6$x$y"]}}"#,
        );
        root.write("etc/userdb", "bob.user", r#"{"userName":"bob","uid":2003}"#);
        root.write(
            "etc/userdb",
            "bob.user-privileged",
            r#"{"hashedPassword":["$6$top$level"]}"#,
        );
        root.write(
            "etc/userdb",
            "mallory.user",
            r#"{"userName":"mallory","uid":2002,"privileged":{"hashedPassword":["$6$a"]}}"#,
        );
        let data = root.load();
        assert_eq!(user_names(&data), [("alice", true), ("bob", true)]);
        let alice = &data.users[0];
        assert_eq!(
            alice.shadow.as_ref().unwrap().hashed_password.as_deref(),
            Some("$6$x$y")
        );
        assert!(public(alice).get("privileged").is_none());
        let bob = &data.users[1];
        assert!(bob.has_privileged());
        assert!(public(bob).get("hashedPassword").is_none());
        let (full, withheld) = bob.userdb_json(true);
        assert!(!withheld);
        assert_eq!(full["hashedPassword"][0], "$6$top$level");
        assert_eq!(data.problems.len(), 1);
        assert!(
            data.problems[0].contains("mallory.user"),
            "{:?}",
            data.problems
        );
    }

    #[test]
    fn hostile_files_are_skipped_each_with_one_problem() {
        let root = Root::new("hostile");
        root.write(
            "etc/userdb",
            "good.user",
            r#"{"userName":"good","uid":2000}"#,
        );
        root.write("etc/userdb", "broken.user", r#"{"userName":"broken","#);
        root.write(
            "etc/userdb",
            "other.user",
            r#"{"userName":"notother","uid":2001}"#,
        );
        let huge = format!(
            r#"{{"userName":"huge","uid":2002,"realName":"{}"}}"#,
            "a".repeat(1 << 20)
        );
        root.write("etc/userdb", "huge.user", &huge);
        root.write(
            "etc/userdb",
            "nul.user",
            r#"{"userName":"nul","uid":2003,"realName":"a\u0000b"}"#,
        );
        root.write(
            "etc/userdb",
            "colon.user",
            r#"{"userName":"colon","uid":2004,"realName":"x:0:0::/:/bin/sh"}"#,
        );
        root.write("etc/userdb", "neg.user", r#"{"userName":"neg","uid":-1}"#);
        root.write("etc/userdb", "array.group", "[1,2]");
        let fifo = root.0.join("etc/userdb/fifo.user");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        symlink("/proc/self/fd/0", root.0.join("etc/userdb/stdin.user")).unwrap();
        root.write(
            "etc/userdb",
            "wheel.group",
            r#"{"groupName":"wheel","gid":10,"members":["good"]}"#,
        );
        let started = Instant::now();
        let data = root.load();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(user_names(&data), [("good", true)]);
        assert_eq!(data.groups.len(), 1);
        for bad in [
            "broken", "other", "huge", "nul", "colon", "neg", "array", "fifo",
        ] {
            assert_eq!(
                data.problems
                    .iter()
                    .filter(|p| p.contains(&format!("/{bad}.")))
                    .count(),
                1,
                "{bad}: {:?}",
                data.problems
            );
        }
    }

    #[test]
    fn groups_and_memberships() {
        let root = Root::new("groups");
        root.write(
            "run/userdb",
            "devs.group",
            r#"{"groupName":"devs","gid":5000}"#,
        );
        root.write(
            "run/userdb",
            "5000.group",
            r#"{"groupName":"devs","gid":5000}"#,
        );
        root.write("run/userdb", "alice:devs.membership", "{}");
        root.write("usr/lib/userdb", "bob:devs.membership", "anything");
        // Empty, like a link to /dev/null, is a mask, as in systemd.
        root.write("usr/lib/userdb", "carol:devs.membership", "");
        root.write("usr/lib/userdb", "bad:a,b.membership", "{}");
        root.write("usr/lib/userdb", "alice:ops.membership", "{}");
        let data = root.load();
        assert_eq!(
            data.groups.iter().map(|g| g.listed).collect::<Vec<_>>(),
            [true, false]
        );
        let pairs: Vec<(&str, &str)> = data
            .memberships
            .iter()
            .map(|(u, g)| (u.as_ref(), g.as_ref()))
            .collect();
        assert_eq!(
            pairs,
            [("alice", "devs"), ("alice", "ops"), ("bob", "devs")]
        );
        // The group's name is shared, not allocated once more per
        // membership, and a name without a record is held once.
        let held: Vec<(&Name, &Name)> = data.memberships.iter().collect();
        assert!(Arc::ptr_eq(held[0].1, &data.groups[0].name));
        assert!(Arc::ptr_eq(held[2].1, &data.groups[0].name));
        assert!(Arc::ptr_eq(held[0].0, held[1].0));
        assert_eq!(data.problems.len(), 1);
    }

    #[test]
    fn a_record_its_fields_render_exactly_keeps_no_text_and_renders_the_same() {
        let root = Root::new("plain");
        let plain = json!({"userName": "alice", "uid": 1500, "gid": 1500, "realName": "Alice",
            "homeDirectory": "/home/alice", "shell": "/bin/sh"});
        let richer = json!({"userName": "bob", "uid": 1501, "gid": 1501,
            "homeDirectory": "/home/bob", "shell": "/bin/sh", "disposition": "regular"});
        let group = json!({"groupName": "devs", "gid": 5000, "members": ["alice"]});
        root.write("etc/userdb", "alice.user", &plain.to_string());
        root.write("etc/userdb", "bob.user", &richer.to_string());
        root.write("etc/userdb", "devs.group", &group.to_string());
        let data = root.load();
        let (alice, bob) = (&data.users[0], &data.users[1]);
        assert!(alice.json.is_none());
        assert_eq!(alice.userdb_json(false), (plain, false));
        assert!(bob.json.is_some());
        assert_eq!(bob.userdb_json(false), (richer, false));
        let devs = &data.groups[0];
        assert!(devs.json.is_none());
        assert_eq!(
            devs.userdb_json(vec!["alice".into(), "carol".into()], false)
                .0,
            json!({"groupName": "devs", "gid": 5000, "members": ["alice", "carol"]})
        );
    }

    #[test]
    fn names_that_are_no_longer_what_the_listing_said_are_looked_at_again() {
        let root = Root::new("relisted");
        let dir = root.0.join("etc/userdb");
        let regular = root
            .write("etc/userdb", "probe", "")
            .symlink_metadata()
            .unwrap()
            .file_type();
        symlink("probe", dir.join("probe-link")).unwrap();
        let link = dir
            .join("probe-link")
            .symlink_metadata()
            .unwrap()
            .file_type();
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        // Listed as regular files, but by the time they are read: a FIFO,
        // a link to a sibling, a link to /dev/null, a regular file listed
        // as a link.
        assert!(std::process::Command::new("mkfifo")
            .arg(dir.join("fifo.user"))
            .status()
            .unwrap()
            .success());
        symlink("alice.user", dir.join("2001.user")).unwrap();
        symlink("/dev/null", dir.join("masked.user")).unwrap();
        root.write("etc/userdb", "bob.user", r#"{"userName":"bob","uid":2002}"#);
        let handle = read::Dir::open(&dir).unwrap();
        let present = |_: &str| false;
        let previous = Directory::default();
        let files = Files {
            path: &dir,
            handle: &handle,
            present: &present,
            previous: &previous,
            put_off_links_by_id: false,
        };
        let started = Instant::now();
        let content = |loaded: Loaded| match loaded {
            Loaded::Entry(found) => found.entry.content,
            Loaded::Alias(target) => panic!("an alias of {target}"),
            Loaded::Gone => panic!("gone"),
            Loaded::PutOff(id) => panic!("put off: {id:?}"),
        };
        assert!(matches!(
            content(files.load("fifo.user", Some(regular))),
            Content::Broken(why) if why.contains("FIFO")
        ));
        assert!(matches!(
            files.load("2001.user", Some(regular)),
            Loaded::Alias(target) if &*target == "alice.user"
        ));
        assert_eq!(
            content(files.load("masked.user", Some(regular))),
            Content::Masked
        );
        assert!(matches!(
            content(files.load("bob.user", Some(link))),
            Content::User(u) if u.uid == 2002
        ));
        assert!(matches!(
            files.load("gone.user", Some(regular)),
            Loaded::Gone
        ));
        // A device node itself, where one can be made.
        let made = std::process::Command::new("mknod")
            .arg(dir.join("device.user"))
            .args(["c", "1", "3"])
            .status()
            .is_ok_and(|s| s.success());
        if made {
            assert_eq!(
                content(files.load("device.user", Some(regular))),
                Content::Masked
            );
        } else {
            eprintln!("no device node made (not root): that case is not checked");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_rescan_drops_removed_names_keeps_the_rest_and_reads_new_ones() {
        let root = Root::new("rescan");
        let dir = root.0.join("etc/userdb");
        for (name, uid) in [("a", 2001), ("b", 2002), ("c", 2003), ("d", 2004)] {
            root.write(
                "etc/userdb",
                &format!("{name}.user"),
                &format!(r#"{{"userName":"{name}","uid":{uid}}}"#),
            );
            symlink(format!("{name}.user"), dir.join(format!("{uid}.user"))).unwrap();
        }
        let mut source = DropIns::new(&root.0);
        assert!(source.refresh(None));
        assert_eq!(source.dirs[0].entries.len(), 8);
        let kept = Arc::clone(&source.data().users[2]);
        std::fs::remove_file(dir.join("a.user")).unwrap();
        std::fs::remove_file(dir.join("2001.user")).unwrap();
        std::fs::remove_file(dir.join("d.user")).unwrap();
        root.write("etc/userdb", "bb.user", r#"{"userName":"bb","uid":2005}"#);
        assert!(source.refresh(None));
        let data = source.data();
        // d's link now leads nowhere: it masks, as a dangling link does.
        assert_eq!(user_names(&data), [("b", true), ("bb", true), ("c", true)]);
        assert!(Arc::ptr_eq(&kept, &data.users[2]), "c was not read again");
        let names: Vec<&str> = source.dirs[0]
            .entries
            .iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "2002.user",
                "2003.user",
                "2004.user",
                "b.user",
                "bb.user",
                "c.user"
            ]
        );
        assert_eq!(source.dirs[0].entries["2004.user"].content, Content::Masked);
    }

    #[test]
    fn memberships_follow_their_files_through_changes_rescans_and_masks() {
        let root = Root::new("memberships");
        let pairs = |source: &DropIns| -> Vec<(String, String)> {
            source
                .data()
                .memberships
                .iter()
                .map(|(u, g)| (u.to_string(), g.to_string()))
                .collect()
        };
        let pair = |u: &str, g: &str| (u.to_owned(), g.to_owned());
        let alice = root.write(
            "run/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        root.write("run/userdb", "alice:devs.membership", "{}");
        let mut source = DropIns::new(&root.0);
        source.refresh(None);
        assert_eq!(pairs(&source), [pair("alice", "devs")]);
        // A record changes, no membership does: they stand as they were.
        std::fs::write(&alice, r#"{"userName":"alice","uid":2001,"realName":"A"}"#).unwrap();
        assert!(source.refresh(Some(&[alice])));
        assert_eq!(pairs(&source), [pair("alice", "devs")]);
        // One goes, one comes: seen by a rescan.
        std::fs::remove_file(root.0.join("run/userdb/alice:devs.membership")).unwrap();
        root.write("run/userdb", "bob:devs.membership", "{}");
        assert!(source.refresh(None));
        assert_eq!(pairs(&source), [pair("bob", "devs")]);
        // An empty file of that name in an earlier directory masks it.
        let mask = root.write("etc/userdb", "bob:devs.membership", "");
        assert!(source.refresh(Some(&[mask])));
        assert_eq!(pairs(&source), []);
    }

    /// Writes `name` of `etc/userdb` anew and refreshes `source` for it,
    /// which must see a change; what `source` then provides.
    fn rewrite(root: &Root, source: &mut DropIns, name: &str, content: &str) -> Arc<SourceData> {
        root.write("etc/userdb", name, content);
        let path = root.0.join("etc/userdb").join(name);
        assert!(source.refresh(Some(&[path])), "{name} changed nothing");
        source.data()
    }

    #[test]
    fn a_change_rereads_the_file_its_companion_record_and_links_to_it() {
        let root = Root::new("incremental");
        let dir = root.0.join("etc/userdb");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        symlink("alice.user", dir.join("2001.user")).unwrap();
        root.write("etc/userdb", "bob.user", r#"{"userName":"bob","uid":2002}"#);
        // The same id spelled otherwise: a link that stores its target.
        symlink("bob.user", dir.join("02002.user")).unwrap();
        let mut source = DropIns::new(&root.0);
        assert!(source.refresh(None));
        assert!(
            !source.refresh(None),
            "a rescan without changes changes nothing"
        );
        let bob = Arc::clone(&source.data().users[1]);

        let content = r#"{"userName":"alice","uid":2001,"realName":"A"}"#;
        let data = rewrite(&root, &mut source, "alice.user", content);
        assert!(data
            .users
            .iter()
            .all(|u| u.name.as_ref() != "alice" || u.gecos() == "A"));
        assert!(Arc::ptr_eq(&bob, &data.users[1]), "bob was not read again");
        let link = &source.dirs[0].entries["2001.user"].content;
        assert!(
            matches!(link, Content::UserAlias(u) if Arc::ptr_eq(u, &data.users[0])),
            "the link shares the new record: {link:?}"
        );

        let content = r#"{"userName":"bob","uid":2002,"realName":"B"}"#;
        let data = rewrite(&root, &mut source, "bob.user", content);
        let link = &source.dirs[0].entries["02002.user"];
        assert!(
            matches!(&link.content, Content::UserAlias(u) if Arc::ptr_eq(u, &data.users[1]))
                && source.dirs[0].targets.contains_key("02002.user"),
            "the otherwise spelled link shares the new record: {link:?}"
        );

        let content = r#"{"privileged":{"hashedPassword":["$6$new"]}}"#;
        rewrite(&root, &mut source, "alice.user-privileged", content);
        assert!(source.data().users[0].shadow.is_some());

        std::fs::remove_file(dir.join("bob.user")).unwrap();
        assert!(source.refresh(Some(&[dir.join("bob.user")])));
        assert_eq!(user_names(&source.data()), [("alice", true)]);

        // The link now names another uid than its record: refused.
        let content = r#"{"userName":"alice","uid":2005}"#;
        rewrite(&root, &mut source, "alice.user", content);
        let problems = &source.data().problems;
        assert!(
            problems.len() == 1 && problems[0].contains("2001.user"),
            "{problems:?}"
        );
    }
}
