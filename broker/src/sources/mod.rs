//! Where users and groups come from. Each local source reads its data into a
//! [`SourceData`]; `merge` combines them into one snapshot by priority.
//! Varlink services are not snapshotted: `varlink` queries them per
//! request, and `resolve` merges their answers with the snapshot.

pub mod dropins;
pub mod files;
pub mod varlink;

use serde_json::Value;

/// How a source is reached; decides which request options leave it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `/etc/passwd`, `/etc/group`, `/etc/shadow`, `/etc/gshadow`.
    Files,
    /// systemd's JSON user/group drop-in directories.
    DropIns,
    /// A Varlink `io.systemd.UserDatabase` service, queried per request.
    Varlink,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::DropIns => "dropins",
            SourceKind::Varlink => "varlink",
        }
    }
}

/// A validated user record as a source provides it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceUser {
    pub name: String,
    pub uid: u32,
    /// The full JSON record, privileged parts included.
    pub record: Value,
    /// False for records found only under their uid (systemd's `UID.user`
    /// drop-ins): they answer look-ups by uid but are not listed or named.
    pub listed: bool,
}

/// A validated group record as a source provides it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceGroup {
    pub name: String,
    pub gid: u32,
    pub record: Value,
    pub listed: bool,
}

/// Everything one source holds, plus what was wrong with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceData {
    pub users: Vec<SourceUser>,
    pub groups: Vec<SourceGroup>,
    /// `(user, group)` pairs stated outside of records (membership drop-ins).
    /// Group records' `members` and user records' `memberOf` are memberships
    /// too; `merge` extracts those itself.
    pub memberships: Vec<(String, String)>,
    /// One line per skipped entry, naming the file and the reason.
    pub problems: Vec<String>,
}

/// Reads the local sources below `root`, in priority order.
pub fn load_local(
    root: &std::path::Path,
    priority: &crate::merge::Priority,
) -> Vec<crate::merge::LoadedSource> {
    let timed = |kind: SourceKind, load: &dyn Fn() -> SourceData| {
        let started = std::time::Instant::now();
        let data = load();
        crate::merge::LoadedSource {
            name: kind.name().to_owned(),
            kind,
            data,
            load_time: started.elapsed(),
        }
    };
    let mut sources = vec![
        timed(SourceKind::Files, &|| files::load(root)),
        timed(SourceKind::DropIns, &|| dropins::load(&dropins::dirs(root))),
    ];
    sources.sort_by_key(|s| priority.rank(&s.name, s.kind));
    sources
}
