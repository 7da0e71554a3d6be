//! Change detection: the local sources are fingerprinted (every file's and
//! directory's identity, size and times) every poll interval; when the
//! fingerprint changes, a new snapshot is built off the request path and
//! swapped in whole.
//!
//! File times are only as fine as the kernel's coarse clock (a few ms), so
//! two same-sized writes in a row can leave identical metadata. Files
//! modified within [`RACY_WINDOW`] are therefore fingerprinted by content
//! too; older ones by metadata alone, which keeps polling cheap.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs::Metadata;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Files modified this recently are fingerprinted by their content as well.
const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Larger files are fingerprinted by metadata alone.
const MAX_CONTENT_HASH: u64 = 16 << 20;

use crate::merge::{merge, LogOnce, Priority};
use crate::snapshot::SnapshotStore;
use crate::sources::varlink::VarlinkSources;
use crate::sources::{dropins, files, load_local};

/// The state of the local sources below a root. Two fingerprints differ
/// when any file was added, removed, replaced or modified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    metadata: u64,
    /// Content hashes of the files modified within [`RACY_WINDOW`].
    recent: HashMap<PathBuf, u64>,
}

impl Fingerprint {
    pub fn of(root: &Path) -> Fingerprint {
        let mut print = Fingerprint {
            metadata: 0,
            recent: HashMap::new(),
        };
        let mut hasher = DefaultHasher::new();
        for path in files::paths(root) {
            print.add_file(&mut hasher, path);
        }
        for dir in dropins::dirs(root) {
            hash_metadata(&mut hasher, std::fs::metadata(&dir).ok());
            let mut names: Vec<_> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
                Err(_) => continue,
            };
            names.sort();
            for name in names {
                let path = dir.join(&name);
                name.hash(&mut hasher);
                // The link itself and what it points to can change apart.
                hash_metadata(&mut hasher, std::fs::symlink_metadata(&path).ok());
                print.add_file(&mut hasher, path);
            }
        }
        print.metadata = hasher.finish();
        print
    }

    /// Hashes what `path` resolves to, and notes its content if recent.
    fn add_file(&mut self, hasher: &mut DefaultHasher, path: PathBuf) {
        let metadata = std::fs::metadata(&path).ok();
        let recent = metadata.as_ref().is_some_and(|m| {
            m.is_file()
                && m.len() <= MAX_CONTENT_HASH
                && m.modified()
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map(|age| age < RACY_WINDOW)
                    .unwrap_or(true)
        });
        hash_metadata(hasher, metadata);
        if recent {
            if let Ok(content) = std::fs::read(&path) {
                let mut content_hasher = DefaultHasher::new();
                content.hash(&mut content_hasher);
                self.recent.insert(path, content_hasher.finish());
            }
        }
    }

    /// A file leaving the recent window is no change; new content is.
    pub fn differs_from(&self, earlier: &Fingerprint) -> bool {
        self.metadata != earlier.metadata
            || self
                .recent
                .iter()
                .any(|(path, hash)| earlier.recent.get(path).is_some_and(|h| h != hash))
    }
}

fn hash_metadata(hasher: &mut DefaultHasher, metadata: Option<Metadata>) {
    match metadata {
        None => 0u8.hash(hasher),
        Some(m) => (
            m.dev(),
            m.ino(),
            m.size(),
            m.mode(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
            .hash(hasher),
    }
}

/// Rebuilds the snapshot in `store` from the sources below `root`, and
/// keeps the Varlink services up to date.
pub struct Watcher {
    root: PathBuf,
    priority: Priority,
    store: SnapshotStore,
    varlink: Option<Arc<VarlinkSources>>,
    generation: u64,
    last_fingerprint: Option<Fingerprint>,
    log: LogOnce,
}

impl Watcher {
    pub fn new(root: PathBuf, priority: Priority, store: SnapshotStore) -> Self {
        Watcher {
            root,
            priority,
            store,
            varlink: None,
            generation: 0,
            last_fingerprint: None,
            log: LogOnce::default(),
        }
    }

    /// Also discovers services and probes those left out, each poll.
    pub fn with_varlink(mut self, varlink: Arc<VarlinkSources>) -> Self {
        varlink.maintain();
        self.varlink = Some(varlink);
        self
    }

    /// Rebuilds if anything changed since the last build (or if there was
    /// none); returns whether it did. The fingerprint is taken before the
    /// sources are read, so a change during the read is seen next time.
    pub fn refresh(&mut self) -> bool {
        let current = Fingerprint::of(&self.root);
        if let Some(last) = &self.last_fingerprint {
            if !current.differs_from(last) {
                self.last_fingerprint = Some(current);
                return false;
            }
        }
        self.last_fingerprint = Some(current);
        self.generation += 1;
        let merged = merge(load_local(&self.root, &self.priority), self.generation);
        for message in self.log.update(merged.messages) {
            tracing::warn!("{message}");
        }
        let s = &merged.snapshot;
        tracing::info!(
            generation = s.generation,
            users = s.users().count(),
            groups = s.groups().count(),
            memberships = s.memberships().count(),
            "snapshot built"
        );
        self.store.replace(merged.snapshot);
        true
    }

    /// Polls for changes every `interval`, for the life of the process.
    pub fn spawn(mut self, interval: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || loop {
                let spent = self.poll();
                // Huge drop-in directories take long to fingerprint: keep
                // the watcher under about a fifth of one core.
                std::thread::sleep(interval.max(spent * 4));
            })
    }

    /// One round: local sources, then Varlink services. Returns its cost.
    pub fn poll(&mut self) -> Duration {
        let started = Instant::now();
        self.refresh();
        if let Some(varlink) = &self.varlink {
            varlink.maintain();
        }
        started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VarlinkSettings;
    use crate::snapshot::Snapshot;
    use std::os::unix::net::UnixListener;

    #[test]
    fn polling_follows_services_appearing_and_leaving() {
        let root =
            std::env::temp_dir().join(format!("brokerd-watch-varlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = crate::sources::varlink::directory(&root);
        std::fs::create_dir_all(&dir).unwrap();
        let varlink = Arc::new(VarlinkSources::new(
            dir.clone(),
            root.join("own.sock"),
            VarlinkSettings::default(),
        ));
        let store = SnapshotStore::new(Snapshot::empty());
        let priority = Priority::new(Vec::new());
        let mut watcher =
            Watcher::new(root.clone(), priority, store).with_varlink(Arc::clone(&varlink));
        assert!(varlink.all().is_empty());
        let listener = UnixListener::bind(dir.join("io.example.Late")).unwrap();
        watcher.poll();
        assert_eq!(varlink.all()[0].name, "io.example.Late");
        drop(listener);
        std::fs::remove_file(dir.join("io.example.Late")).unwrap();
        watcher.poll();
        assert!(varlink.all().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn dropin_changes_are_picked_up() {
        let root = std::env::temp_dir().join(format!("brokerd-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc/userdb")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let store = SnapshotStore::new(Snapshot::empty());
        let priority = Priority::new(vec!["files".into(), "dropins".into()]);
        let mut watcher = Watcher::new(root.clone(), priority, store.clone());
        assert!(watcher.refresh());
        assert!(!watcher.refresh(), "nothing changed");
        assert_eq!(store.current().generation, 1);
        assert!(store.current().user_by_name("alice").is_none());

        let dropin = root.join("etc/userdb/alice.user");
        std::fs::write(&dropin, r#"{"userName":"alice","uid":2001}"#).unwrap();
        assert!(watcher.refresh());
        assert_eq!(store.current().user_by_name("alice").unwrap().uid, 2001);

        std::fs::write(&dropin, r#"{"userName":"alice","uid":2002}"#).unwrap();
        assert!(watcher.refresh());
        assert_eq!(store.current().user_by_name("alice").unwrap().uid, 2002);

        std::fs::remove_file(&dropin).unwrap();
        assert!(watcher.refresh());
        assert!(store.current().user_by_name("alice").is_none());

        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbob:x:5:5::/:/bin/sh\n",
        )
        .unwrap();
        assert!(watcher.refresh());
        assert_eq!(store.current().user_by_uid(5).unwrap().name, "bob");
        assert_eq!(store.current().generation, 5);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
