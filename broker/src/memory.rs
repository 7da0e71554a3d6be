//! The allocator: its settings, and handing back the pages that a large
//! batch of freed allocations leaves unused. A snapshot and a drop-in tree
//! are hundreds of thousands of small allocations; glibc keeps the pages
//! they leave free resident unless told otherwise.

/// Keeps the resident size from ratcheting up across rebuilds; run first.
/// - Two malloc arenas instead of eight per core: the daemon has a handful
///   of threads, and every arena keeps the pages of the snapshots it once
///   held.
/// - Blocks of 128 KiB and more always mapped of their own, so handed back
///   when freed: by default glibc raises that threshold to the largest
///   block freed (the snapshot file's 20 MB at fleet size), after which a
///   rebuild's large vectors come from the heap, between the small blocks
///   of the snapshot in use, and stay resident (+40 MB at fleet size).
pub fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands the free pages of every arena back to the system: after a
/// replaced snapshot is freed, and after a large batch of reads.
pub fn release_free_pages() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
}
