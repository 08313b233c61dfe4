//! A worker's table of its open sessions: their wakers, and the ticks the
//! worker delivers through them (drain, idle and write-stall checks, buffer
//! reclaim, the budget's evictions, the least message rate and the
//! connection lifetime).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::sync::Notify;

/// One worker's sessions: a table of their wakers, through which the worker
/// tells them to close (drain) or to look at their timers: whether their
/// peer went quiet ([`Tick::IDLE`]) or stopped reading ([`Tick::STALL`]).
///
/// This replaces a timer and a notification future per session (~176 bytes
/// each): a session holds only its key; the table holds its waker and two
/// flags (~24 bytes).
///
/// It also keeps the list of sessions allowed to hold on to an empty read
/// buffer between messages ([`LocalSessions::try_hold`]), which
/// [`LocalSessions::reclaim`] tells to give their buffers back.
#[derive(Debug, Default)]
pub struct LocalSessions {
    table: RefCell<Slab<Entry>>,
    /// Whole seconds since the worker started, plus one (0 means "never"),
    /// set by the worker's housekeeping: the clock of [`Entry::since`].
    clock: Cell<u32>,
    closing: Cell<bool>,
    all_closed: Notify,
    holders: RefCell<Vec<usize>>,
    /// Wakers collected by the periodic ticks ([`LocalSessions::tick_all`],
    /// [`LocalSessions::reclaim`]), kept so that a tick does not allocate.
    to_wake: RefCell<Vec<Waker>>,
    /// `--max-lifetime`, if set.
    lifetime: Option<Lifetime>,
    /// Raised when a session starts to hold a buffer the housekeeping must
    /// reclaim.
    pace: Rc<Pace>,
}

/// Most sessions per worker that keep an empty read buffer between
/// messages: what it may cost is bounded at this many buffers (1 MiB of
/// 8 KiB buffers per worker).
pub const HOLDERS_MAX: usize = 128;

#[derive(Debug, Default)]
struct Entry {
    waker: Option<Waker>,
    ticks: u8,
    /// Refused by the worker's budget of buffered bytes; not reading.
    waiting: bool,
    /// KiB of the incomplete frame buffered at the last [`Tick::PROGRESS`].
    mark: u16,
    /// [`LocalSessions::clock`] when the incomplete frame the session
    /// buffers began to arrive, or 0 if it buffers none.
    since: u32,
    /// [`LocalSessions::clock`] at which the session's lifetime ends, or 0
    /// for none (or already told). Its 4 bytes make an entry 32 bytes
    /// instead of 24: the cost of a lifetime checked by one scan of the
    /// table a second, instead of a timer per session or a wake of every
    /// session to look at its age.
    deadline: u32,
}

/// Periodic checks delivered to sessions, as bits.
#[derive(Debug, Clone, Copy)]
pub struct Tick;

impl Tick {
    /// An `--idle-timeout` period passed.
    pub const IDLE: u8 = 1;
    /// A `--write-timeout` period passed.
    pub const STALL: u8 = 2;
    /// Give an empty read buffer back to the pool ([`LocalSessions::reclaim`]).
    pub const RECLAIM: u8 = 4;
    /// Close with 1013 to make room in the worker's budget of buffered bytes
    /// ([`LocalSessions::evict_oldest_partial`]).
    pub const EVICT: u8 = 8;
    /// Check that the incomplete frame buffered makes progress
    /// (`--min-message-rate`).
    pub const PROGRESS: u8 = 16;
    /// The drain began `--close-timeout` ago: a session still waiting for
    /// its peer to read a reply gives up (no Close frame could get through).
    pub const ABANDON: u8 = 32;
    /// The session outlived `--max-lifetime` (and its jitter): Close 1001,
    /// as on drain ([`LocalSessions::expire`]).
    pub const LIFETIME: u8 = 64;
}

/// `--max-lifetime` in whole seconds of a worker's clock, and its random part.
#[derive(Debug)]
pub struct Lifetime {
    secs: u32,
    /// Most seconds added to `secs`, drawn per session.
    jitter: u32,
    /// xorshift64 state: the jitter needs spread, not unpredictability.
    rng: Cell<u64>,
}

impl Lifetime {
    /// `lifetime` (rounded up to whole seconds) plus up to `jitter` of it;
    /// `None` if `lifetime` is zero. `seed` makes workers draw differently.
    pub fn new(lifetime: Duration, jitter: f64, seed: u64) -> Option<Lifetime> {
        if lifetime.is_zero() {
            return None;
        }
        let secs = lifetime.as_secs_f64().ceil().min(f64::from(u32::MAX / 4));
        Some(Lifetime {
            secs: secs as u32,
            jitter: (secs * jitter.clamp(0.0, 1.0)) as u32,
            // Never zero (xorshift's one fixed point).
            rng: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        })
    }

    /// A session's lifetime in seconds: `secs` plus 0 to `jitter`.
    fn draw(&self) -> u32 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        self.secs + (x % (u64::from(self.jitter) + 1)) as u32
    }
}

/// Whether a worker's housekeeping must run its frequent jobs (buffer
/// reclaim, the budget's checks): raised when there is something for them
/// to do, lowered by them when there is not. An idle worker then wakes once
/// a second, not ten times.
#[derive(Debug, Default)]
pub struct Pace {
    busy: Cell<bool>,
    /// The housekeeping task, waiting for the pace to rise.
    waker: RefCell<Option<Waker>>,
}

impl Pace {
    /// True while the frequent jobs run.
    pub fn busy(&self) -> bool {
        self.busy.get()
    }

    /// There is work for the frequent jobs: wakes the housekeeping if they
    /// were not running.
    #[inline]
    pub fn raise(&self) {
        if !self.busy.replace(true)
            && let Some(waker) = self.waker.borrow_mut().take()
        {
            waker.wake();
        }
    }

    /// The frequent jobs found nothing to do.
    pub fn lower(&self) {
        self.busy.set(false);
    }

    /// Resolves once the pace is raised.
    pub fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.busy.get() {
                return std::task::Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
    }
}

impl LocalSessions {
    /// A table whose sessions live at most `lifetime`, and whose holders
    /// raise `pace`.
    pub fn new(lifetime: Option<Lifetime>, pace: Rc<Pace>) -> Self {
        LocalSessions {
            lifetime,
            pace,
            ..Default::default()
        }
    }

    /// Sessions open on this worker.
    pub fn open(&self) -> usize {
        self.table.borrow().len()
    }

    /// Adds a session; returns its key. Pair with [`LocalSessions::leave`].
    pub fn enter(&self) -> usize {
        let deadline = match &self.lifetime {
            Some(lifetime) => self.clock().saturating_add(lifetime.draw()),
            None => 0,
        };
        self.table.borrow_mut().insert(Entry {
            deadline,
            ..Entry::default()
        })
    }

    /// Removes a session.
    pub fn leave(&self, key: usize) {
        let mut table = self.table.borrow_mut();
        table.remove(key);
        if table.is_empty() {
            self.all_closed.notify_one();
        }
    }

    /// Records the waker of session `key`, which is about to wait.
    #[inline]
    pub fn park(&self, key: usize, cx: &Context<'_>) {
        let mut table = self.table.borrow_mut();
        let entry = &mut table[key];
        match &entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
    }

    /// Wakes session `key` (if it has waited before).
    #[inline]
    pub fn wake(&self, key: usize) {
        if let Some(Entry {
            waker: Some(waker), ..
        }) = self.table.borrow().get(key)
        {
            waker.wake_by_ref();
        }
    }

    /// The ticks ([`Tick`] bits) that reached session `key` since it last asked.
    #[inline]
    pub fn take_ticks(&self, key: usize) -> u8 {
        std::mem::take(&mut self.table.borrow_mut()[key].ticks)
    }

    /// True once the worker has told its sessions to close.
    #[inline]
    pub fn closing(&self) -> bool {
        self.closing.get()
    }

    /// Marks `tick` (a [`Tick`] bit) on every session and wakes them to look at it.
    pub fn tick_all(&self, tick: u8) {
        let mut wakers = self.to_wake.borrow_mut();
        wakers.extend(self.table.borrow_mut().iter_mut().filter_map(|(_, e)| {
            e.ticks |= tick;
            e.waker.clone()
        }));
        // Woken outside the borrow: waking may poll nothing here (tasks are
        // only scheduled), but keep the table free regardless.
        wakers.drain(..).for_each(Waker::wake);
    }

    /// Lets session `key` keep its empty read buffer until the next
    /// [`LocalSessions::reclaim`], if fewer than [`HOLDERS_MAX`] sessions of
    /// this worker do. A busy session then does not hand its buffer back to
    /// the pool after every message and take it again for the next (10 % of
    /// the instructions of a 20-byte echo under callgrind: 1,962 -> 1,770).
    pub fn try_hold(&self, key: usize) -> bool {
        let mut holders = self.holders.borrow_mut();
        if holders.len() >= HOLDERS_MAX {
            return false;
        }
        if holders.is_empty() {
            self.pace.raise();
        }
        holders.push(key);
        true
    }

    /// Tells the sessions let hold a buffer since the last call to give it
    /// back (a [`Tick::RECLAIM`]); the busy ones take one again at their next
    /// message. Keys of sessions that have left since are skipped (or reach
    /// the session that took the key over, which only looks at its buffer).
    ///
    /// Returns how many sessions held a buffer.
    pub fn reclaim(&self) -> usize {
        let mut wakers = self.to_wake.borrow_mut();
        {
            let mut holders = self.holders.borrow_mut();
            let mut table = self.table.borrow_mut();
            wakers.extend(holders.drain(..).filter_map(|key| {
                let entry = table.get_mut(key)?;
                entry.ticks |= Tick::RECLAIM;
                entry.waker.clone()
            }));
        }
        // Woken outside the table's borrow; the vector keeps its capacity.
        let held = wakers.len();
        wakers.drain(..).for_each(Waker::wake);
        held
    }

    /// Tells the sessions whose lifetime has ended by the clock to close
    /// ([`Tick::LIFETIME`]), each once.
    pub fn expire(&self) {
        if self.lifetime.is_none() {
            return;
        }
        let now = self.clock();
        let mut wakers = self.to_wake.borrow_mut();
        wakers.extend(self.table.borrow_mut().iter_mut().filter_map(|(_, e)| {
            if e.deadline == 0 || e.deadline > now {
                return None;
            }
            e.deadline = 0;
            e.ticks |= Tick::LIFETIME;
            e.waker.clone()
        }));
        wakers.drain(..).for_each(Waker::wake);
    }

    /// The clock of [`LocalSessions::set_partial`]: whole seconds since the
    /// worker started, plus one.
    pub fn clock(&self) -> u32 {
        self.clock.get().max(1)
    }

    /// Sets the clock (the worker's housekeeping, every tick).
    pub fn set_clock(&self, secs: u32) {
        self.clock.set(secs);
    }

    /// Records that session `key` began to buffer an incomplete frame at
    /// `since` (a [`LocalSessions::clock`] value), or, with 0, that it
    /// buffers none.
    pub fn set_partial(&self, key: usize, since: u32) {
        let mut table = self.table.borrow_mut();
        let entry = &mut table[key];
        entry.since = since;
        entry.mark = 0;
    }

    /// When session `key`'s incomplete frame began to arrive, and the KiB of
    /// it buffered at the last progress check.
    pub fn progress(&self, key: usize) -> (u32, u16) {
        let table = self.table.borrow();
        (table[key].since, table[key].mark)
    }

    /// Records the KiB of session `key`'s incomplete frame buffered now.
    pub fn set_mark(&self, key: usize, kib: u16) {
        self.table.borrow_mut()[key].mark = kib;
    }

    /// Records whether session `key` waits for the budget (and so is not
    /// read, and not held to the progress check).
    pub fn set_waiting(&self, key: usize, waiting: bool) {
        self.table.borrow_mut()[key].waiting = waiting;
    }

    /// Marks `tick` on the sessions that buffer an incomplete frame and are
    /// not waiting for the budget, and wakes them to look at it.
    pub fn tick_partial(&self, tick: u8) {
        let mut wakers = self.to_wake.borrow_mut();
        wakers.extend(self.table.borrow_mut().iter_mut().filter_map(|(_, e)| {
            if e.since == 0 || e.waiting {
                return None;
            }
            e.ticks |= tick;
            e.waker.clone()
        }));
        wakers.drain(..).for_each(Waker::wake);
    }

    /// Tells the session whose incomplete frame is oldest to close
    /// ([`Tick::EVICT`]), preferring one that holds its buffer to one that
    /// waits for the budget (closing a waiter frees only a pooled buffer).
    /// False if no session buffers an incomplete frame.
    pub fn evict_oldest_partial(&self) -> bool {
        let waker = {
            let mut table = self.table.borrow_mut();
            let oldest = table
                .iter()
                .filter(|(_, e)| e.since != 0 && e.ticks & Tick::EVICT == 0)
                .min_by_key(|(_, e)| (e.waiting, e.since))
                .map(|(key, _)| key);
            let Some(key) = oldest else {
                return false;
            };
            let entry = &mut table[key];
            entry.ticks |= Tick::EVICT;
            entry.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Tells every session on this worker to close, then waits until all have.
    pub async fn close_all(&self) {
        self.closing.set(true);
        let wakers: Vec<Waker> = self
            .table
            .borrow()
            .iter()
            .filter_map(|(_, e)| e.waker.clone())
            .collect();
        wakers.into_iter().for_each(Waker::wake);
        while self.open() > 0 {
            self.all_closed.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCount;

    #[test]
    fn ticks_reach_parked_sessions_once() {
        let sessions = LocalSessions::default();
        let (count, waker) = WakeCount::new();
        let a = sessions.enter();
        let b = sessions.enter();
        sessions.park(a, &Context::from_waker(&waker));
        sessions.tick_all(Tick::IDLE);
        sessions.tick_all(Tick::STALL);
        assert_eq!(count.get(), 2, "only parked sessions are woken");
        assert_eq!(sessions.take_ticks(a), Tick::IDLE | Tick::STALL);
        assert_eq!(sessions.take_ticks(a), 0);
        assert_eq!(sessions.take_ticks(b), Tick::IDLE | Tick::STALL);
        sessions.leave(a);
        sessions.leave(b);
        assert_eq!(sessions.open(), 0);
    }

    #[test]
    fn lifetimes_end_once_at_their_jittered_deadline() {
        let lifetime = Lifetime::new(Duration::from_millis(9500), 0.5, 7);
        let sessions = LocalSessions::new(lifetime, Rc::default());
        sessions.set_clock(1);
        let (count, waker) = WakeCount::new();
        let keys: Vec<usize> = (0..200).map(|_| sessions.enter()).collect();
        for &key in &keys {
            sessions.park(key, &Context::from_waker(&waker));
        }
        let deadlines: Vec<u32> = keys
            .iter()
            .map(|&k| sessions.table.borrow()[k].deadline)
            .collect();
        // 9.5 s is 10 whole seconds, plus 0 to 5 of jitter.
        assert!(
            deadlines.iter().all(|d| (11..=16).contains(d)),
            "{deadlines:?}"
        );
        assert!(deadlines.contains(&11) && deadlines.contains(&16), "spread");
        sessions.set_clock(10);
        sessions.expire();
        assert_eq!(count.get(), 0, "none yet");
        sessions.set_clock(13);
        sessions.expire();
        let due = deadlines.iter().filter(|&&d| d <= 13).count();
        assert_eq!(count.get(), due);
        for (&key, &d) in keys.iter().zip(&deadlines) {
            let tick = if d <= 13 { Tick::LIFETIME } else { 0 };
            assert_eq!(sessions.take_ticks(key), tick);
        }
        sessions.expire();
        assert_eq!(count.get(), due, "each is told once");
        sessions.set_clock(16);
        sessions.expire();
        assert_eq!(count.get(), keys.len());
        let without = LocalSessions::default();
        let key = without.enter();
        without.set_clock(u32::MAX - 1);
        without.expire();
        assert_eq!(without.take_ticks(key), 0, "no lifetime, no end");
        assert!(Lifetime::new(Duration::ZERO, 0.1, 1).is_none());
    }

    #[test]
    fn the_first_holder_raises_the_pace() {
        let pace = Rc::new(Pace::default());
        let sessions = LocalSessions::new(None, pace.clone());
        let (a, b) = (sessions.enter(), sessions.enter());
        assert!(sessions.try_hold(a));
        assert!(pace.busy());
        pace.lower();
        assert!(sessions.try_hold(b));
        assert!(!pace.busy(), "only the first since the last reclaim");
        assert_eq!(sessions.reclaim(), 0, "neither has parked: nothing to wake");
        sessions.park(a, &Context::from_waker(&WakeCount::new().1));
        assert!(sessions.try_hold(a));
        assert!(pace.busy());
        assert_eq!(sessions.reclaim(), 1);
    }

    #[test]
    fn holders_are_bounded_and_reclaimed_once() {
        let sessions = LocalSessions::default();
        let (count, waker) = WakeCount::new();
        let keys: Vec<usize> = (0..HOLDERS_MAX + 1).map(|_| sessions.enter()).collect();
        for &key in &keys[..HOLDERS_MAX] {
            sessions.park(key, &Context::from_waker(&waker));
            assert!(sessions.try_hold(key));
        }
        assert!(!sessions.try_hold(keys[HOLDERS_MAX]), "bounded");
        sessions.leave(keys[0]);
        sessions.reclaim();
        assert_eq!(count.get(), HOLDERS_MAX - 1);
        assert_eq!(sessions.take_ticks(keys[1]), Tick::RECLAIM);
        assert_eq!(sessions.take_ticks(keys[HOLDERS_MAX]), 0);
        sessions.reclaim();
        assert_eq!(count.get(), HOLDERS_MAX - 1, "once");
        assert!(sessions.try_hold(keys[HOLDERS_MAX]), "room again");
    }

    #[test]
    fn the_oldest_incomplete_frame_is_evicted_first_and_once() {
        let sessions = LocalSessions::default();
        let (count, waker) = WakeCount::new();
        let keys: Vec<usize> = (0..4).map(|_| sessions.enter()).collect();
        for &key in &keys {
            sessions.park(key, &Context::from_waker(&waker));
        }
        assert!(!sessions.evict_oldest_partial(), "nothing buffered");
        sessions.set_partial(keys[0], 5);
        sessions.set_partial(keys[1], 3);
        sessions.set_partial(keys[2], 1);
        // The oldest waits for the budget: it holds only a pooled buffer.
        sessions.set_waiting(keys[2], true);
        let evicted = |sessions: &LocalSessions| {
            keys.iter()
                .map(|&k| sessions.table.borrow()[k].ticks & Tick::EVICT != 0)
                .collect::<Vec<_>>()
        };
        assert!(sessions.evict_oldest_partial());
        assert_eq!(evicted(&sessions), [false, true, false, false]);
        assert!(sessions.evict_oldest_partial(), "not the same one twice");
        assert_eq!(evicted(&sessions), [true, true, false, false]);
        assert!(sessions.evict_oldest_partial());
        assert_eq!(
            evicted(&sessions),
            [true, true, true, false],
            "then waiters"
        );
        assert!(!sessions.evict_oldest_partial(), "the last buffers nothing");
        assert_eq!(count.get(), 3);
    }

    #[test]
    fn progress_ticks_reach_only_sessions_reading_an_incomplete_frame() {
        let sessions = LocalSessions::default();
        let (count, waker) = WakeCount::new();
        let keys: Vec<usize> = (0..3).map(|_| sessions.enter()).collect();
        for &key in &keys {
            sessions.park(key, &Context::from_waker(&waker));
        }
        sessions.set_partial(keys[0], 2);
        sessions.set_partial(keys[1], 2);
        sessions.set_waiting(keys[1], true);
        sessions.set_mark(keys[0], 7);
        assert_eq!(sessions.progress(keys[0]), (2, 7));
        sessions.tick_partial(Tick::PROGRESS);
        assert_eq!(sessions.take_ticks(keys[0]), Tick::PROGRESS);
        assert_eq!(sessions.take_ticks(keys[1]), 0, "waiting: not read");
        assert_eq!(sessions.take_ticks(keys[2]), 0, "nothing buffered");
        assert_eq!(count.get(), 1);
        sessions.set_partial(keys[0], 9);
        assert_eq!(
            sessions.progress(keys[0]),
            (9, 0),
            "a new frame starts a new mark"
        );
    }
}
