//! The floor of a start on a drop-in tree: the system calls reading it
//! needs, made alone, with nothing parsed or kept. The broker's start is
//! compared with it, as look-ups are compared with a trivial module.
//!
//! What is made is what the broker makes before `READY=1`, through its own
//! reading layer (`userdb_broker::sources::read`) and its classification
//! of names: the directory's inotify watch (the watcher's mask), its
//! listing (each name's type from the listing), then, on one thread per
//! core taking 512 names at a time, each with a descriptor table of its
//! own, per record an open, an `fstat` and one read, per membership an
//! `lstat`, each by name in the open directory.
//! Links named by an id are left, as the broker leaves them for after
//! `READY=1`; any other name (a link by name, a `-privileged` companion) is
//! `lstat`ed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use userdb_broker::sources::dropins::{classify, DropInName, MAX_FILE_SIZE};
use userdb_broker::sources::read::{self, Dir};
use userdb_broker::watch::watch_mask;

/// Names a reader thread takes at a time (as the broker's do).
const BLOCK: usize = 512;

/// What reading one name takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Open, `fstat`, read, close.
    Read,
    Lstat,
    /// A link named by an id: not read before `READY=1`.
    None,
}

fn call_for(name: &str, is_link: bool) -> Call {
    use DropInName::*;
    match classify(name) {
        Ok(UserByUid(_) | GroupByGid(_)) if is_link => Call::None,
        Ok(UserByName(_) | GroupByName(_) | UserByUid(_) | GroupByGid(_)) if !is_link => Call::Read,
        _ => Call::Lstat,
    }
}

/// The inotify descriptor holding the directory's watch.
fn watch(path: &Path) -> Result<OwnedFd, String> {
    // SAFETY: no pointers are passed.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(format!("inotify: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mask = watch_mask().bits();
    // SAFETY: the descriptor is open and `c` a valid C string.
    if unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), c.as_ptr(), mask) } < 0 {
        return Err(format!(
            "watch {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(inotify)
}

/// How long the floor of a start on the drop-in directory `path` takes, ms.
/// What a file holds, or that it could not be read, does not matter here:
/// the calls do.
pub fn start_floor_ms(path: &Path) -> Result<f64, String> {
    let started = Instant::now();
    let _watch = watch(path)?;
    let dir = Dir::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let call = call_for(&name, is_link);
        if call != Call::None {
            names.push((name, call));
        }
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                read::use_own_descriptor_table();
                loop {
                    let at = next.fetch_add(BLOCK, Ordering::Relaxed);
                    let Some(block) = names.get(at..(at + BLOCK).min(names.len())) else {
                        return;
                    };
                    if block.is_empty() {
                        return;
                    }
                    for (name, call) in block {
                        if *call == Call::Read {
                            if let Ok(opened) = dir.open_listed(name) {
                                let _ = opened.read(MAX_FILE_SIZE);
                            }
                        } else {
                            let _ = dir.lstat(name);
                        }
                    }
                }
            });
        }
    });
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_costs_the_calls_the_broker_makes_for_it() {
        assert_eq!(call_for("alice.user", false), Call::Read);
        assert_eq!(call_for("wheel.group", false), Call::Read);
        assert_eq!(call_for("1000.user", true), Call::None);
        assert_eq!(call_for("1000.group", true), Call::None);
        assert_eq!(call_for("alice.user", true), Call::Lstat);
        assert_eq!(call_for("alice:wheel.membership", false), Call::Lstat);
        assert_eq!(call_for("alice.user-privileged", false), Call::Lstat);
    }
}
