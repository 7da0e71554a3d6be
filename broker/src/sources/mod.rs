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
    /// `(user, group)` pairs stated outside of records (membership drop-ins).
    /// Group records' `members` and user records' `memberOf` are memberships
    /// too, carried by the records themselves.
    pub memberships: Vec<(Name, Name)>,
    /// One line per skipped entry, naming the file and the reason.
    pub problems: Vec<String>,
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
