//! A periodic tick for a worker's housekeeping, from a timerfd.
//!
//! On an epoll worker the loop's own timers ([`crate::timer`]) already fire
//! from a timerfd of the loop, so the ticker is one of them. On a tokio
//! runtime (io_uring):
//!
//! tokio's timer wheel parks the worker in `epoll_wait` with a timeout
//! whenever any tokio timer is pending, and a periodic one always is: each
//! sleep then arms and cancels a kernel hrtimer and reads the clock twice.
//! At low load every message is a wake-up, so that is paid per message. A
//! timerfd is an ordinary readable descriptor in tokio's I/O driver: with no
//! tokio timer pending (no handshake or closing handshake in progress), the
//! worker parks without a timeout and the kernel's timer stays armed between
//! ticks. (Open loop, 100 connections × 100 messages/s on epoll:
//! `hrtimer_start` per message 0.98 → 0.007, and ~2 % less server CPU per
//! message in `perf record` samples, which is within this VM's noise in
//! CPU time.)
//!
//! Falls back to a tokio interval when no timerfd can be created (out of
//! file descriptors at startup) or reading it fails: the ticks matter more
//! than their cost.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Ticks every `period`, the first one period after it is made.
pub enum Ticker {
    /// On the epoll loop: the next tick's deadline, and the period.
    Local(Instant, Duration),
    /// A periodic timerfd watched by tokio's I/O driver, and its period.
    Fd(AsyncFd<OwnedFd>, Duration),
    /// tokio's own interval, when no timerfd could be made (or reading it
    /// failed).
    Tokio(tokio::time::Interval),
}

impl Ticker {
    /// A ticker on the epoll loop's timers, or else with a timerfd if one
    /// can be made (then it must be called on a tokio runtime with I/O and
    /// time enabled); `period` must not be zero.
    pub fn new(period: Duration) -> Ticker {
        assert!(!period.is_zero(), "a ticker needs a period");
        if crate::timer::is_local() {
            return Ticker::Local(Instant::now() + period, period);
        }
        match timerfd(period) {
            Ok(fd) => Ticker::Fd(fd, period),
            Err(e) => {
                tracing::warn!(error = %e, "no timerfd for housekeeping ticks: using tokio's timer");
                Ticker::tokio(period)
            }
        }
    }

    /// The period it ticks at.
    pub fn period(&self) -> Duration {
        match self {
            Ticker::Local(_, period) | Ticker::Fd(_, period) => *period,
            Ticker::Tokio(interval) => interval.period(),
        }
    }

    /// Ticks every `period` from now on, the next one `period` from now
    /// (`period` must not be zero).
    pub fn set_period(&mut self, period: Duration) {
        assert!(!period.is_zero(), "a ticker needs a period");
        match self {
            Ticker::Local(next, every) => (*next, *every) = (Instant::now() + period, period),
            Ticker::Fd(fd, every) => match arm(fd.get_ref(), period) {
                Ok(()) => *every = period,
                Err(e) => {
                    tracing::warn!(error = %e, "housekeeping timerfd failed: using tokio's timer");
                    *self = Ticker::tokio(period);
                }
            },
            Ticker::Tokio(_) => *self = Ticker::tokio(period),
        }
    }

    fn tokio(period: Duration) -> Ticker {
        let start = tokio::time::Instant::now() + period;
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker::Tokio(interval)
    }

    /// Waits for the next tick. Ticks missed while the worker was busy are
    /// merged into one.
    pub async fn tick(&mut self) {
        let (fd, period) = match self {
            Ticker::Local(next, period) => {
                crate::timer::sleep_until(*next).await;
                advance(next, *period, Instant::now());
                return;
            }
            Ticker::Tokio(interval) => {
                interval.tick().await;
                return;
            }
            Ticker::Fd(fd, period) => (fd, *period),
        };
        let failure = loop {
            let Ok(mut ready) = fd.readable().await else {
                // The runtime is shutting down: no more ticks.
                return std::future::pending().await;
            };
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(Ok(8)) => return,
                // EAGAIN: the readiness was stale (`try_io` cleared it).
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A timerfd read is 8 bytes or fails; neither should happen
                // here, and retrying a persistent failure would spin.
                Ok(Ok(n)) => break io::Error::other(format!("read {n} bytes")),
                Ok(Err(e)) => break e,
            }
        };
        tracing::warn!(error = %failure, "housekeeping timerfd failed: using tokio's timer");
        *self = Ticker::tokio(period);
    }
}

/// Moves `due` on by `period` after it came at `now`; periods missed while
/// the worker was busy are not made up for (the next is one period from
/// `now`).
pub fn advance(due: &mut Instant, period: Duration, now: Instant) {
    *due += period;
    if *due <= now {
        *due = now + period;
    }
}

/// A non-blocking monotonic timerfd that expires every `period`, first one
/// `period` from now, registered with the current tokio runtime.
fn timerfd(period: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    arm(&fd, period)?;
    // SAFETY: the `OwnedFd` stays open, and the same descriptor, for as long
    // as the `AsyncFd` owns it; nothing else closes it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// Makes timerfd `fd` expire every `period`, the first time `period` from now.
fn arm(fd: &OwnedFd, period: Duration) -> io::Result<()> {
    let every = Timespec {
        tv_sec: i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: period.subsec_nanos().into(),
    };
    let spec = Itimerspec {
        it_interval: every,
        it_value: every,
    };
    timerfd_settime(fd, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    fn on_runtime(test: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    }

    #[test]
    fn ticks_every_period() {
        on_runtime(async {
            let period = Duration::from_millis(20);
            let start = Instant::now();
            let mut ticker = Ticker::new(period);
            assert!(matches!(ticker, Ticker::Fd(..)));
            for _ in 0..5 {
                ticker.tick().await;
            }
            let took = start.elapsed();
            assert!(took >= period * 5, "5 ticks in {took:?}");
        });
    }

    #[test]
    fn the_period_changes_from_the_next_tick() {
        on_runtime(async {
            let mut ticker = Ticker::new(Duration::from_secs(3600));
            ticker.set_period(Duration::from_millis(20));
            assert_eq!(ticker.period(), Duration::from_millis(20));
            let start = Instant::now();
            ticker.tick().await;
            let took = start.elapsed();
            assert!(took < Duration::from_secs(10), "ticked after {took:?}");
            assert!(matches!(ticker, Ticker::Fd(..)), "still the timerfd");
        });
    }

    #[test]
    fn missed_ticks_are_merged() {
        on_runtime(async {
            let period = Duration::from_millis(10);
            let mut ticker = Ticker::new(period);
            // Busy for five periods: one tick is due at once, not five.
            std::thread::sleep(period * 5);
            let start = Instant::now();
            for _ in 0..3 {
                ticker.tick().await;
            }
            let took = start.elapsed();
            assert!(took >= period, "3 ticks in {took:?} after 5 periods missed");
        });
    }
}
