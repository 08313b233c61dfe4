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
//!
//! And it asks mimalloc for memory the way mimalloc's size classes work
//! ([`Allocator`]): the `mimalloc` crate's allocator passes every request
//! through `mi_malloc_aligned`, which in mimalloc 3 takes a block of the
//! next size class up whenever the request's size is not a power of two and
//! its own class has no free block at hand: every time, for a size whose
//! class nothing else allocates (mimalloc issue 889). An idle connection's
//! task future (224 B) landed in 256-byte blocks that way, and its socket's
//! readiness cell (24 B) in 32-byte ones.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::time::Duration;

/// mimalloc as the global allocator (the `ringws` binary's): requests whose
/// alignment a plain `mi_malloc` already gives go to `mi_malloc`, so they
/// get their own size class; others go through the `mimalloc` crate's
/// `MiMalloc` (`mi_malloc_aligned`). Every mimalloc block is aligned to at
/// least a machine word: block sizes are whole words and a page's first
/// block is aligned to 16 bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

/// The alignment every block from `mi_malloc` has.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free`
// takes blocks from `mi_malloc`, `mi_zalloc`, `mi_realloc` and their aligned
// forms alike); a block is at least `layout.size()` bytes and aligned to
// `layout.align()`: to a word by construction for the plain calls, which are
// only used when `layout.align() <= WORD`, and as asked for by the aligned
// ones. `realloc` keeps the alignment of the block's layout, which is the
// one it was allocated with.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: mi_malloc has no preconditions.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: mi_zalloc has no preconditions.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `ptr` is a live mimalloc block (the caller's contract);
            // the new block is word-aligned like every mimalloc block.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

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
/// delay (`MIMALLOC_PURGE_DELAY`, 1 s by default in mimalloc 3) allows.
pub(crate) fn collect() {
    // SAFETY: `mi_collect` has no preconditions. It walks the calling
    // thread's mimalloc heap (empty when mimalloc is not the global
    // allocator, as in the in-process tests) and releases pages that hold no
    // live block; nothing that Rust code can reach is freed or moved.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// The memory limit of this process's cgroup, if one is set: the lowest
/// `memory.max` (cgroup v2) or `memory.limit_in_bytes` (v1) on the way from
/// its cgroup to the root. A container's limit (a pod's
/// `resources.limits.memory`) is found this way under both hierarchies.
pub fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut files = Vec::new();
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(format!("{root}{path}"));
        loop {
            files.push(dir.join(file));
            if dir.as_os_str().len() <= root.len() || !dir.pop() {
                break;
            }
        }
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|text| parse_limit(&text))
        .min()
}

/// A cgroup memory limit file's value: `None` for "max" (v2) or the huge
/// number v1 uses for "no limit".
fn parse_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_parse() {
        assert_eq!(parse_limit("268435456\n"), Some(256 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        // Whatever this machine has, reading it does not fail.
        let _ = cgroup_memory_limit();
    }

    /// The block mimalloc gave for `ptr`.
    fn usable(ptr: *mut u8) -> usize {
        // SAFETY: `ptr` is a live mimalloc block.
        unsafe { libmimalloc_sys::mi_usable_size(ptr.cast::<c_void>()) }
    }

    #[test]
    fn each_size_gets_its_own_class_and_alignment_is_kept() {
        // Sizes whose class is not a power of two are the ones
        // `mi_malloc_aligned` moved a class up (224 -> 256, 24 -> 32).
        for size in [8, 24, 40, 48, 56, 80, 160, 224, 232, 1000, 3000] {
            for align in [1, 2, 4, 8, 16, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // Fresh allocations, many of them, so that some come while
                // the size's own class has no free block at hand.
                let blocks: Vec<*mut u8> = (0..300)
                    // SAFETY: `layout` has a non-zero size.
                    .map(|_| unsafe { Allocator.alloc(layout) })
                    .collect();
                for &p in &blocks {
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    if align <= WORD {
                        // SAFETY: mi_good_size has no preconditions.
                        let class = unsafe { libmimalloc_sys::mi_good_size(size) };
                        assert_eq!(usable(p), class, "size {size} align {align}");
                    } else {
                        assert!(usable(p) >= size);
                    }
                }
                for p in blocks {
                    // SAFETY: allocated above with `layout`, freed once.
                    unsafe { Allocator.dealloc(p, layout) };
                }
            }
        }
    }

    #[test]
    fn zeroed_and_reallocated_blocks_keep_their_contract() {
        for align in [8, 32] {
            let layout = Layout::from_size_align(40, align).unwrap();
            // SAFETY: non-zero size; every block is freed once, with the
            // layout it has at that point.
            unsafe {
                let p = Allocator.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(p, 40).iter().all(|&b| b == 0));
                std::ptr::write_bytes(p, 7, 40);
                let q = Allocator.realloc(p, layout, 5000);
                assert_eq!(q as usize % align, 0);
                assert!(std::slice::from_raw_parts(q, 40).iter().all(|&b| b == 7));
                let grown = Layout::from_size_align(5000, align).unwrap();
                Allocator.dealloc(q, grown);
            }
        }
    }
}
