//! The snapshot file, mapped into the process: the `open`/`fstat`/`mmap`
//! calls and the bookkeeping that keeps a mapping alive while any thread
//! reads it. The format and every check of its content are
//! `userdb_proto::snapfile`'s.
//!
//! - A file is believed only if it is a regular file (the path is opened
//!   with `O_NOFOLLOW`), owned by root and writable by nobody else, of a
//!   sane size, with the right magic and version and a content that parses.
//! - It is mapped and its header checked once, and used until the broker
//!   marks it superseded (a flag in its control block, read on every
//!   look-up with a plain memory read: no system call on the path of a
//!   hit, and no second check of the header).
//! - Two slots hold at most two generations. A look-up counts itself in as
//!   a reader of the current slot; a new file is mapped into the other slot
//!   only when nobody reads it any more, so nothing is unmapped under a
//!   reader. No lock is ever waited for (a `fork()` may have frozen one).
//! - A missing or refused file is looked for again at most every
//!   [`RETRY_MS`], so a machine without the broker pays no system call per
//!   look-up either.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use userdb_proto::snapfile::{
    check_control, Snapfile, CONTROL_SIZE, FLAGS_OFFSET, MAX_FILE_SIZE, SUPERSEDED,
};

/// How often a missing or refused file is looked for again.
pub const RETRY_MS: u64 = 100;

struct Slot {
    base: AtomicPtr<u8>,
    len: AtomicUsize,
    readers: AtomicUsize,
    /// The parsed content of the mapping. Like `base` and `len`, written
    /// only while the slot is neither current nor read, before it is made
    /// current; read only by a reader counted in on the current slot.
    file: UnsafeCell<Option<Snapfile<'static>>>,
}

// SAFETY: `file` is the only field that is not atomic. It is written only
// by the one thread holding `SWAPPING`, while the slot is not current and
// has no reader, before the SeqCst store that makes it current; it is read
// only after a reader's SeqCst load found the slot current with the
// reader counted in, which no write can overlap (see `acquire`).
unsafe impl Sync for Slot {}

impl Slot {
    const fn empty() -> Slot {
        Slot {
            base: AtomicPtr::new(std::ptr::null_mut()),
            len: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            file: UnsafeCell::new(None),
        }
    }
}

static SLOTS: [Slot; 2] = [Slot::empty(), Slot::empty()];
/// The slot in use, plus one; 0: none.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// The pid of the process mapping a new file, or 0. A pid that is not
/// ours is a swap a `fork()` interrupted: the child may take over.
static SWAPPING: AtomicU64 = AtomicU64::new(0);
/// When a file was last looked for without success.
static LAST_MISS_MS: AtomicU64 = AtomicU64::new(0);

/// A mapping counted as read; the content stays mapped until it is dropped.
pub struct Mapped {
    slot: &'static Slot,
    base: *const u8,
    /// The slot's `file`, which no swap writes while this reader is
    /// counted in.
    file: &'static Snapfile<'static>,
}

// SAFETY: a `Mapped` only reads memory that stays mapped while it exists
// (its slot's reader count keeps it), whichever thread holds it; the count
// is atomic. Enumeration state moves it between threads inside a lock.
unsafe impl Send for Mapped {}

impl Mapped {
    /// The file's content, parsed when it was mapped: it stays mapped and
    /// unchanged for as long as `self`, which the lifetime ties it to.
    pub fn file(&self) -> &Snapfile<'_> {
        self.file
    }

    /// Whether the broker has replaced this file.
    fn superseded(&self) -> bool {
        // SAFETY: the flags word lies inside the mapped control block and is
        // 4-aligned (page-aligned base + 12). The broker may write it at any
        // time from another process, hence a volatile read.
        let flags = unsafe { std::ptr::read_volatile(self.base.add(FLAGS_OFFSET).cast::<u32>()) };
        u32::from_le(flags) & SUPERSEDED != 0
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.slot.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a reader in on the current slot, if there is one.
fn acquire() -> Option<Mapped> {
    for _ in 0..4 {
        let current = CURRENT.load(Ordering::SeqCst);
        let slot = SLOTS.get(current.checked_sub(1)?)?;
        slot.readers.fetch_add(1, Ordering::SeqCst);
        // Only a slot that is still current after counting in is safe: a
        // swap only ever remaps a slot that is not current.
        if CURRENT.load(Ordering::SeqCst) == current {
            let base = slot.base.load(Ordering::SeqCst);
            // SAFETY: counted in on the current slot: no swap writes `file`
            // now, and the swap that made the slot current wrote it before.
            let file = unsafe { (*slot.file.get()).as_ref() };
            if let (false, Some(file)) = (base.is_null(), file) {
                return Some(Mapped { slot, base, file });
            }
        }
        slot.readers.fetch_sub(1, Ordering::SeqCst);
    }
    None
}

/// The current snapshot file, mapping a new one from `path()` if the
/// current one was superseded (or none is mapped yet). `None`: no file to
/// use now. The clock is read only when no mapping is current.
pub fn current<P: AsRef<Path>>(
    path: impl FnOnce() -> P,
    now_ms: impl FnOnce() -> u64,
) -> Option<Mapped> {
    if let Some(mapped) = acquire() {
        if !mapped.superseded() {
            return Some(mapped);
        }
    }
    let now_ms = now_ms();
    let last_miss = LAST_MISS_MS.load(Ordering::Relaxed);
    if last_miss != 0 && now_ms.saturating_sub(last_miss) < RETRY_MS {
        return None;
    }
    match swap_in(path().as_ref()) {
        Swap::Done => {
            LAST_MISS_MS.store(0, Ordering::Relaxed);
            acquire().filter(|m| !m.superseded())
        }
        // Not a missing file: the next call tries again (a few atomic
        // operations), rather than waiting out the retry interval after
        // every republication in a busy process.
        Swap::Busy => None,
        Swap::Unusable => {
            LAST_MISS_MS.store(now_ms.max(1), Ordering::Relaxed);
            None
        }
    }
}

/// How an attempt to map a new file ended.
enum Swap {
    /// A usable file is now current.
    Done,
    /// Another thread is mapping one, or a reader still holds the older
    /// generation whose slot the new file needs.
    Busy,
    /// There is no file to believe.
    Unusable,
}

/// Maps the file at `path` into the slot that is not current, if nobody
/// reads it, and makes it current.
fn swap_in(path: &Path) -> Swap {
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = u64::try_from(unsafe { libc::getpid() }).unwrap_or(0);
    let holder = SWAPPING.load(Ordering::SeqCst);
    // Our own pid: another thread is swapping. Any other non-zero pid is a
    // parent whose swap a fork() cut short: this child may take over.
    if holder == pid
        || SWAPPING
            .compare_exchange(holder, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
    {
        return Swap::Busy;
    }
    let done = swap_in_locked(path);
    SWAPPING.store(0, Ordering::SeqCst);
    done
}

fn swap_in_locked(path: &Path) -> Swap {
    let current = CURRENT.load(Ordering::SeqCst);
    let free = if current == 1 { 1 } else { 0 };
    let slot = &SLOTS[free];
    if slot.readers.load(Ordering::SeqCst) != 0 {
        // Someone still reads the older generation: keep it, use none now.
        return Swap::Busy;
    }
    // The older generation goes before the new one is mapped: never three
    // at once.
    let old = slot.base.swap(std::ptr::null_mut(), Ordering::SeqCst);
    let old_len = slot.len.swap(0, Ordering::SeqCst);
    // SAFETY: this thread holds `SWAPPING`, and the slot is not current and
    // has no reader (see `Slot::file`).
    unsafe { *slot.file.get() = None };
    if !old.is_null() {
        // SAFETY: `old`/`old_len` are a mapping this module made; the slot
        // is not current and has no reader, so nothing can touch it (a
        // reader counting itself in sees the slot is not current and
        // leaves without reading).
        unsafe { libc::munmap(old.cast(), old_len) };
    }
    let Some((base, len, file)) = map(path) else {
        return Swap::Unusable;
    };
    // SAFETY: as above; the store to CURRENT below publishes it.
    unsafe { *slot.file.get() = Some(file) };
    slot.len.store(len, Ordering::SeqCst);
    slot.base.store(base, Ordering::SeqCst);
    CURRENT.store(free + 1, Ordering::SeqCst);
    Swap::Done
}

/// A mapping's address and length, and its content parsed.
type Mapping = (*mut u8, usize, Snapfile<'static>);

/// Opens, checks and maps the file; `None` when it is not to be believed.
fn map(path: &Path) -> Option<Mapping> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c_path` is a valid NUL-terminated path; the flags never
    // block (O_NONBLOCK), never follow a link and never make a terminal
    // ours.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return None;
    }
    let mapped = map_fd(fd);
    // SAFETY: `fd` is ours and open; the mapping does not need it.
    unsafe { libc::close(fd) };
    mapped
}

fn map_fd(fd: libc::c_int) -> Option<Mapping> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let len = usize::try_from(st.st_size).ok()?;
    let trusted = st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_uid == 0
        && st.st_mode & 0o022 == 0
        && len > CONTROL_SIZE
        && len <= MAX_FILE_SIZE;
    if !trusted {
        return None;
    }
    // SAFETY: a fresh read-only shared mapping of `len` bytes of a regular
    // file; the kernel picks the address.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let base = base.cast::<u8>();
    let mut start = [0u8; 12];
    // SAFETY: the mapping holds more than CONTROL_SIZE bytes; the first 12
    // (magic and version) are never written after publication.
    unsafe { std::ptr::copy_nonoverlapping(base, start.as_mut_ptr(), start.len()) };
    // SAFETY: the bytes after the control block are mapped PROT_READ
    // (len > CONTROL_SIZE) and never written after publication. They stay
    // mapped until the slot that will hold them is unmapped, which happens
    // only when no `Mapped` exists for it; the `'static` borrow is never
    // handed out longer than a `Mapped` (`Mapped::file`).
    let content: &'static [u8] =
        unsafe { std::slice::from_raw_parts(base.add(CONTROL_SIZE), len - CONTROL_SIZE) };
    match (check_control(&start), Snapfile::parse(content)) {
        (Ok(()), Ok(file)) => Some((base, len, file)),
        _ => {
            // SAFETY: the mapping just made, not shared with anyone.
            unsafe { libc::munmap(base.cast(), len) };
            None
        }
    }
}
