//! Where users and groups come from.
//!
//! Every source is described by a [`SourceInfo`] (its name, its kind, and
//! whether its users are PID 1's dynamic users) and delivers records in one
//! model (`crate::model`), so that `merge` applies the same priority and
//! membership rules to all of them:
//!
//! - local sources (`files`, `dropins`, `dynamic`) are read whole and kept
//!   up to date by the watcher through [`LocalSource`]; a file that cannot
//!   be read keeps its last good content;
//! - Varlink services (`varlink`) are asked per request.
//!
//! `read` is the one way a local source opens a file: type and size are
//! checked before anything is read, so a FIFO, a device or a 2 GiB file
//! costs one log line, never a hang.

pub mod dropins;
pub mod dynamic;
pub mod files;
mod name_table;
pub mod read;
pub mod varlink;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Group, Name, User};

/// How a source is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// `/etc/passwd`, `/etc/group`, `/etc/shadow`, `/etc/gshadow`.
    Files,
    /// systemd's JSON user/group drop-in directories.
    DropIns,
    /// PID 1's dynamic users, read from the links it keeps in
    /// `/run/systemd/dynamic-uid/`.
    DynamicUsers,
    /// A Varlink `io.systemd.UserDatabase` service, asked per request.
    Varlink,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::DropIns => "dropins",
            SourceKind::DynamicUsers => "dynamic",
            SourceKind::Varlink => "varlink",
        }
    }

    /// Read whole and watched, as opposed to asked per request.
    pub fn is_local(self) -> bool {
        self != SourceKind::Varlink
    }
}

/// What the merge needs to know about a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceInfo {
    pub name: String,
    pub kind: SourceKind,
    /// Its users are PID 1's dynamic users: a request with the dynamic
    /// bypass leaves the source out, and it ranks after every other source.
    pub pid1_users: bool,
}

impl SourceInfo {
    pub fn local(kind: SourceKind) -> SourceInfo {
        SourceInfo {
            name: kind.name().to_owned(),
            kind,
            pid1_users: kind == SourceKind::DynamicUsers,
        }
    }
}

/// Everything one source holds, in the source's own order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceData {
    pub users: Vec<Arc<User>>,
    pub groups: Vec<Arc<Group>>,
    /// `(user, group)` pairs stated outside of records (membership drop-ins,
    /// a service's memberships). Group records' `members` and user records'
    /// `memberOf` are memberships too, carried by the records themselves.
    pub memberships: Memberships,
    /// One line per skipped entry, naming the file and the reason.
    pub problems: Vec<String>,
}

/// `(user, group)` pairs, each a pair of places in one list of names. A
/// source that states many (200,000 membership drop-ins at fleet size, a
/// user in two or three) holds each name there once: a pair then costs 8
/// bytes, where a pair of names would cost 32.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memberships {
    names: Vec<Name>,
    /// Places in `names`, each within it.
    pairs: Vec<(u32, u32)>,
}

impl Memberships {
    /// Holds these names, which `pairs` indexes. A place outside `names`
    /// drops its pair.
    fn from_places(mut names: Vec<Name>, mut pairs: Vec<(u32, u32)>) -> Memberships {
        let within = |place: u32| (place as usize) < names.len();
        pairs.retain(|&(user, group)| within(user) && within(group));
        names.shrink_to_fit();
        Memberships { names, pairs }
    }

    /// Adds a pair with names of its own.
    pub fn push(&mut self, user: Name, group: Name) {
        let place = self.names.len() as u32;
        self.names.extend([user, group]);
        self.pairs.push((place, place + 1));
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Name, &Name)> + '_ {
        self.pairs
            .iter()
            .map(|&(user, group)| (&self.names[user as usize], &self.names[group as usize]))
    }
}

impl FromIterator<(Name, Name)> for Memberships {
    fn from_iter<I: IntoIterator<Item = (Name, Name)>>(pairs: I) -> Memberships {
        let mut memberships = Memberships::default();
        for (user, group) in pairs {
            memberships.push(user, group);
        }
        memberships
    }
}

/// The outcome of the last refresh, for status output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub took: Duration,
    /// The last failure to read something (its last good content is kept).
    pub last_error: Option<String>,
}

/// A source that is read whole and kept up to date by the watcher.
pub trait LocalSource: Send {
    fn info(&self) -> &SourceInfo;

    /// Directories whose entries make up the source: the watcher watches
    /// them (and their parents, to see them appear).
    fn watched(&self) -> Vec<PathBuf>;

    /// Brings the data up to date: only what `changed` names (paths the
    /// watcher saw change), or everything when `changed` is `None`.
    /// Returns whether the data changed.
    fn refresh(&mut self, changed: Option<&[PathBuf]>) -> bool;

    /// The current data; shared, never copied.
    fn data(&self) -> Arc<SourceData>;

    fn report(&self) -> LoadReport;

    /// Reads what is still unread: files whose last read failed for a
    /// reason that may pass (no descriptor left, an I/O error), and what a
    /// first read left for later. The watcher calls it soon after start and
    /// then every half second, rather than waiting for the next change or
    /// rescan. Returns whether the data changed.
    fn read_unread(&mut self) -> bool;
}

/// The local sources below `root`, in their default order.
pub fn local_sources(root: &Path) -> Vec<Box<dyn LocalSource>> {
    vec![
        Box::new(files::Files::new(root)),
        Box::new(dropins::DropIns::new(root)),
        Box::new(dynamic::DynamicUsers::new(root)),
    ]
}

/// Whether `path` is `dir` itself or directly inside it.
pub fn in_dir(path: &Path, dir: &Path) -> bool {
    path == dir || path.parent() == Some(dir)
}

/// Shortens text quoted in a log line, so that a hostile file cannot make
/// one line huge.
pub fn quote(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(memberships: &Memberships) -> Vec<(&str, &str)> {
        memberships
            .iter()
            .map(|(user, group)| (user.as_ref(), group.as_ref()))
            .collect()
    }

    #[test]
    fn memberships_keep_their_order_and_drop_a_place_outside_their_names() {
        let pairs: Memberships = [
            (Name::from("bob"), Name::from("wheel")),
            (Name::from("alice"), Name::from("wheel")),
        ]
        .into_iter()
        .collect();
        assert_eq!(names(&pairs), [("bob", "wheel"), ("alice", "wheel")]);
        assert_eq!(pairs.len(), 2);
        let shared = Memberships::from_places(
            vec![Name::from("alice"), Name::from("devs"), Name::from("ops")],
            vec![(0, 1), (0, 2), (0, 3), (7, 1)],
        );
        assert_eq!(names(&shared), [("alice", "devs"), ("alice", "ops")]);
        assert!(!shared.is_empty() && Memberships::default().is_empty());
    }
}
