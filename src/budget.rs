//! One worker's share of `--max-buffered-bytes`: the bytes its sessions'
//! read buffers may hold while they wait for the rest of a frame.
//!
//! A session is charged for its read buffer while it holds one: the
//! worker's pooled buffer when bytes arrive ([`Budget::take`]), and, for a
//! frame that does not fit it, a buffer of the frame's length, charged as
//! soon as the frame's header says how long it is and before any of it is
//! read past the pooled buffer ([`Budget::grow`]). So the bytes a worker
//! holds in read buffers never exceed its share, however many peers stop
//! halfway through a large frame, and a frame once granted always has room
//! to complete.
//!
//! Large frames may take only the share less a reserve of an eighth, so that
//! small messages keep flowing (a pooled buffer each) while large ones
//! queue. A session refused waits ([`Budget::wait`]) without reading, so TCP
//! pushes back on its peer; it is woken when bytes are released. If
//! sessions keep being refused for [`EVICT_AFTER`], the worker closes the
//! session whose incomplete frame is oldest, one per housekeeping tick
//! ([`Budget::tick`] says when), until they are not.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::sessions::Pace;

/// How long sessions must keep being refused before the oldest incomplete
/// frame is closed to make room.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// One worker's budget of buffered bytes (single-threaded).
#[derive(Debug)]
pub struct Budget {
    /// The worker's share of `--max-buffered-bytes`.
    share: usize,
    /// What large frames may take: `share` less the reserve.
    large: usize,
    held: Cell<usize>,
    /// Sessions refused since they were last woken.
    waiters: RefCell<Vec<Waker>>,
    /// A request was refused since the last [`Budget::tick`].
    refused: Cell<bool>,
    /// Since when every tick has seen a refusal.
    refused_since: Cell<Option<Instant>>,
    /// Raised on a refusal, so that the housekeeping ticks
    /// ([`Budget::tick`]) while sessions are refused.
    pace: Rc<Pace>,
}

impl Budget {
    /// A budget of `share` bytes, whose refusals raise `pace`.
    pub fn new(share: usize, pace: Rc<Pace>) -> Self {
        Budget {
            share,
            large: share - share / 8,
            held: Cell::new(0),
            waiters: RefCell::default(),
            refused: Cell::new(false),
            refused_since: Cell::new(None),
            pace,
        }
    }

    /// The share a worker needs so that a frame of `frame` bytes can be
    /// granted beside the reserve.
    pub fn share_for_frame(frame: usize) -> usize {
        frame.saturating_add(frame / 7).saturating_add(1)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Charges a pooled buffer of `bytes`, if the share allows.
    pub fn take(&self, bytes: usize) -> bool {
        self.charge(bytes, self.share)
    }

    /// Charges `bytes` more for a frame longer than a pooled buffer, if the
    /// share less the reserve allows.
    pub fn grow(&self, bytes: usize) -> bool {
        self.charge(bytes, self.large)
    }

    /// Charges `bytes` whatever the share (bytes already read, such as
    /// those read past the upgrade request).
    pub fn force(&self, bytes: usize) {
        self.held.set(self.held.get() + bytes);
    }

    fn charge(&self, bytes: usize, limit: usize) -> bool {
        let held = self.held.get() + bytes;
        if held > limit {
            self.refused.set(true);
            self.pace.raise();
            return false;
        }
        self.held.set(held);
        true
    }

    /// Releases `bytes` and wakes the sessions waiting, which try again in
    /// the order they were refused.
    pub fn release(&self, bytes: usize) {
        self.held.set(self.held.get() - bytes);
        if bytes == 0 {
            return;
        }
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.is_empty() {
            // Woken outside the borrow, in case waking polls.
            let woken = std::mem::take(&mut *waiters);
            drop(waiters);
            woken.into_iter().for_each(Waker::wake);
        }
    }

    /// Registers a session that was refused, to be woken on a release.
    pub fn wait(&self, waker: &Waker) {
        self.waiters.borrow_mut().push(waker.clone());
        self.pace.raise();
    }

    /// True while the last [`Budget::tick`] saw sessions refused: the
    /// housekeeping must go on ticking.
    pub fn pressed(&self) -> bool {
        self.refused_since.get().is_some()
    }

    /// Called on every housekeeping tick: true when, on every tick for
    /// [`EVICT_AFTER`], a session was refused or still waits, and one
    /// session should be closed to make room.
    pub fn tick(&self, now: Instant) -> bool {
        // A session still waiting was refused and has not been let in since.
        let refused = self.refused.replace(false) || !self.waiters.borrow().is_empty();
        if !refused {
            self.refused_since.set(None);
            return false;
        }
        let since = *self.refused_since.get().get_or_insert(now);
        self.refused_since.set(Some(since));
        now.duration_since(since) >= EVICT_AFTER
    }
}

/// `--max-buffered-bytes` when it is not set: a quarter of the cgroup's
/// memory limit (64 MiB in a pod limited to 256 MiB, leaving the rest to
/// sessions, pools and the runtime), or this without a limit.
const BUFFERED_WITHOUT_LIMIT: u64 = 256 << 20;

/// Each worker's share of `--max-buffered-bytes` (its default taken from
/// `cgroup_limit`), and a warning if the share had to be raised to hold one
/// frame of `--max-message-size` beside the budget's reserve (else such a
/// frame could never be read).
pub fn buffered_share(
    config: &Config,
    workers: usize,
    cgroup_limit: Option<u64>,
) -> (usize, Option<String>) {
    let total = config
        .max_buffered_bytes
        .or(cgroup_limit.map(|limit| limit / 4))
        .unwrap_or(BUFFERED_WITHOUT_LIMIT);
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    let share = total / workers.max(1);
    // The largest charge a session asks for: a whole largest frame (payload
    // and a 14-byte header) and the next frame's header, in KiB.
    let frame = config
        .max_message_size
        .saturating_add(28)
        .div_ceil(1024)
        .saturating_mul(1024);
    let least = Budget::share_for_frame(frame);
    if share >= least {
        return (share, None);
    }
    let warning = format!(
        "--max-buffered-bytes {total} over {workers} worker(s) leaves less than one \
         --max-message-size frame per worker: using {least} bytes per worker \
         (lower --max-message-size or raise --max-buffered-bytes)"
    );
    (least, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCount;

    #[test]
    fn large_frames_leave_the_reserve_to_pooled_buffers() {
        let budget = Budget::new(80, Rc::default());
        assert!(budget.grow(70));
        assert!(!budget.grow(1), "an eighth is kept back from large frames");
        assert!(budget.take(10));
        assert!(!budget.take(1), "the share is spent");
        assert_eq!(budget.held(), 80);
        budget.force(5);
        assert_eq!(budget.held(), 85);
        budget.release(85);
        assert_eq!(budget.held(), 0);
        let frame = 1000;
        let budget = Budget::new(Budget::share_for_frame(frame), Rc::default());
        assert!(budget.grow(frame), "the share holds one such frame");
    }

    #[test]
    fn waiters_are_woken_by_a_release() {
        let budget = Budget::new(10, Rc::default());
        let (count, waker) = WakeCount::new();
        assert!(budget.take(10));
        assert!(!budget.take(1));
        budget.wait(&waker);
        budget.wait(&waker);
        budget.release(5);
        assert_eq!(count.get(), 2);
        budget.release(5);
        assert_eq!(count.get(), 2, "woken once");
    }

    #[test]
    fn refusals_keep_the_housekeeping_ticking() {
        let pace = Rc::new(Pace::default());
        let budget = Budget::new(10, pace.clone());
        assert!(budget.take(10));
        assert!(!pace.busy(), "a grant needs no tick");
        assert!(!budget.take(1));
        assert!(pace.busy(), "a refusal does");
        pace.lower();
        budget.wait(&crate::testing::WakeCount::new().1);
        assert!(pace.busy(), "so does a waiter");
        assert!(!budget.pressed());
        assert!(!budget.tick(Instant::now()));
        assert!(budget.pressed(), "refused on this tick");
        budget.release(10);
        assert!(!budget.tick(Instant::now()));
        assert!(!budget.pressed(), "no longer");
    }

    #[test]
    fn eviction_is_due_after_refusals_on_every_tick() {
        let budget = Budget::new(10, Rc::default());
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!budget.tick(at(0)), "nothing refused");
        assert!(!budget.take(11));
        assert!(!budget.tick(at(100)));
        assert!(!budget.take(11));
        assert!(!budget.tick(at(600)));
        assert!(!budget.take(11));
        assert!(budget.tick(at(1100)), "refused for a whole second");
        assert!(!budget.tick(at(1200)), "a tick without refusals resets");
        assert!(!budget.take(11));
        assert!(!budget.tick(at(1300)));
    }
}
