//! Whether glibc has already read the files for a database before asking
//! us: `files` (or `compat`) stands before `broker` on that database's line
//! of `/etc/nsswitch.conf`. The broker then leaves out what came only from
//! those files, so merged groups list each member once and enumerations
//! list each name once.
//!
//! The decisions are cached; at most every [`RECHECK_MS`] the file is
//! `stat`ed and read again when its inode, size or mtime changed, so a
//! look-up costs no system call for it. The cache holds no
//! heap memory: glibc unloads NSS modules at exit under valgrind's
//! `__libc_freeres`, and a heap block owned by a static would then show up
//! as lost.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, TryLockError};

use userdb_proto::nsswitch::{self, Line};

pub const NSSWITCH_CONF: &str = "/etc/nsswitch.conf";

/// Our service name on nsswitch.conf lines.
const SERVICE: &str = "broker";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Passwd,
    Group,
    Shadow,
    Gshadow,
    /// `initgroups` falls back to the `group` line when it has none, as in glibc.
    Initgroups,
}

impl Database {
    const ALL: [Database; 5] = [
        Database::Passwd,
        Database::Group,
        Database::Shadow,
        Database::Gshadow,
        Database::Initgroups,
    ];

    fn line_name(self) -> &'static str {
        match self {
            Database::Passwd => "passwd",
            Database::Group => "group",
            Database::Shadow => "shadow",
            Database::Gshadow => "gshadow",
            Database::Initgroups => "initgroups",
        }
    }
}

/// Decides from parsed lines; no line for the database means glibc's
/// default, which does not involve us, so there is nothing to leave out.
pub fn files_first(lines: &[Line], database: Database) -> bool {
    let line = match nsswitch::find(lines, database.line_name()) {
        Some(line) => Some(line),
        None if database == Database::Initgroups => nsswitch::find(lines, "group"),
        None => None,
    };
    line.is_some_and(|line| line.files_before(SERVICE))
}

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// `files_first` for every database, in the order of `Database::ALL`.
type Decisions = [bool; Database::ALL.len()];

fn decide_all(lines: &[Line]) -> Decisions {
    Database::ALL.map(|database| files_first(lines, database))
}

fn index(database: Database) -> usize {
    Database::ALL
        .iter()
        .position(|&d| d == database)
        .unwrap_or_default()
}

/// How long a decision is used before the file is `stat`ed again: the
/// check must not cost a system call on every look-up.
pub const RECHECK_MS: u64 = 1000;

/// The decisions for one version of the file, shared by all threads.
pub struct Cache {
    decided: Mutex<Option<Decided>>,
}

#[derive(Clone, Copy)]
struct Decided {
    stamp: Stamp,
    checked_ms: u64,
    decisions: Decisions,
}

impl Cache {
    pub const fn new() -> Self {
        Cache {
            decided: Mutex::new(None),
        }
    }

    /// Whether `files` comes before `broker` for `database` in the file at
    /// `path`, as of at most [`RECHECK_MS`] before `now_ms`. An unreadable
    /// file means no.
    pub fn files_first(&self, path: &Path, database: Database, now_ms: u64) -> bool {
        let mut guard = match self.decided.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Another thread is refreshing (or a fork() froze the lock):
            // read the file without the cache rather than wait.
            Err(TryLockError::WouldBlock) => {
                return read_decisions(path).is_some_and(|d| d[index(database)])
            }
        };
        if let Some(decided) = guard.as_ref() {
            if now_ms.saturating_sub(decided.checked_ms) < RECHECK_MS {
                return decided.decisions[index(database)];
            }
        }
        let Ok(meta) = std::fs::metadata(path) else {
            *guard = None;
            return false;
        };
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        let decisions = match *guard {
            Some(decided) if decided.stamp == stamp => Some(decided.decisions),
            _ => read_decisions(path),
        };
        *guard = decisions.map(|decisions| Decided {
            stamp,
            checked_ms: now_ms,
            decisions,
        });
        decisions.is_some_and(|d| d[index(database)])
    }
}

fn read_decisions(path: &Path) -> Option<Decisions> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(decide_all(&nsswitch::parse(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn decision_per_database() {
        let lines = nsswitch::parse(
            "passwd: files broker\n\
             group: files [SUCCESS=merge] broker\n\
             shadow: broker files\n\
             gshadow: files\n",
        );
        assert!(files_first(&lines, Database::Passwd));
        assert!(files_first(&lines, Database::Group));
        assert!(!files_first(&lines, Database::Shadow));
        assert!(!files_first(&lines, Database::Gshadow));
        assert!(
            files_first(&lines, Database::Initgroups),
            "falls back to the group line"
        );
        let own = nsswitch::parse("group: files broker\ninitgroups: broker files\n");
        assert!(!files_first(&own, Database::Initgroups));
        let compat = nsswitch::parse("passwd: compat systemd broker\n");
        assert!(files_first(&compat, Database::Passwd));
        assert!(!files_first(&[], Database::Passwd));
    }

    fn temp_file(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nss-broker-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("nsswitch.conf")
    }

    #[test]
    fn cache_follows_changes_to_the_file() {
        let path = temp_file("cache");
        let cache = Cache::new();
        std::fs::write(&path, "passwd: files broker\n").unwrap();
        assert!(cache.files_first(&path, Database::Passwd, 10));
        // Same size, different content: the mtime or inode tells, once the
        // decision is old enough to be checked again.
        let replacement = path.with_extension("new");
        std::fs::write(&replacement, "passwd: broker files\n").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        assert!(cache.files_first(&path, Database::Passwd, 10 + RECHECK_MS - 1));
        assert!(!cache.files_first(&path, Database::Passwd, 10 + RECHECK_MS));
        std::fs::remove_file(&path).unwrap();
        assert!(!cache.files_first(&path, Database::Passwd, 10 + 2 * RECHECK_MS));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
