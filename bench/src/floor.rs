//! The floor of a start on a drop-in tree: the system calls reading it
//! needs, made alone, with nothing parsed or kept. The broker's start is
//! compared with it, as look-ups are compared with a trivial module.
//!
//! What is made is what the broker makes before `READY=1`: the directory's
//! inotify watch, its listing (each name's type from the listing), then,
//! on one thread per core taking 512 names at a time, per record an open,
//! an `fstat`, one read and a close, per membership an `lstat`, each by
//! name in the open directory. Links named by an id are left, as the
//! broker leaves them for after `READY=1`; any other name (a link by name,
//! a `-privileged` companion) is `lstat`ed.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

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
    let by_id = |stem: &str| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit());
    match name.rsplit_once('.') {
        Some((stem, "user" | "group")) if is_link && by_id(stem) => Call::None,
        Some((_, "user" | "group")) if !is_link => Call::Read,
        _ => Call::Lstat,
    }
}

/// The open directory, by which every name is reached.
struct Dir(OwnedFd);

impl Dir {
    fn open(path: &Path) -> Result<Dir, String> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: `c` is a valid C string for the duration of the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "{}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn lstat(&self, name: &CString) {
        // SAFETY: all-zero is a valid `stat`, filled in by the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open, `name` a valid C string and `st`
        // a valid `stat` for the duration of the call.
        unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }

    /// Reads the file `name` as the broker reads a record. What it holds,
    /// or that it could not be read, does not matter here: the calls do.
    fn read(&self, name: &CString, buffer: &mut [u8]) {
        let flags =
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: the descriptor is open and `name` a valid C string.
        let fd = unsafe { libc::openat(self.0.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return;
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if file.metadata().is_ok() {
            let _ = file.read(buffer);
        }
    }
}

/// The inotify descriptor holding the directory's watch, with the mask
/// the broker's watcher uses.
fn watch(path: &Path) -> Result<OwnedFd, String> {
    // SAFETY: no pointers are passed.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(format!("inotify: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mask = libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_ATTRIB
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF
        | libc::IN_ONLYDIR;
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
pub fn start_floor_ms(path: &Path) -> Result<f64, String> {
    let started = Instant::now();
    let _watch = watch(path)?;
    let dir = Dir::open(path)?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let name = entry.file_name();
        let call = call_for(&name.to_string_lossy(), is_link);
        if call != Call::None {
            names.push((
                CString::new(name.as_bytes()).map_err(|e| e.to_string())?,
                call,
            ));
        }
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buffer = vec![0u8; 64 * 1024];
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
                            dir.read(name, &mut buffer);
                        } else {
                            dir.lstat(name);
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
