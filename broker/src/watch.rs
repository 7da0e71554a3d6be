//! Keeping the snapshot current: the local sources' directories are watched
//! with inotify, and a change re-reads only the files it names (each source
//! decides what depends on them), then a new snapshot is merged off the
//! request path and swapped in whole. Idle, this costs nothing.
//!
//! - A directory that does not exist yet is noticed through its nearest
//!   existing parent, and read whole once it appears.
//! - A lost event (the kernel's queue overflowed), a reload (`SIGHUP`) and
//!   every `rescan_interval` re-read everything whose `stat` changed: that
//!   also catches what inotify cannot see (a link's target outside the
//!   watched directories).
//! - Without inotify (no instances left), every `poll_interval` is a rescan.
//! - A file that could not be read for a reason that may pass (no
//!   descriptor left) is read again every half second until it can be;
//!   what the first read left for later is read on the first turn.
//! - Each turn also follows the Varlink services (discovery, breaker
//!   probes), republishes the snapshot file when they change what it
//!   covers, and frees replaced snapshots nobody reads any more.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use userdb_proto::snapfile::Coverage;

use crate::log_once::LogOnce;
use crate::merge::{self, Loaded, Priority};
use crate::publish::Publisher;
use crate::snapshot::SnapshotStore;
use crate::sources::varlink::VarlinkSources;
use crate::sources::{dynamic, LocalSource, SourceInfo, SourceKind};

/// How often the watcher wakes up when nothing happens: Varlink discovery,
/// probes and freeing old snapshots run at this pace.
const TICK: Duration = Duration::from_millis(250);

/// After a first event, further events this close are read with it, so a
/// burst of writes makes one rebuild.
const SETTLE: Duration = Duration::from_millis(20);

/// How soon a file whose read failed for a reason that may pass (no
/// descriptor left) is read again: its change was seen once and will not be
/// announced again.
const RETRY_UNREAD: Duration = Duration::from_millis(500);

/// What the daemon tells the watcher.
#[derive(Debug)]
pub enum Control {
    /// Re-read everything and merge with this priority.
    Reload(Priority),
}

/// When to look at the sources without an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// A full rescan even with inotify working.
    pub rescan: Duration,
    /// The rescan interval without inotify.
    pub poll: Duration,
}

pub struct Watcher {
    sources: Vec<Box<dyn LocalSource>>,
    priority: Priority,
    store: Arc<SnapshotStore>,
    varlink: Arc<VarlinkSources>,
    dynamic_dir: PathBuf,
    inotify: Option<Inotify>,
    /// Watched directory by descriptor; `true` for a parent watched only to
    /// see a missing directory appear.
    watches: HashMap<WatchDescriptor, (PathBuf, bool)>,
    intervals: Intervals,
    generation: u64,
    log: LogOnce,
    publisher: Option<Publisher>,
}

/// What a watched source directory reports.
pub fn watch_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

fn parent_mask() -> WatchMask {
    WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE_SELF | WatchMask::ONLYDIR
}

impl Watcher {
    pub fn new(
        root: &Path,
        sources: Vec<Box<dyn LocalSource>>,
        priority: Priority,
        store: Arc<SnapshotStore>,
        varlink: Arc<VarlinkSources>,
        intervals: Intervals,
    ) -> Self {
        let inotify = match Inotify::init() {
            Ok(inotify) => Some(inotify),
            Err(e) => {
                tracing::warn!(
                    "inotify is not available ({e}): polling every {:?} instead",
                    intervals.poll
                );
                None
            }
        };
        Watcher {
            sources,
            priority,
            store,
            varlink,
            dynamic_dir: dynamic::dir(root),
            inotify,
            watches: HashMap::new(),
            intervals,
            generation: 0,
            log: LogOnce::default(),
            publisher: None,
        }
    }

    /// Publishes every snapshot to the snapshot file too.
    pub fn publishing(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// What the snapshot file covers with the services known now.
    fn coverage(&self) -> Coverage {
        let services = self.varlink.all();
        let rank_of = |kind| self.priority.rank(&SourceInfo::local(kind));
        let (files, dropins) = (rank_of(SourceKind::Files), rank_of(SourceKind::DropIns));
        let local_users_win = services.iter().all(|s| {
            let rank = self.priority.rank(&s.info);
            rank > files && rank > dropins
        });
        Coverage::new(
            !services.is_empty(),
            services.iter().any(|s| !s.info.pid1_users),
            local_users_win,
        )
    }

    /// Publishes the current snapshot if the file does not show it yet.
    fn publish(&mut self) {
        let coverage = self.coverage();
        let snapshot = self.store.current();
        let Some(publisher) = self.publisher.as_mut() else {
            return;
        };
        if !publisher.is_stale(&snapshot, coverage) {
            return;
        }
        match publisher.publish(&snapshot, coverage) {
            Ok(done) => tracing::debug!(
                generation = snapshot.generation,
                bytes = done.bytes,
                ms = done.took.as_millis() as u64,
                "snapshot file published"
            ),
            Err(e) => tracing::warn!("cannot publish the snapshot file: {e}"),
        }
    }

    /// Reads every source and puts the first snapshot in place.
    pub fn load(&mut self) {
        self.ensure_watches();
        for source in &mut self.sources {
            source.refresh(None);
        }
        // Discovery must know before it first meets PID 1's socket.
        self.varlink
            .set_dynamic_users_local(self.dynamic_dir.is_dir());
        self.varlink.maintain();
        self.rebuild();
        // Nobody reads the empty snapshot it replaced: freeing it now also
        // hands back what reading every source left free (a third of the
        // resident size at 600,000 drop-ins) before the first client.
        self.store.reap();
    }

    /// Watches every source directory, or the nearest existing parent of
    /// one that does not exist.
    fn ensure_watches(&mut self) {
        let Some(inotify) = self.inotify.as_mut() else {
            return;
        };
        let wanted: Vec<PathBuf> = self.sources.iter().flat_map(|s| s.watched()).collect();
        let mut fresh: HashMap<WatchDescriptor, (PathBuf, bool)> = HashMap::new();
        for dir in wanted {
            let (target, parent_only) = match nearest_existing(&dir) {
                Some(p) if p == dir => (p, false),
                Some(p) => (p, true),
                None => continue,
            };
            if fresh.values().any(|(p, only)| *p == target && !*only) {
                continue;
            }
            let mask = if parent_only {
                parent_mask()
            } else {
                watch_mask()
            };
            match inotify.watches().add(&target, mask) {
                Ok(wd) => {
                    let entry = fresh.entry(wd).or_insert((target, parent_only));
                    entry.1 &= parent_only;
                }
                Err(e) => tracing::warn!(
                    "cannot watch {}: {e}; changes there are seen by the periodic rescan",
                    target.display()
                ),
            }
        }
        for wd in self.watches.keys() {
            if !fresh.contains_key(wd) {
                let _ = inotify.watches().remove(wd.clone());
            }
        }
        self.watches = fresh;
    }

    /// Merges the sources' current data and swaps the result in.
    fn rebuild(&mut self) {
        self.generation += 1;
        let loaded = self
            .sources
            .iter()
            .map(|s| Loaded {
                info: s.info().clone(),
                data: s.data(),
                load: s.report(),
            })
            .collect();
        let started = Instant::now();
        let merged = merge::build(loaded, &self.priority, self.generation);
        for message in self.log.update(merged.messages) {
            tracing::warn!("{message}");
        }
        let snapshot = Arc::new(merged.snapshot);
        tracing::info!(
            generation = snapshot.generation,
            users = snapshot.users().count(),
            groups = snapshot.groups().count(),
            merge_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        self.varlink
            .set_dynamic_users_local(self.dynamic_dir.is_dir());
        self.store.replace(snapshot);
        self.publish();
    }

    /// Re-reads what `changed` names (everything for `None`); rebuilds if
    /// any source changed. Returns whether it did.
    pub fn refresh(&mut self, changed: Option<&[PathBuf]>) -> bool {
        self.update(|source| source.refresh(changed))
    }

    /// Runs `step` on every source; rebuilds if any changed.
    fn update(&mut self, mut step: impl FnMut(&mut dyn LocalSource) -> bool) -> bool {
        let mut any = false;
        for source in &mut self.sources {
            any |= step(source.as_mut());
        }
        if any {
            self.rebuild();
        }
        any
    }

    /// Runs the watcher on a thread of its own for the life of the process.
    pub fn spawn(
        mut self,
        control: Receiver<Control>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || self.run(&control))
    }

    fn run(&mut self, control: &Receiver<Control>) {
        let mut last_rescan = Instant::now();
        // What the first read left unread is read on the first turn.
        let mut last_retry: Option<Instant> = None;
        loop {
            if last_retry.is_none_or(|at| at.elapsed() >= RETRY_UNREAD) {
                self.update(|source| source.read_unread());
                last_retry = Some(Instant::now());
            }
            let changed = self.wait_for_events(TICK);
            match changed {
                Events::Paths(paths) if !paths.is_empty() => {
                    self.refresh(Some(&paths));
                }
                Events::Paths(_) => {}
                Events::Everything => {
                    self.ensure_watches();
                    self.refresh(None);
                    last_rescan = Instant::now();
                }
            }
            while let Ok(Control::Reload(priority)) = control.try_recv() {
                self.priority = priority;
                self.ensure_watches();
                if !self.refresh(None) {
                    self.rebuild();
                }
                last_rescan = Instant::now();
            }
            let interval = if self.inotify.is_some() {
                self.intervals.rescan
            } else {
                self.intervals.poll
            };
            if last_rescan.elapsed() >= interval {
                let started = Instant::now();
                self.ensure_watches();
                self.refresh(None);
                last_rescan = Instant::now();
                // A rescan of a huge tree must not take more than a fifth
                // of a core when polling.
                if self.inotify.is_none() {
                    std::thread::sleep(started.elapsed() * 4);
                }
            }
            self.varlink.maintain();
            self.publish();
            self.store.reap();
        }
    }

    /// Waits up to `timeout` for inotify events and turns them into the
    /// paths they name.
    fn wait_for_events(&mut self, timeout: Duration) -> Events {
        let Some(inotify) = self.inotify.as_mut() else {
            std::thread::sleep(timeout);
            return Events::Paths(Vec::new());
        };
        if !readable(inotify.as_raw_fd(), timeout) {
            return Events::Paths(Vec::new());
        }
        let mut paths = Vec::new();
        let mut everything = false;
        let mut buffer = [0u8; 64 * 1024];
        let settle_until = Instant::now() + SETTLE;
        loop {
            match inotify.read_events(&mut buffer) {
                Ok(events) => {
                    for event in events {
                        if event.mask.contains(EventMask::Q_OVERFLOW) {
                            everything = true;
                            continue;
                        }
                        let Some((dir, parent_only)) = self.watches.get(&event.wd) else {
                            continue;
                        };
                        if *parent_only
                            || event.mask.intersects(
                                EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED,
                            )
                        {
                            everything = true;
                            continue;
                        }
                        match event.name {
                            Some(name) => paths.push(dir.join(name)),
                            None => paths.push(dir.clone()),
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("reading inotify events failed: {e}");
                    everything = true;
                }
            }
            let left = settle_until.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(inotify.as_raw_fd(), left) {
                break;
            }
        }
        // A source directory that appeared (or one of its parents) is not
        // watched yet: watch it and read everything.
        let unwatched: Vec<PathBuf> = self
            .sources
            .iter()
            .flat_map(|s| s.watched())
            .filter(|dir| !self.watches.values().any(|(w, only)| w == dir && !*only))
            .collect();
        if everything
            || paths
                .iter()
                .any(|p| unwatched.iter().any(|dir| dir.starts_with(p)))
        {
            return Events::Everything;
        }
        paths.sort();
        paths.dedup();
        Events::Paths(paths)
    }
}

enum Events {
    Paths(Vec<PathBuf>),
    Everything,
}

fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|p| p.is_dir()).map(Path::to_path_buf)
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd that outlives the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// A sender for [`Control`] and the receiver the watcher's thread takes.
pub fn control() -> (Sender<Control>, Receiver<Control>) {
    std::sync::mpsc::channel()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VarlinkSettings;
    use crate::snapshot::Snapshot;
    use crate::sources::local_sources;

    fn intervals() -> Intervals {
        Intervals {
            rescan: Duration::from_secs(300),
            poll: Duration::from_millis(250),
        }
    }

    struct Root(PathBuf);

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn watcher(root: &Path) -> (Watcher, Arc<SnapshotStore>) {
        let store = Arc::new(SnapshotStore::new(Snapshot::empty()));
        let varlink = Arc::new(VarlinkSources::new(
            crate::sources::varlink::directory(root),
            root.join("own.sock"),
            VarlinkSettings::default(),
        ));
        let watcher = Watcher::new(
            root,
            local_sources(root),
            Priority::new(vec!["files".into(), "dropins".into()]),
            Arc::clone(&store),
            varlink,
            intervals(),
        );
        (watcher, store)
    }

    /// Waits until `check` holds, letting the watcher read its events.
    fn until(
        w: &mut Watcher,
        check: impl Fn(&Snapshot) -> bool,
        store: &SnapshotStore,
    ) -> Duration {
        let started = Instant::now();
        while !check(&store.current()) {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "change not seen"
            );
            if let Events::Paths(paths) = w.wait_for_events(Duration::from_millis(50)) {
                w.refresh(Some(&paths));
            } else {
                w.ensure_watches();
                w.refresh(None);
            }
        }
        started.elapsed()
    }

    #[test]
    fn changes_are_seen_through_inotify_including_new_directories() {
        let root = Root(std::env::temp_dir().join(format!("brokerd-watch-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&root.0);
        std::fs::create_dir_all(root.0.join("etc")).unwrap();
        std::fs::write(root.0.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let (mut w, store) = watcher(&root.0);
        w.load();
        assert_eq!(store.current().generation, 1);
        assert!(store.current().user_by_name("alice").is_none());

        // etc/userdb did not exist: it is seen through its parent.
        std::fs::create_dir_all(root.0.join("etc/userdb")).unwrap();
        let dropin = root.0.join("etc/userdb/alice.user");
        std::fs::write(&dropin, r#"{"userName":"alice","uid":2001}"#).unwrap();
        until(&mut w, |s| s.user_by_name("alice").is_some(), &store);
        std::fs::write(&dropin, r#"{"userName":"alice","uid":2002}"#).unwrap();
        until(
            &mut w,
            |s| s.user_by_name("alice").is_some_and(|u| u.user.uid == 2002),
            &store,
        );
        std::fs::remove_file(&dropin).unwrap();
        until(&mut w, |s| s.user_by_name("alice").is_none(), &store);

        let tmp = root.0.join("etc/passwd.new");
        std::fs::write(&tmp, "root:x:0:0::/root:/bin/sh\nbob:x:5:5::/:/bin/sh\n").unwrap();
        std::fs::rename(&tmp, root.0.join("etc/passwd")).unwrap();
        until(&mut w, |s| s.user_by_uid(5).is_some(), &store);

        // Dynamic users appear with PID 1's directory.
        let dynamic = root.0.join("run/systemd/dynamic-uid");
        std::fs::create_dir_all(&dynamic).unwrap();
        std::os::unix::fs::symlink("61300", dynamic.join("direct:svc")).unwrap();
        std::os::unix::fs::symlink("svc", dynamic.join("direct:61300")).unwrap();
        until(&mut w, |s| s.user_by_uid(61300).is_some(), &store);
    }

    #[test]
    fn an_idle_watcher_rebuilds_nothing() {
        let root =
            Root(std::env::temp_dir().join(format!("brokerd-watch-idle-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&root.0);
        std::fs::create_dir_all(root.0.join("etc")).unwrap();
        std::fs::write(root.0.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let (mut w, store) = watcher(&root.0);
        w.load();
        for _ in 0..3 {
            if let Events::Paths(paths) = w.wait_for_events(Duration::from_millis(20)) {
                assert!(paths.is_empty());
            }
        }
        assert!(
            !w.refresh(None),
            "a rescan without changes rebuilds nothing"
        );
        assert_eq!(store.current().generation, 1);
    }
}
