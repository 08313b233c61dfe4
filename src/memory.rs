//! Returning freed memory to the OS on quiet workers.
//!
//! The `ringws` binary allocates with mimalloc, which returns freed pages to
//! the OS lazily, from inside later allocations and frees on the same thread.
//! A worker that goes quiet after a burst therefore kept what the burst freed:
//! 2,000 connections echoing 20 KiB messages on io_uring (whose adapters grow
//! 64 KiB buffers) left 266 MB resident after they had all closed. Every
//! worker asks mimalloc to collect once a second, which returns such memory
//! within about a second.

use std::time::Duration;

/// How often each worker asks the allocator to return freed memory.
pub(crate) const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Returns what this thread has freed to the OS, as far as mimalloc's purge
/// delay (`MIMALLOC_PURGE_DELAY`, 10 ms by default) allows.
pub(crate) fn collect() {
    // SAFETY: `mi_collect` has no preconditions. It walks the calling
    // thread's mimalloc heap (empty when mimalloc is not the global
    // allocator, as in the in-process tests) and releases pages that hold no
    // live block; nothing that Rust code can reach is freed or moved.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
