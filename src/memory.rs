//! Keeping RSS small and fine-grained: huge pages off, and freed memory returned to
//! the OS on quiet workers.
//!
//! The `ringws` binary allocates with mimalloc, which returns freed pages to
//! the OS lazily, from inside later allocations and frees on the same thread.
//! A worker that goes quiet after a burst therefore kept what the burst freed:
//! 2,000 connections echoing 20 KiB messages on io_uring (whose adapters grow
//! 64 KiB buffers) left 266 MB resident after they had all closed. Every
//! worker asks mimalloc to collect once a second, which returns such memory
//! within about a second.
//!
//! It also turns transparent huge pages off for the process
//! ([`disable_huge_pages`]) unless `MIMALLOC_ALLOW_THP` is set: mimalloc
//! reserves a 1 GiB arena and asks for huge pages on it, so on a kernel with
//! THP in "madvise" or "always" mode RSS moves in 2 MiB steps that are not
//! handed back while any block in them lives. Measured on this VM (THP in
//! "madvise" mode, io_uring worker, 100 connections x 1 KiB at 60 k msgs/s,
//! the server stopped for 300 ms twice): with huge pages RSS sat at 14 MB and
//! climbed in steps of 0.7-2.2 MB that stayed (16.5 MB after 25 s); without,
//! it sat at 7 MB and came back to it within a second after each stall.

use std::time::Duration;

/// How often each worker asks the allocator to return freed memory.
pub(crate) const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Turns transparent huge pages off for this process unless the
/// `MIMALLOC_ALLOW_THP` environment variable is set (mimalloc then follows
/// it: `1` keeps huge pages, `0` turns them off itself). The `ringws`
/// binary calls it from a constructor, before anything is allocated: the
/// kernel's `PR_SET_THP_DISABLE` stops later huge page faults in the
/// process, but pages faulted in before stay. Allocates nothing, so it is
/// safe to call before `main`. Returns whether this call turned them off.
pub fn disable_huge_pages() -> bool {
    // SAFETY: getenv reads the environment the loader set up, with a valid
    // NUL-terminated name; nothing writes the environment concurrently (no
    // other thread exists before `main`, and ringws never sets variables).
    if !unsafe { libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()) }.is_null() {
        return false;
    }
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag on this
    // process's memory map; it reads no pointer and changes no mapping that
    // Rust code holds (pages already faulted in stay as they are).
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

/// Returns what this thread has freed to the OS, as far as mimalloc's purge
/// delay (`MIMALLOC_PURGE_DELAY`, 10 ms by default) allows.
pub(crate) fn collect() {
    // SAFETY: `mi_collect` has no preconditions. It walks the calling
    // thread's mimalloc heap (empty when mimalloc is not the global
    // allocator, as in the in-process tests) and releases pages that hold no
    // live block; nothing that Rust code can reach is freed or moved.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
