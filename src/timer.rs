//! Timers that work on either backend: the handshake timeout, the
//! session's close timeout, the drain timeout, accept back-off and the
//! housekeeping ticks all go through here and never know which one runs.
//!
//! An epoll worker runs no tokio runtime: its own loop
//! ([`crate::io::epoll::Reactor::block_on`]) keeps the worker's timers in a
//! [`Timers`] and wakes them from a timerfd in its epoll instance, so that
//! the worker blocks in one `epoll_wait` with no timeout whatever timers are
//! pending. Everywhere else (io_uring workers, [`crate::standalone`] and the
//! tests on a tokio runtime) the same calls go to tokio's timer. Which one a
//! timer uses is decided when it is first polled, by whether the polling
//! thread runs such a loop.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// The timers of the loop running on this thread, if any.
    static LOCAL: RefCell<Option<Rc<Timers>>> = const { RefCell::new(None) };
}

/// The pending timers of one thread's loop, by deadline.
#[derive(Default)]
pub struct Timers {
    /// Keyed by deadline and a sequence number (two timers may share a
    /// deadline).
    pending: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_seq: Cell<u64>,
    /// Wakers of the timers being fired (kept, so firing never allocates).
    due: RefCell<Vec<Waker>>,
}

impl Timers {
    /// Makes these the current thread's timers until the guard is dropped.
    pub fn enter(self: &Rc<Self>) -> Entered {
        let previous = LOCAL.with(|l| l.replace(Some(self.clone())));
        Entered { previous }
    }

    /// The earliest deadline pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .borrow()
            .first_key_value()
            .map(|((at, _), _)| *at)
    }

    /// Wakes the timers due by `now`; returns how many.
    pub fn fire(&self, now: Instant) -> usize {
        let mut due = self.due.borrow_mut();
        {
            let mut pending = self.pending.borrow_mut();
            while let Some(entry) = pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
        }
        // Woken outside the borrow of `pending`: a waker may drop a timer.
        // (Removing entries one by one keeps the map's root node: a timer
        // that comes and goes every tick allocates nothing.)
        let n = due.len();
        due.drain(..).for_each(Waker::wake);
        n
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// No timer is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.borrow().is_empty()
    }

    fn register(&self, at: Instant, seq: &mut Option<u64>, waker: &Waker) {
        let mut pending = self.pending.borrow_mut();
        if let Some(s) = *seq
            && let Some(w) = pending.get_mut(&(at, s))
        {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
            return;
        }
        let s = self.next_seq.get();
        self.next_seq.set(s + 1);
        pending.insert((at, s), waker.clone());
        *seq = Some(s);
    }

    fn cancel(&self, at: Instant, seq: u64) {
        self.pending.borrow_mut().remove(&(at, seq));
    }
}

/// Restores the thread's previous timers when dropped.
pub struct Entered {
    previous: Option<Rc<Timers>>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        LOCAL.with(|l| *l.borrow_mut() = previous);
    }
}

/// Whether the current thread's timers are a loop's own (not tokio's).
pub fn is_local() -> bool {
    LOCAL.with(|l| l.borrow().is_some())
}

/// A future that completes at a deadline. Which timers it joins is decided
/// when it is first polled.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Not polled yet.
    New,
    /// On the thread's loop; once registered, the sequence number of its
    /// entry.
    Local(Option<u64>),
    /// tokio's.
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        state: State::New,
    }
}

/// Completes `duration` from now.
pub fn sleep(duration: Duration) -> Sleep {
    let now = Instant::now();
    sleep_until(
        now.checked_add(duration)
            .unwrap_or(now + Duration::from_secs(1 << 32)),
    )
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let at = this.deadline;
        if let State::New = this.state {
            this.state = if is_local() {
                State::Local(None)
            } else {
                State::Tokio(Box::pin(tokio::time::sleep_until(at.into())))
            };
        }
        let seq = match &mut this.state {
            State::Tokio(sleep) => return sleep.as_mut().poll(cx),
            State::Local(seq) => seq,
            State::New => unreachable!("resolved above"),
        };
        if Instant::now() >= at {
            if let Some(s) = seq.take() {
                with_local(|t| t.cancel(at, s));
            }
            return Poll::Ready(());
        }
        let registered = with_local(|t| t.register(at, seq, cx.waker()));
        assert!(
            registered.is_some(),
            "a worker's timer was polled off its worker's thread"
        );
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let State::Local(Some(seq)) = self.state {
            with_local(|t| t.cancel(self.deadline, seq));
        }
    }
}

/// Runs `f` on the current thread's loop timers, if it has them (and they
/// are not being torn down).
fn with_local<T>(f: impl FnOnce(&Timers) -> T) -> Option<T> {
    LOCAL
        .try_with(|l| l.borrow().as_ref().map(|t| f(t)))
        .ok()
        .flatten()
}

/// `f`'s output, or `None` if `duration` passed first.
pub async fn timeout<F: Future>(duration: Duration, f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut sleep = sleep(duration);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut sleep).poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use crate::testing::WakeCount;

    use super::*;

    #[test]
    fn local_timers_fire_in_deadline_order_and_cancel_on_drop() {
        let timers = Rc::new(Timers::default());
        let _entered = timers.enter();
        let (count, waker) = WakeCount::new();
        let mut cx = Context::from_waker(&waker);
        let start = Instant::now();
        let mut a = sleep_until(start + Duration::from_secs(10));
        let mut b = sleep_until(start + Duration::from_secs(20));
        let mut c = sleep_until(start + Duration::from_secs(30));
        for s in [&mut a, &mut b, &mut c] {
            assert!(Pin::new(s).poll(&mut cx).is_pending());
        }
        assert_eq!(timers.len(), 3);
        // Polling again keeps one entry.
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert_eq!(timers.len(), 3);
        assert_eq!(
            timers.next_deadline(),
            Some(start + Duration::from_secs(10))
        );
        drop(b);
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.fire(start + Duration::from_secs(15)), 1);
        assert_eq!(count.get(), 1);
        assert_eq!(
            timers.next_deadline(),
            Some(start + Duration::from_secs(30))
        );
        drop(c);
        assert!(timers.is_empty());
    }

    #[test]
    fn a_past_deadline_is_ready_at_once() {
        let timers = Rc::new(Timers::default());
        let _entered = timers.enter();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut s = sleep(Duration::ZERO);
        assert!(Pin::new(&mut s).poll(&mut cx).is_ready());
        assert!(timers.is_empty());
    }

    #[test]
    fn without_a_loop_timers_are_tokios() {
        assert!(!is_local());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut s = sleep(Duration::from_secs(5));
            assert!(futures_util::poll!(&mut s).is_pending());
            assert!(matches!(s.state, State::Tokio(_)));
            assert_eq!(
                timeout(Duration::from_millis(1), std::future::pending::<()>()).await,
                None
            );
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Some(7));
        });
    }
}
