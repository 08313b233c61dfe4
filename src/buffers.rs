//! A worker's pool of read buffers, lent to sessions only while they have
//! bytes to parse.
//!
//! An idle session holds no read buffer: when a read would block and its
//! buffer is empty, the buffer goes back to the pool; when data is ready,
//! the session takes one again. Steady echo then reuses pooled buffers and
//! never allocates, and memory scales with the sessions active at once, not
//! with the sessions open. (A bounded number of busy sessions may keep an
//! empty buffer between messages until the next [`RECLAIM_EVERY`] tick:
//! `sessions::LocalSessions::try_hold`.)
//!
//! What a burst left in the pool is freed once it has gone unused for a
//! whole [`BufferPool::trim`] period.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use bytes::BytesMut;

/// Capacity of a new buffer (fastwebsockets' own default).
const BUFFER: usize = 8 << 10;
/// Buffers that grew past this (large messages) are freed, not pooled.
pub(crate) const POOL_MAX_BUFFER: usize = 64 << 10;
/// Most bytes of buffers kept for reuse per worker (1,024 buffers of the
/// default size): what a burst of activity can leave behind.
const POOL_MAX_BYTES: usize = 8 << 20;

/// How often the sessions let keep an empty read buffer between messages
/// are told to give it back.
pub const RECLAIM_EVERY: Duration = Duration::from_millis(100);

/// Free read buffers of one worker (single-threaded).
#[derive(Debug, Default)]
pub struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    /// Capacity of the buffers in `free`.
    bytes: Cell<usize>,
    /// Fewest buffers `free` held since the last [`BufferPool::trim`]: that
    /// many went unused for the whole period.
    low: Cell<usize>,
}

impl BufferPool {
    /// A buffer to read into: a pooled one, or a new one.
    pub fn take(&self) -> BytesMut {
        let mut free = self.free.borrow_mut();
        match free.pop() {
            Some(buf) => {
                self.bytes.set(self.bytes.get() - buf.capacity());
                self.low.set(self.low.get().min(free.len()));
                buf
            }
            None => BytesMut::with_capacity(BUFFER),
        }
    }

    /// Returns an empty buffer. Its payload slices (already-echoed frames)
    /// must be gone, so that its whole allocation is reclaimed in place.
    pub fn give(&self, mut buf: BytesMut) {
        debug_assert!(buf.is_empty());
        if buf.capacity() == 0 {
            return;
        }
        // Unique and empty: `reserve` moves the start back to the beginning
        // of the allocation instead of allocating.
        buf.reserve(BUFFER);
        let pooled = self.bytes.get() + buf.capacity();
        if buf.capacity() <= POOL_MAX_BUFFER && pooled <= POOL_MAX_BYTES {
            self.bytes.set(pooled);
            self.free.borrow_mut().push(buf);
        }
    }

    /// Frees the buffers that stayed in the pool, unused, since the last
    /// call (the pool is a stack: those are at its bottom). Called once a
    /// second by each worker, before it asks the allocator to return freed
    /// memory: a burst's buffers are gone two seconds after it at most.
    pub fn trim(&self) {
        let mut free = self.free.borrow_mut();
        let unused = self.low.get().min(free.len());
        let freed: usize = free.drain(..unused).map(|buf| buf.capacity()).sum();
        self.bytes.set(self.bytes.get() - freed);
        self.low.set(free.len());
    }

    /// Buffers waiting in the pool.
    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_same_allocation() {
        let pool = BufferPool::default();
        let mut buf = pool.take();
        buf.extend_from_slice(&[1; 100]);
        let frame = buf.split_to(100);
        drop(frame);
        let ptr = buf.as_ptr() as usize - 100;
        pool.give(buf);
        let again = pool.take();
        assert_eq!(again.as_ptr() as usize, ptr);
        assert!(again.capacity() >= BUFFER);
    }

    #[test]
    fn pooled_bytes_are_bounded() {
        let pool = BufferPool::default();
        for _ in 0..(POOL_MAX_BYTES / (32 << 10)) * 2 {
            pool.give(BytesMut::with_capacity(32 << 10));
        }
        assert!(pool.bytes.get() <= POOL_MAX_BYTES);
        assert_eq!(pool.pooled(), POOL_MAX_BYTES / (32 << 10));
        let taken = pool.take();
        assert_eq!(pool.bytes.get(), POOL_MAX_BYTES - taken.capacity());
    }

    #[test]
    fn trim_frees_what_went_unused_for_a_period() {
        let pool = BufferPool::default();
        let bufs: Vec<BytesMut> = (0..10).map(|_| pool.take()).collect();
        bufs.into_iter().for_each(|b| pool.give(b));
        pool.trim(); // nothing was in the pool when the period began
        assert_eq!(pool.pooled(), 10);
        // In this period, at most 3 are out at once: 7 stay unused.
        let out: Vec<BytesMut> = (0..3).map(|_| pool.take()).collect();
        out.into_iter().for_each(|b| pool.give(b));
        pool.trim();
        assert_eq!(pool.pooled(), 3);
        assert_eq!(pool.bytes.get(), 3 * BUFFER);
        pool.trim(); // a period with no use at all empties it
        assert_eq!(pool.pooled(), 0);
        assert_eq!(pool.bytes.get(), 0);
    }

    #[test]
    fn large_buffers_are_freed() {
        let pool = BufferPool::default();
        pool.give(BytesMut::with_capacity(1 << 20));
        assert_eq!(pool.pooled(), 0);
    }
}
