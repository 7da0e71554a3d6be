//! Reading a source's file without ever blocking and without reading what
//! was not meant as a record.
//!
//! The path is `stat`ed first (links followed, as glibc and systemd follow
//! them): anything but a regular file is refused without being opened, so a
//! FIFO cannot block the reader and a device (`/dev/watchdog`, a tape) is
//! never opened; a file over the caller's cap is refused before a byte is
//! read. It is then opened with `O_NONBLOCK | O_NOCTTY | O_CLOEXEC` and
//! `fstat`ed again: if something else was put at the path in between, it
//! is refused too.
//!
//! [`Dir`] does the same relative to an open directory, for sources of
//! hundreds of thousands of files: each call looks up one name, not a path,
//! and a file known to be regular is opened with `O_NOFOLLOW`, so its
//! `lstat` is the check before the open.
//!
//! A name the directory listing calls a regular file (`d_type`) is opened
//! without that `lstat` ([`Dir::open_listed`]): `O_NOFOLLOW` refuses a link
//! put there since, `O_NONBLOCK` makes a FIFO's open return at once, and
//! the `fstat` of what was opened is the type and size check, made before
//! any byte is read, so nothing but the file that is read is ever checked.
//! What this gives up: a device node put in place of a regular file
//! between the listing and the open is opened (and closed unread) instead
//! of being refused unopened. That takes root replacing a drop-in by a
//! device at the moment it is read; the `lstat` never closed that race
//! either, only narrowed it, and an `lstat` per name was a third of a
//! fleet's start-up. Names the listing calls anything else, or does not
//! type, are `lstat`ed as before.
//!
//! A file is read in one `read` when it is no larger than its `fstat`
//! said: the buffer has room for one byte more, and a regular file that
//! fills all but that byte is at its end. One that grew is read on, to
//! its end or past the cap, which refuses it.

use std::ffi::CString;
use std::fs::{File, Metadata, OpenOptions};
use std::hash::{BuildHasher, Hash};
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What identifies one version of a file: a change of any field means the
/// file must be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Identity {
    pub fn of(meta: &Metadata) -> Identity {
        let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Identity {
    fn of_stat(st: &libc::stat) -> Identity {
        let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size.try_into().unwrap_or(0),
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// Eight bytes standing for the identity, for sources that keep one per
    /// file by the hundred thousand: two identities of one file differ at
    /// least in their ctime, and a 64-bit hash maps them to the same value
    /// once in 2^64 changes.
    pub fn fingerprint(&self) -> u64 {
        // A fixed seed: the value must be the same at every rescan. The
        // files are root's, so no flooding defence is needed; SipHash took
        // 3 % of a start's instructions at 600,000 files.
        foldhash::quality::FixedState::with_seed(0).hash_one(self)
    }
}

/// The first `n` bytes of `buffer` as text, if they are UTF-8.
fn utf8(buffer: &[u8], n: usize) -> Option<String> {
    buffer
        .get(..n)
        .and_then(|target| std::str::from_utf8(target).ok())
        .map(str::to_owned)
}

/// Why a file gave no content.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing at the path (or a dangling link): the file is gone.
    Missing,
    /// A FIFO, socket, device or directory, named.
    NotRegular(&'static str),
    /// Larger than the cap.
    TooLarge { size: u64, cap: u64 },
    /// The read itself failed (out of descriptors, I/O error, permission).
    Failed(io::Error),
}

impl ReadError {
    /// Whether the file's last good content must be kept: anything but the
    /// file being gone is a failure to read, not a new, empty content.
    pub fn keeps_last_good(&self) -> bool {
        !matches!(self, ReadError::Missing)
    }

    /// Whether reading again may succeed without the file changing (no
    /// descriptor or memory left, an I/O error), as opposed to a file that
    /// is missing, of the wrong type or too large.
    pub fn may_pass(&self) -> bool {
        matches!(self, ReadError::Failed(_))
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => f.write_str("does not exist"),
            ReadError::NotRegular(kind) => write!(f, "is a {kind}, not a regular file"),
            ReadError::TooLarge { size, cap } => {
                write!(f, "is {size} bytes, larger than the {cap}-byte cap")
            }
            ReadError::Failed(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

fn failed(e: io::Error) -> ReadError {
    match e.kind() {
        ErrorKind::NotFound => ReadError::Missing,
        _ if e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) => {
            ReadError::Missing
        }
        _ => ReadError::Failed(e),
    }
}

/// What kind of file `meta` describes, in words, unless it is regular.
pub fn irregular(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_dir() {
        Some("directory")
    } else {
        Some("special file")
    }
}

/// `stat` of what `path` leads to.
pub fn stat(path: &Path) -> Result<Metadata, ReadError> {
    std::fs::metadata(path).map_err(failed)
}

/// The content of the regular file at `path`, at most `cap` bytes, and the
/// identity it was read at.
pub fn read(path: &Path, cap: u64) -> Result<(Vec<u8>, Identity), ReadError> {
    let before = stat(path)?;
    check(&before, cap)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(failed)?;
    let opened = file.metadata().map_err(ReadError::Failed)?;
    check(&opened, cap)?;
    if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
        return Err(ReadError::Failed(io::Error::other(
            "replaced while being opened",
        )));
    }
    let bytes = read_capped(file, opened.len(), cap)?;
    Ok((bytes, Identity::of(&opened)))
}

fn check(meta: &Metadata, cap: u64) -> Result<(), ReadError> {
    if let Some(kind) = irregular(meta) {
        return Err(ReadError::NotRegular(kind));
    }
    check_size(meta.len(), cap)
}

fn check_size(size: u64, cap: u64) -> Result<(), ReadError> {
    if size > cap {
        return Err(ReadError::TooLarge { size, cap });
    }
    Ok(())
}

/// What `lstat` or `stat` says of one name in a [`Dir`].
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    mode: libc::mode_t,
    /// Made by `stat` (links followed), not `lstat`.
    followed: bool,
    pub size: u64,
    pub identity: Identity,
}

impl Stat {
    fn of(st: &libc::stat, followed: bool) -> Stat {
        Stat {
            mode: st.st_mode,
            followed,
            size: st.st_size.try_into().unwrap_or(0),
            identity: Identity::of_stat(st),
        }
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }

    pub fn is_device(&self) -> bool {
        matches!(self.mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK)
    }

    /// What kind of file this is, in words, unless it is regular.
    pub fn irregular(&self) -> Option<&'static str> {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some("FIFO"),
            libc::S_IFSOCK => Some("socket"),
            libc::S_IFCHR => Some("character device"),
            libc::S_IFBLK => Some("block device"),
            libc::S_IFDIR => Some("directory"),
            libc::S_IFLNK => Some("symbolic link"),
            _ => Some("special file"),
        }
    }
}

/// An open directory whose entries are looked up by name.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// Gives the calling thread a descriptor table of its own, a copy of the
/// process's, for a reader thread of a large directory. In a shared table
/// every open and close of one thread takes the table's lock while the
/// other threads' do, and every call by an open directory's descriptor
/// counts a reference on it that all of them write: a fleet's start spent
/// a fifth of its reading on those. The copy holds what the process had
/// open until the thread ends (a connection the server closes meanwhile
/// is closed when the reader is done); a thread left sharing, when the
/// call fails, only reads slower.
pub fn use_own_descriptor_table() {
    // SAFETY: unshare(CLONE_FILES) takes no pointer and only replaces the
    // calling thread's descriptor table by a copy: every descriptor the
    // thread's callers hold stays valid in it, and those of other threads
    // are untouched.
    unsafe { libc::unshare(libc::CLONE_FILES) };
}

/// A name as a C string, on the stack: a look-up by the hundred thousand
/// costs no allocation.
struct CName([u8; NAME_MAX + 1]);

/// The longest name a directory entry can have (Linux's `NAME_MAX`).
const NAME_MAX: usize = 255;

fn c_name(name: &str) -> Result<CName, ReadError> {
    // A name with a NUL byte, or longer than NAME_MAX, cannot be in a
    // directory.
    if name.len() > NAME_MAX || name.as_bytes().contains(&0) {
        return Err(ReadError::Missing);
    }
    let mut buffer = [0u8; NAME_MAX + 1];
    buffer[..name.len()].copy_from_slice(name.as_bytes());
    Ok(CName(buffer))
}

impl CName {
    fn as_ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }
}

impl Dir {
    pub fn open(path: &Path) -> io::Result<Dir> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(ErrorKind::InvalidInput))?;
        // SAFETY: `path` is a valid C string for the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn stat_with(&self, name: &str, flags: libc::c_int) -> Result<Stat, ReadError> {
        let name = c_name(name)?;
        // SAFETY: all-zero is a valid `stat`, filled in by the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open, `name` a valid C string and `st`
        // a valid `stat` for the duration of the call.
        let rc = unsafe { libc::fstatat(self.fd.as_raw_fd(), name.as_ptr(), &mut st, flags) };
        if rc != 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        Ok(Stat::of(&st, flags & libc::AT_SYMLINK_NOFOLLOW == 0))
    }

    /// `lstat` of `name`: a link is described, not followed.
    pub fn lstat(&self, name: &str) -> Result<Stat, ReadError> {
        self.stat_with(name, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// `stat` of what `name` leads to.
    pub fn stat(&self, name: &str) -> Result<Stat, ReadError> {
        self.stat_with(name, 0)
    }

    /// Where the link `name` points; `None` for a target that is not
    /// UTF-8, an error when `name` is no link (`EINVAL`) or not there.
    pub fn read_link(&self, name: &str) -> io::Result<Option<String>> {
        let name = c_name(name).map_err(|_| io::Error::from(ErrorKind::NotFound))?;
        // On the stack: a buffer of PATH_MAX bytes per link on the heap,
        // freed between the records read, left the heap fragmented. A
        // short one first: zeroing PATH_MAX bytes for each of 200,000
        // links cost more than the rest of reading them in user space.
        let mut short = [0u8; 256];
        let n = self.read_link_into(&name, &mut short)?;
        if n < short.len() {
            return Ok(utf8(&short, n));
        }
        let mut long = [0u8; libc::PATH_MAX as usize];
        let n = self.read_link_into(&name, &mut long)?;
        Ok(utf8(&long, n))
    }

    /// `readlinkat` into `buffer`: how many bytes of it the target filled
    /// (all of them when it may be longer).
    fn read_link_into(&self, name: &CName, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the descriptor is open, `name` a valid C string and
        // `buffer` writable for its whole length.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Opens `name`, which the directory listing called a regular file,
    /// without following a link and without blocking; what was opened is
    /// described by its `fstat`, the check to make before reading it with
    /// [`Opened::read`]. A link put at the name since is refused
    /// (`NotRegular`) unopened.
    pub fn open_listed(&self, name: &str) -> Result<Opened, ReadError> {
        self.open_file(name, true)
    }

    /// The content of `name`, which `before` (its `stat`, or its `lstat`
    /// when it is not a link) describes: anything but a regular file of at
    /// most `cap` bytes is refused without being opened, and a file other
    /// than the one `before` describes is refused once opened.
    pub fn read(&self, name: &str, before: &Stat, cap: u64) -> Result<Vec<u8>, ReadError> {
        if let Some(kind) = before.irregular() {
            return Err(ReadError::NotRegular(kind));
        }
        check_size(before.size, cap)?;
        // A name `lstat` found regular must still be one: never follow a
        // link put there since.
        let opened = match self.open_file(name, !before.followed) {
            Err(ReadError::NotRegular(_)) => {
                return Err(ReadError::Failed(io::Error::other(
                    "replaced by a link while being opened",
                )))
            }
            opened => opened?,
        };
        let identity = opened.stat.identity;
        if (identity.dev, identity.ino) != (before.identity.dev, before.identity.ino) {
            return Err(ReadError::Failed(io::Error::other(
                "replaced while being opened",
            )));
        }
        opened.read(cap)
    }

    /// Opens `name` without blocking (and, with `no_follow`, refusing a
    /// link as `NotRegular`) and `fstat`s what was opened.
    fn open_file(&self, name: &str, no_follow: bool) -> Result<Opened, ReadError> {
        let c = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let flags = if no_follow {
            flags | libc::O_NOFOLLOW
        } else {
            flags
        };
        // SAFETY: the descriptor is open and `c` a valid C string.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if no_follow && e.raw_os_error() == Some(libc::ELOOP) {
                return Err(ReadError::NotRegular("symbolic link"));
            }
            return Err(failed(e));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: all-zero is a valid `stat`, filled in by the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open and `st` a valid `stat` for the
        // duration of the call.
        if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
            return Err(ReadError::Failed(io::Error::last_os_error()));
        }
        Ok(Opened {
            file,
            stat: Stat::of(&st, !no_follow),
        })
    }
}

/// A file opened by [`Dir::open_listed`], not read yet.
#[derive(Debug)]
pub struct Opened {
    file: File,
    /// The `fstat` of the open file.
    pub stat: Stat,
}

impl Opened {
    /// The content, at most `cap` bytes, if [`Opened::stat`] describes a
    /// regular file of at most `cap` bytes; nothing else is read.
    pub fn read(self, cap: u64) -> Result<Vec<u8>, ReadError> {
        if let Some(kind) = self.stat.irregular() {
            return Err(ReadError::NotRegular(kind));
        }
        check_size(self.stat.size, cap)?;
        read_capped(self.file, self.stat.size, cap)
    }
}

/// Reads to the end, refusing more than `cap` bytes (the file may grow
/// after the size check). `size` is what `fstat` said: a read that leaves
/// the byte after it empty has met the end, so a file that did not change
/// takes one read.
fn read_capped(mut file: File, size: u64, cap: u64) -> Result<Vec<u8>, ReadError> {
    let limit = usize::try_from(cap).unwrap_or(usize::MAX).saturating_add(1);
    let expected = usize::try_from(size).unwrap_or(usize::MAX).min(limit - 1);
    let mut bytes = vec![0u8; expected + 1];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            if filled >= limit {
                return Err(ReadError::TooLarge {
                    size: filled as u64,
                    cap,
                });
            }
            // Grown since the `fstat`: read on, but never past the cap.
            bytes.resize(filled.saturating_mul(2).clamp(filled + 1, limit), 0);
        }
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled == expected {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Failed(e)),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("brokerd-read-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn regular_files_are_read_with_their_identity() {
        let dir = Dir::new("regular");
        let path = dir.0.join("passwd");
        std::fs::write(&path, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let (bytes, identity) = read(&path, 1024).unwrap();
        assert_eq!(bytes.len(), 26);
        assert_eq!(identity.size, 26);
        assert!(matches!(
            read(&dir.0.join("missing"), 1024),
            Err(ReadError::Missing)
        ));
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = Dir::new("special");
        let fifo = dir.0.join("fifo");
        mkfifo(&fifo);
        let stdin_link = dir.0.join("stdin");
        symlink("/dev/stdin", &stdin_link).unwrap();
        let started = Instant::now();
        for (path, kind) in [
            (fifo.as_path(), "FIFO"),
            (Path::new("/dev/null"), "character device"),
            (dir.0.as_path(), "directory"),
        ] {
            match read(path, 1024) {
                Err(ReadError::NotRegular(k)) => assert_eq!(k, kind, "{}", path.display()),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        // Whatever stdin is here (a pipe, /dev/null, a terminal), it is
        // not read and nothing waits.
        assert!(read(&stdin_link, 1024).is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn huge_files_are_refused_before_reading() {
        let dir = Dir::new("huge");
        let path = dir.0.join("group");
        let file = File::create(&path).unwrap();
        file.set_len(2 << 30).unwrap();
        let started = Instant::now();
        assert!(matches!(
            read(&path, 1 << 20),
            Err(ReadError::TooLarge { size, .. }) if size == 2 << 30
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_name_listed_as_regular_is_checked_by_what_was_opened() {
        let dir = Dir::new("listed");
        std::fs::write(dir.0.join("file"), "12345").unwrap();
        mkfifo(&dir.0.join("fifo"));
        symlink("file", dir.0.join("link")).unwrap();
        let handle = super::Dir::open(&dir.0).unwrap();
        let started = Instant::now();
        let opened = handle.open_listed("file").unwrap();
        assert_eq!(opened.stat.size, 5);
        assert_eq!(opened.read(1024).unwrap(), b"12345");
        // A FIFO's open returns at once, and it is refused unread.
        let fifo = handle.open_listed("fifo").unwrap();
        assert!(matches!(
            fifo.read(1024),
            Err(ReadError::NotRegular("FIFO"))
        ));
        // A link is not followed.
        assert!(matches!(
            handle.open_listed("link"),
            Err(ReadError::NotRegular("symbolic link"))
        ));
        assert!(matches!(
            handle.open_listed("missing"),
            Err(ReadError::Missing)
        ));
        // Names no directory can hold are looked up nowhere.
        for impossible in ["a\0b".to_owned(), "x".repeat(256)] {
            assert!(matches!(handle.lstat(&impossible), Err(ReadError::Missing)));
            assert!(matches!(
                handle.open_listed(&impossible),
                Err(ReadError::Missing)
            ));
        }
        std::fs::write(dir.0.join("x".repeat(255)), "longest").unwrap();
        assert_eq!(handle.lstat(&"x".repeat(255)).unwrap().size, 7);
        let dev = super::Dir::open(Path::new("/dev")).unwrap();
        let null = dev.open_listed("null").unwrap();
        assert!(matches!(
            null.read(1024),
            Err(ReadError::NotRegular("character device"))
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_file_grown_since_its_fstat_is_read_to_its_end_or_refused_past_the_cap() {
        let dir = Dir::new("grown");
        let path = dir.0.join("file");
        std::fs::write(&path, "start").unwrap();
        let handle = super::Dir::open(&dir.0).unwrap();
        let opened = handle.open_listed("file").unwrap();
        let grown = format!("start{}", "x".repeat(100));
        std::fs::write(&path, &grown).unwrap();
        assert_eq!(opened.stat.size, 5);
        assert_eq!(opened.read(1024).unwrap(), grown.as_bytes());

        std::fs::write(&path, "start").unwrap();
        let opened = handle.open_listed("file").unwrap();
        std::fs::write(&path, "x".repeat(2048)).unwrap();
        assert!(matches!(
            opened.read(1024),
            Err(ReadError::TooLarge {
                size: 1025,
                cap: 1024
            })
        ));

        // Shrunk since: what is there is read.
        std::fs::write(&path, "start").unwrap();
        let opened = handle.open_listed("file").unwrap();
        std::fs::write(&path, "st").unwrap();
        assert_eq!(opened.read(1024).unwrap(), b"st");
    }

    #[test]
    fn a_link_is_read_as_one_and_anything_else_is_an_error() {
        let dir = Dir::new("readlink");
        std::fs::write(dir.0.join("file"), "x").unwrap();
        symlink("file", dir.0.join("link")).unwrap();
        let handle = super::Dir::open(&dir.0).unwrap();
        assert_eq!(handle.read_link("link").unwrap().as_deref(), Some("file"));
        let not_a_link = handle.read_link("file").unwrap_err();
        assert_eq!(not_a_link.raw_os_error(), Some(libc::EINVAL));
        assert!(handle.read_link("missing").is_err());
    }

    #[test]
    fn a_link_is_read_whole_whatever_the_length_of_its_target() {
        let dir = Dir::new("readlink-long");
        let handle = super::Dir::open(&dir.0).unwrap();
        for length in [1, 254, 255, 256, 257, 1000, libc::PATH_MAX as usize - 1] {
            let target: String = "a/".repeat(length / 2) + &"b".repeat(length % 2);
            let name = format!("link{length}");
            symlink(&target, dir.0.join(&name)).unwrap();
            assert_eq!(
                handle.read_link(&name).unwrap().as_deref(),
                Some(target.as_str()),
                "a target of {length} bytes"
            );
        }
    }

    #[test]
    fn only_absence_lets_the_last_good_content_go() {
        assert!(!ReadError::Missing.keeps_last_good());
        assert!(ReadError::NotRegular("FIFO").keeps_last_good());
        assert!(ReadError::Failed(io::Error::from_raw_os_error(libc::EMFILE)).keeps_last_good());
    }
}
