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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};
use userdb_proto::names::valid_name;
use userdb_proto::record::{GroupRecord, UserRecord};

use super::read::{self, Identity, ReadError};
use super::{LoadReport, LocalSource, SourceData, SourceInfo, SourceKind};
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

/// The drop-in directories below `root`, in priority order.
pub fn dirs(root: &Path) -> Vec<PathBuf> {
    DIRS.iter().map(|d| root.join(d)).collect()
}

/// What a drop-in file name declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropInName {
    UserByName(String),
    UserByUid(u32),
    GroupByName(String),
    GroupByGid(u32),
    Membership {
        user: String,
        group: String,
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
pub fn classify(file_name: &str) -> Result<DropInName, String> {
    if file_name.ends_with(USER_COMPANION) || file_name.ends_with(GROUP_COMPANION) {
        return Ok(DropInName::Companion);
    }
    if let Some(stem) = file_name.strip_suffix(".user") {
        return match stem.parse::<u32>() {
            Ok(uid) => Ok(DropInName::UserByUid(uid)),
            Err(_) if valid_name(stem) => Ok(DropInName::UserByName(stem.to_owned())),
            Err(_) => Err(format!("{} is not a valid user name", super::quote(stem))),
        };
    }
    if let Some(stem) = file_name.strip_suffix(".group") {
        return match stem.parse::<u32>() {
            Ok(gid) => Ok(DropInName::GroupByGid(gid)),
            Err(_) if valid_name(stem) => Ok(DropInName::GroupByName(stem.to_owned())),
            Err(_) => Err(format!("{} is not a valid group name", super::quote(stem))),
        };
    }
    if let Some(stem) = file_name.strip_suffix(".membership") {
        return match stem.split_once(':') {
            Some((user, group)) if valid_name(user) && valid_name(group) => {
                Ok(DropInName::Membership {
                    user: user.to_owned(),
                    group: group.to_owned(),
                })
            }
            _ => Err("not USER:GROUP with two valid names".to_owned()),
        };
    }
    Ok(DropInName::Unrelated)
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

/// What one file in one directory provides.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    /// Hides the name in later directories and provides nothing.
    Masked,
    User(Arc<User>),
    Group(Arc<Group>),
    Membership(Name, Name),
    /// A companion or an unrelated file: nothing on its own.
    Nothing,
    /// Refused, with the reason (logged once while it persists).
    Broken(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// The file (and its companion) as last read; a rescan re-reads only
    /// files whose stamp changed.
    stamp: Option<(Identity, Option<Identity>)>,
    /// For a link to another file of the same directory: that file's name,
    /// so that a change to it re-reads the link too.
    links_to: Option<Box<str>>,
    content: Content,
    /// The last read failed for a reason that may pass: read again soon.
    unread: bool,
}

/// One drop-in directory, file by file.
#[derive(Debug, Default)]
struct Directory {
    path: PathBuf,
    entries: HashMap<Box<str>, Entry>,
    /// The names whose entry is `unread`, so that finding them costs
    /// nothing while idle.
    unread: HashSet<Box<str>>,
}

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
                    entries: HashMap::new(),
                    unread: HashSet::new(),
                })
                .collect(),
            data: Arc::default(),
            report: LoadReport::default(),
        }
    }

    /// Makes the data of the visible entries, in systemd's order: named
    /// records by file name, then the id-named ones.
    fn rebuild(&mut self) {
        let mut visible: Vec<(&str, usize)> = Vec::new();
        for (index, dir) in self.dirs.iter().enumerate() {
            visible.extend(dir.entries.keys().map(|name| (&**name, index)));
        }
        // Stable: for one name the earliest directory comes first.
        visible.sort_by(|a, b| a.0.cmp(b.0));
        visible.dedup_by(|later, first| later.0 == first.0);
        let mut data = SourceData::default();
        let mut by_id_users = Vec::new();
        let mut by_id_groups = Vec::new();
        for (name, index) in visible {
            let dir = &self.dirs[index];
            let Some(entry) = dir.entries.get(name) else {
                continue;
            };
            match &entry.content {
                Content::User(u) if u.listed => data.users.push(Arc::clone(u)),
                Content::User(u) => by_id_users.push(Arc::clone(u)),
                Content::Group(g) if g.listed => data.groups.push(Arc::clone(g)),
                Content::Group(g) => by_id_groups.push(Arc::clone(g)),
                Content::Membership(u, g) => data.memberships.push((u.clone(), g.clone())),
                Content::Broken(why) => data
                    .problems
                    .push(format!("{}: skipped: {why}", dir.path.join(name).display())),
                Content::Masked | Content::Nothing => {}
            }
        }
        data.users.extend(by_id_users);
        data.groups.extend(by_id_groups);
        self.data = Arc::new(data);
    }

    /// Re-reads the given names of one directory, with what depends on
    /// them: the record of a companion, and the links to a file.
    fn reload_changed(&mut self, index: usize, names: Vec<String>) -> bool {
        let dir = &self.dirs[index];
        let mut links: HashMap<&str, Vec<&str>> = HashMap::new();
        for (link, entry) in &dir.entries {
            if let Some(target) = entry.links_to.as_deref() {
                links.entry(target).or_default().push(link);
            }
        }
        let mut wanted: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            if let Some(record) = companion_of(&name) {
                wanted.push(record);
            }
            for link in links.get(name.as_str()).into_iter().flatten() {
                wanted.push((*link).to_owned());
            }
            wanted.push(name);
        }
        self.reload(index, wanted)
    }

    /// Re-reads exactly `names` of one directory.
    fn reload(&mut self, index: usize, mut wanted: Vec<String>) -> bool {
        wanted.sort();
        wanted.dedup();
        let dir = &self.dirs[index];
        let loaded = load_all(&dir.path, &wanted, &dir.entries);
        let dir = &mut self.dirs[index];
        let mut changed = false;
        for (name, entry) in wanted.into_iter().zip(loaded) {
            match entry {
                Some(entry) => {
                    if entry.unread {
                        dir.unread.insert(name.as_str().into());
                    } else {
                        dir.unread.remove(name.as_str());
                    }
                    let previous = dir.entries.insert(name.into(), entry.clone());
                    changed |= previous.as_ref() != Some(&entry);
                }
                None => {
                    dir.unread.remove(name.as_str());
                    changed |= dir.entries.remove(name.as_str()).is_some();
                }
            }
        }
        changed
    }

    /// Reads a whole directory again; only files whose stamp changed are read.
    fn rescan(&mut self, index: usize) -> (bool, Option<String>) {
        let path = self.dirs[index].path.clone();
        let mut names: Vec<String> = match std::fs::read_dir(&path) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
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
        if names.len() > MAX_ENTRIES {
            names.truncate(MAX_ENTRIES);
            failure = Some(format!(
                "{}: more than {MAX_ENTRIES} entries; the rest are ignored",
                path.display()
            ));
        }
        let present: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let dir = &mut self.dirs[index];
        let before = dir.entries.len();
        dir.entries.retain(|name, _| present.contains(&**name));
        dir.unread.retain(|name| present.contains(&**name));
        let mut changed = dir.entries.len() != before;
        let stale: Vec<String> = names
            .iter()
            .filter(|name| {
                dir.entries
                    .get(name.as_str())
                    .is_none_or(|e| e.stamp != stamp(&path, name))
            })
            .cloned()
            .collect();
        changed |= self.reload(index, stale);
        (changed, failure)
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
            let names: Vec<String> = changed
                .into_iter()
                .flatten()
                .filter(|p| p.parent() == Some(dir.as_path()))
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect();
            if !names.is_empty() {
                any |= self.reload_changed(index, names);
            }
        }
        if any || !failures.is_empty() {
            self.rebuild();
            if !failures.is_empty() {
                let data = Arc::make_mut(&mut self.data);
                data.problems.extend(failures.iter().cloned());
                self.report.last_error = failures.pop();
            }
        }
        self.report.took = started.elapsed();
        any
    }

    fn unread(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .flat_map(|dir| dir.unread.iter().map(|name| dir.path.join(&**name)))
            .collect()
    }

    fn data(&self) -> Arc<SourceData> {
        Arc::clone(&self.data)
    }

    fn report(&self) -> LoadReport {
        self.report.clone()
    }
}

/// The stamp of a file and its companion: what they lead to, as `stat` sees it.
fn stamp(dir: &Path, name: &str) -> Option<(Identity, Option<Identity>)> {
    let file = read::stat(&dir.join(name)).ok()?;
    let companion = match classify(name) {
        Ok(DropInName::UserByName(_) | DropInName::UserByUid(_)) => Some(USER_COMPANION),
        Ok(DropInName::GroupByName(_) | DropInName::GroupByGid(_)) => Some(GROUP_COMPANION),
        _ => None,
    }
    .and_then(|suffix| {
        let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
        read::stat(&dir.join(format!("{stem}{suffix}"))).ok()
    });
    Some((Identity::of(&file), companion.as_ref().map(Identity::of)))
}

/// Loads `names` of `dir` (on several threads when there are many); `None`
/// for a name that is no longer there. A file that cannot be read keeps
/// what `previous` held for it.
fn load_all(
    dir: &Path,
    names: &[String],
    previous: &HashMap<Box<str>, Entry>,
) -> Vec<Option<Entry>> {
    let load = |name: &String| load_entry(dir, name, previous.get(name.as_str()));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if names.len() < PARALLEL_THRESHOLD || threads < 2 {
        return names.iter().map(load).collect();
    }
    let chunk = names.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = names
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(load).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .zip(names.chunks(chunk))
            .flat_map(|(handle, part)| {
                // A reader thread that panicked reads as "nothing there" for
                // its part; the next rescan tries again.
                handle
                    .join()
                    .unwrap_or_else(|_| part.iter().map(|_| None).collect())
            })
            .collect()
    })
}

fn load_entry(dir: &Path, name: &str, previous: Option<&Entry>) -> Option<Entry> {
    let path = dir.join(name);
    let link = std::fs::symlink_metadata(&path).ok()?;
    let links_to = link
        .file_type()
        .is_symlink()
        .then(|| std::fs::read_link(&path).ok())
        .flatten()
        .and_then(|target| {
            let target = target.strip_prefix("./").unwrap_or(&target).to_path_buf();
            (target.components().count() == 1)
                .then(|| target.to_str().map(Box::from))
                .flatten()
        });
    let stamp = stamp(dir, name);
    let content = match classify(name) {
        Err(why) => Content::Broken(why),
        Ok(DropInName::Companion | DropInName::Unrelated) => Content::Nothing,
        Ok(kind) => match read::stat(&path) {
            // A dangling link provides nothing but still takes its name,
            // as in systemd's conf-files.
            Err(_) => Content::Masked,
            Ok(meta) if meta.is_file() && meta.len() == 0 => Content::Masked,
            Ok(meta) if meta.file_type().is_char_device_or_block() => Content::Masked,
            Ok(meta) => match read::irregular(&meta) {
                Some(kind) => Content::Broken(format!("is a {kind}, not a regular file")),
                None => match load_content(&path, &kind) {
                    Ok(content) => content,
                    Err(Failure::Unreadable(why)) => {
                        // The stamp is forgotten, so that any rescan tries again.
                        let content = match previous {
                            Some(before) if !matches!(before.content, Content::Broken(_)) => {
                                tracing::warn!("{}: {why}; keeping what it held", path.display());
                                before.content.clone()
                            }
                            _ => Content::Broken(why),
                        };
                        return Some(Entry {
                            stamp: None,
                            links_to,
                            content,
                            unread: true,
                        });
                    }
                    Err(Failure::Refused(why)) => Content::Broken(why),
                },
            },
        },
    };
    Some(Entry {
        stamp,
        links_to,
        content,
        unread: false,
    })
}

trait DeviceType {
    fn is_char_device_or_block(&self) -> bool;
}

impl DeviceType for std::fs::FileType {
    fn is_char_device_or_block(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device() || self.is_block_device()
    }
}

/// Why a file provides nothing: it could not be read (then what it held
/// before is kept), or what it holds is refused.
enum Failure {
    Unreadable(String),
    Refused(String),
}

fn load_content(path: &Path, kind: &DropInName) -> Result<Content, Failure> {
    match kind {
        DropInName::Membership { user, group } => Ok(Content::Membership(
            Name::from(user.as_str()),
            Name::from(group.as_str()),
        )),
        DropInName::UserByName(_) | DropInName::UserByUid(_) => {
            load_user(path, kind).map(|u| Content::User(Arc::new(u)))
        }
        DropInName::GroupByName(_) | DropInName::GroupByGid(_) => {
            load_group(path, kind).map(|g| Content::Group(Arc::new(g)))
        }
        DropInName::Companion | DropInName::Unrelated => Ok(Content::Nothing),
    }
}

/// Reads a JSON object from a drop-in file.
fn read_object(path: &Path) -> Result<Map<String, Value>, Failure> {
    let bytes = match read::read(path, MAX_FILE_SIZE) {
        Ok((bytes, _)) => bytes,
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

/// Reads a record and merges its `-privileged` companion from the same
/// directory, if there is one; returns the record and the companion's keys.
fn read_record(
    path: &Path,
    companion_suffix: &str,
) -> Result<(Map<String, Value>, Vec<String>), Failure> {
    let mut record = read_object(path)?;
    if record.contains_key("privileged") {
        return Err(Failure::Refused(
            "a 'privileged' section belongs in the -privileged file".to_owned(),
        ));
    }
    let companion = path.with_extension(companion_suffix);
    let mut private_keys = Vec::new();
    match std::fs::symlink_metadata(&companion) {
        Ok(_) => {
            let extra = read_object(&companion).map_err(|e| match e {
                Failure::Unreadable(why) => {
                    Failure::Unreadable(format!("{}: {why}", companion.display()))
                }
                Failure::Refused(why) => {
                    Failure::Refused(format!("{}: {why}", companion.display()))
                }
            })?;
            private_keys.extend(extra.keys().cloned());
            record.extend(extra);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Failure::Unreadable(format!("{}: {e}", companion.display()))),
    }
    Ok((record, private_keys))
}

/// The record split for readers: what the companion holds is privileged,
/// and so are the shadow aging fields, as they are for `/etc/shadow`.
fn json_record(record: Map<String, Value>, private_keys: &[String]) -> Box<JsonRecord> {
    let keys: Vec<&str> = private_keys
        .iter()
        .map(String::as_str)
        .chain(SHADOW_FIELDS)
        .collect();
    Box::new(JsonRecord::split(record, &keys))
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

fn load_user(path: &Path, expect: &DropInName) -> Result<User, Failure> {
    let (record, private_keys) = read_record(path, "user-privileged")?;
    let object = Value::Object(record);
    let user = UserRecord::from_json(&object).map_err(|e| Failure::Refused(e.to_string()))?;
    let listed = match expect {
        DropInName::UserByName(name) if *name == user.name => true,
        DropInName::UserByName(name) => {
            return Err(Failure::Refused(format!(
                "userName {} does not match the file name {}",
                super::quote(&user.name),
                super::quote(name)
            )))
        }
        DropInName::UserByUid(uid) if *uid == user.uid => false,
        DropInName::UserByUid(uid) => {
            return Err(Failure::Refused(format!(
                "uid {} does not match the file name {uid}",
                user.uid
            )))
        }
        _ => return Err(Failure::Refused("not a user drop-in".to_owned())),
    };
    let Value::Object(record) = object else {
        return Err(Failure::Refused("not a JSON object".to_owned()));
    };
    let member_of = names_in(&record, "memberOf");
    let mut out = User::from_nss(user, listed);
    out.member_of = member_of;
    out.json = Some(json_record(record, &private_keys));
    Ok(out)
}

fn load_group(path: &Path, expect: &DropInName) -> Result<Group, Failure> {
    let (record, private_keys) = read_record(path, "group-privileged")?;
    let object = Value::Object(record);
    let group = GroupRecord::from_json(&object).map_err(|e| Failure::Refused(e.to_string()))?;
    let listed = match expect {
        DropInName::GroupByName(name) if *name == group.name => true,
        DropInName::GroupByName(name) => {
            return Err(Failure::Refused(format!(
                "groupName {} does not match the file name {}",
                super::quote(&group.name),
                super::quote(name)
            )))
        }
        DropInName::GroupByGid(gid) if *gid == group.gid => false,
        DropInName::GroupByGid(gid) => {
            return Err(Failure::Refused(format!(
                "gid {} does not match the file name {gid}",
                group.gid
            )))
        }
        _ => return Err(Failure::Refused("not a group drop-in".to_owned())),
    };
    let Value::Object(record) = object else {
        return Err(Failure::Refused("not a JSON object".to_owned()));
    };
    let mut out = Group::from_nss(group, listed);
    out.json = Some(json_record(record, &private_keys));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn file_names_are_classified() {
        assert_eq!(
            classify("alice.user"),
            Ok(DropInName::UserByName("alice".into()))
        );
        assert_eq!(classify("1000.user"), Ok(DropInName::UserByUid(1000)));
        assert_eq!(
            classify("wheel.group"),
            Ok(DropInName::GroupByName("wheel".into()))
        );
        assert_eq!(classify("10.group"), Ok(DropInName::GroupByGid(10)));
        assert_eq!(
            classify("alice:wheel.membership"),
            Ok(DropInName::Membership {
                user: "alice".into(),
                group: "wheel".into()
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
        root.write(
            "etc/userdb",
            "2002.user",
            r#"{"userName":"dave","uid":2002}"#,
        );
        root.write("etc/userdb", "2003.user", r#"{"userName":"eve","uid":9}"#);
        let data = root.load();
        assert_eq!(
            user_names(&data),
            [("alice", true), ("alice", false), ("dave", false)]
        );
        assert_eq!(data.problems.len(), 1);
        assert!(
            data.problems[0].contains("2003.user") && data.problems[0].contains("does not match")
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
        assert_eq!(pairs, [("alice", "devs"), ("bob", "devs")]);
        assert_eq!(data.problems.len(), 1);
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
        let mut source = DropIns::new(&root.0);
        assert!(source.refresh(None));
        assert!(
            !source.refresh(None),
            "a rescan without changes changes nothing"
        );
        let bob = Arc::clone(&source.data().users[1]);

        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001,"realName":"A"}"#,
        );
        assert!(source.refresh(Some(&[dir.join("alice.user")])));
        let data = source.data();
        assert!(data
            .users
            .iter()
            .all(|u| u.name.as_ref() != "alice" || &*u.gecos == "A"));
        assert!(Arc::ptr_eq(&bob, &data.users[1]), "bob was not read again");

        root.write(
            "etc/userdb",
            "alice.user-privileged",
            r#"{"privileged":{"hashedPassword":["$6$new"]}}"#,
        );
        assert!(source.refresh(Some(&[dir.join("alice.user-privileged")])));
        assert!(source.data().users[0].shadow.is_some());

        std::fs::remove_file(dir.join("bob.user")).unwrap();
        assert!(source.refresh(Some(&[dir.join("bob.user")])));
        assert_eq!(
            user_names(&source.data()),
            [("alice", true), ("alice", false)]
        );
    }
}
