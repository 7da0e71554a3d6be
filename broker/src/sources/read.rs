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

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, ErrorKind, Read};
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
    let bytes = read_capped(file, cap)?;
    Ok((bytes, Identity::of(&opened)))
}

fn check(meta: &Metadata, cap: u64) -> Result<(), ReadError> {
    if let Some(kind) = irregular(meta) {
        return Err(ReadError::NotRegular(kind));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            cap,
        });
    }
    Ok(())
}

/// Reads to the end, refusing more than `cap` bytes (the file may grow
/// after the size check).
fn read_capped(file: File, cap: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    let mut limited = file.take(cap.saturating_add(1));
    loop {
        match limited.read_to_end(&mut bytes) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Failed(e)),
        }
    }
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            cap,
        });
    }
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
    fn only_absence_lets_the_last_good_content_go() {
        assert!(!ReadError::Missing.keeps_last_good());
        assert!(ReadError::NotRegular("FIFO").keeps_last_good());
        assert!(ReadError::Failed(io::Error::from_raw_os_error(libc::EMFILE)).keeps_last_good());
    }
}
