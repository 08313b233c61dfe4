//! One worker: a thread with its own runtime, listener and sessions.
//!
//! Connections never leave the worker that accepted them.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::context::{Shared, Worker};
use crate::handler::Handler;
use crate::io::{self, Stream};
use crate::sessions::{Pace, Tick};
use crate::ticker::Ticker;
use crate::{http, session};

impl<H: Handler> io::Handler for Rc<Worker<H>> {
    fn connection<S: Stream>(&self, io: S) -> impl Future<Output = ()> + 'static {
        self.metrics.accepted.add(1);
        connection(io, self.clone())
    }
}

/// A connection's life: the HTTP phase, then (if upgraded) the session, in
/// one task.
///
/// An idle connection costs this future, so it holds no more than the
/// session and a few bytes (`tests::connection_task_stays_small`): the HTTP
/// phase is boxed (and freed when it ends), and nothing else is kept across
/// the session (the arguments go into the box before the future is made,
/// since an async fn would keep them for its whole life). One task instead
/// of a second one spawned for the session saves a task allocation and a
/// trip through the scheduler on every handshake.
fn connection<S: Stream, H: Handler>(
    io: S,
    worker: Rc<Worker<H>>,
) -> impl Future<Output = ()> + 'static {
    let http = Box::pin(http::serve(io, worker));
    async move {
        let Some(session) = http.await.map(start) else {
            return;
        };
        // Awaited through a pinned reference: awaiting `session` by value
        // would give the future a second slot the size of `Session`.
        std::pin::pin!(session).await;
    }
}

/// Serves HTTP on a fresh connection until it closes (`None`) or becomes a
/// WebSocket session, returned ready to run.
pub(crate) async fn upgrade<S: Stream, H: Handler>(
    io: S,
    worker: &Rc<Worker<H>>,
) -> Option<session::Session<S, H>> {
    // Boxed so the HTTP phase's state is not part of the caller's future.
    Box::pin(http::serve(io, worker.clone())).await.map(start)
}

/// The session on a connection that completed the handshake.
fn start<S: Stream, H: Handler>(up: http::Upgraded<S, H>) -> session::Session<S, H> {
    session::Session::new(up.io, &up.read_ahead, up.slot, up.state, up.deflate)
}

/// Runs worker `id` on this thread until the drain completes.
pub(crate) fn run<H: Handler>(
    id: usize,
    runtime: &io::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    handler: H,
) -> std::io::Result<()> {
    runtime.block_on(async move {
        let worker = Worker::new(shared.clone(), id, handler);
        // The accept loop ends only on a setup error, which ends the worker.
        let (failed, accept) = tokio::sync::oneshot::channel();
        let accepting = io::accept_loop(runtime, listener, worker.clone());
        runtime.spawn(async move {
            if let Err(e) = accepting.await {
                let _ = failed.send(e);
            }
        });
        let mut jobs: Vec<Job> = Vec::new();
        for (period, tick) in [
            (shared.config.idle_timeout, Tick::IDLE),
            (shared.config.write_timeout, Tick::STALL),
        ] {
            if !period.is_zero() {
                let worker = worker.clone();
                jobs.push(Job::always(period, move || worker.sessions.tick_all(tick)));
            }
        }
        let started = Instant::now();
        let clock = move |w: &Worker<H>, now: Instant| {
            let secs = now.duration_since(started).as_secs();
            w.sessions
                .set_clock(u32::try_from(secs).unwrap_or(u32::MAX - 1) + 1);
        };
        // While sessions hold buffers or the budget refuses: give the
        // buffers back, and close the oldest incomplete frame if the
        // refusals go on. With neither, the pace drops (raised again by the
        // next holder or refusal).
        let w = worker.clone();
        jobs.push(Job::busy(crate::buffers::RECLAIM_EVERY, move || {
            let now = Instant::now();
            clock(&w, now);
            let held = w.sessions.reclaim();
            if w.budget.tick(now) {
                w.sessions.evict_oldest_partial();
            }
            if held == 0 && !w.budget.pressed() {
                w.pace.lower();
            }
        }));
        if shared.config.min_message_rate > 0 {
            let w = worker.clone();
            jobs.push(Job::always(crate::session::PROGRESS_EVERY, move || {
                w.sessions.tick_partial(Tick::PROGRESS)
            }));
        }
        let w = worker.clone();
        jobs.push(Job::always(crate::memory::COLLECT_EVERY, move || {
            clock(&w, Instant::now());
            w.sessions.expire();
            let held = w.budget.held() as u64;
            w.metrics.buffered_bytes.store(held, Ordering::Relaxed);
            w.buffers.trim();
            w.topics.trim();
            crate::memory::collect();
        }));
        runtime.spawn(housekeeping(jobs, worker.pace.clone()));
        // What other threads publish for this worker's subscribers.
        let w = worker.clone();
        runtime.spawn(async move { w.topics.run_inbox(&w.sessions).await });
        tokio::select! {
            () = shared.drain.started() => {}
            Ok(e) = accept => return Err(e),
        }
        let open = worker.sessions.open();
        tracing::debug!(worker = id, open, "draining");
        // A session whose reply waits on a peer that does not read cannot
        // close by itself (with --write-timeout 0s nothing else ends it):
        // after --close-timeout it is abandoned, so that one such peer does
        // not hold the drain to --drain-timeout.
        let w = worker.clone();
        let close_timeout = shared.config.close_timeout;
        runtime.spawn(async move {
            crate::timer::sleep(close_timeout).await;
            w.sessions.tick_all(Tick::ABANDON);
        });
        let timeout = shared.config.drain_timeout;
        if crate::timer::timeout(timeout, worker.sessions.close_all())
            .await
            .is_none()
        {
            tracing::warn!(
                worker = id,
                open = worker.sessions.open(),
                "drain timeout: closing remaining sessions"
            );
        }
        Ok(())
    })
}

/// Periodic work of a worker.
struct Job {
    period: Duration,
    /// Runs only while the worker's [`Pace`] is raised.
    busy_only: bool,
    run: Box<dyn Fn()>,
}

impl Job {
    /// Runs every `period` for as long as the worker runs.
    fn always(period: Duration, run: impl Fn() + 'static) -> Job {
        let run = Box::new(run);
        Job {
            period,
            busy_only: false,
            run,
        }
    }

    /// Runs every `period` while the pace is raised (and lowers it when it
    /// has nothing to do).
    fn busy(period: Duration, run: impl Fn() + 'static) -> Job {
        Job {
            busy_only: true,
            ..Job::always(period, run)
        }
    }
}

/// Runs each job every its period, the first time one period from now (a
/// busy-only job: one period after the pace rose), for as long as the
/// worker runs: all from one [`Ticker`] at the shortest period of the jobs
/// that run (a job runs late by less than that), so the worker has one
/// timer in the kernel and none in tokio's wheel. An idle worker (pace
/// lowered) wakes only for its always-jobs: once a second
/// ([`crate::memory::COLLECT_EVERY`]), not every 100 ms.
async fn housekeeping(jobs: Vec<Job>, pace: Rc<Pace>) {
    let base = |busy: bool| {
        jobs.iter()
            .filter(|job| busy || !job.busy_only)
            .map(|job| job.period)
            .min()
    };
    // Always-jobs exist (the worker's memory collection), so the ticker
    // always has a period.
    let Some(slow) = base(false) else {
        return;
    };
    // Before the ticker is armed, so that a job whose period is a multiple
    // of the ticker's is due by the tick that ends it.
    let start = Instant::now();
    let mut busy = pace.busy();
    let mut ticker = Ticker::new(base(busy).unwrap_or(slow));
    let mut due: Vec<Instant> = jobs.iter().map(|job| start + job.period).collect();
    loop {
        if busy {
            ticker.tick().await;
        } else {
            tokio::select! {
                biased;
                () = pace.raised() => {}
                () = ticker.tick() => {}
            }
        }
        let now = Instant::now();
        let rose = !busy && pace.busy();
        for (job, due) in jobs.iter().zip(&mut due) {
            if job.busy_only && rose {
                *due = now + job.period;
            } else if (busy || !job.busy_only) && *due <= now {
                (job.run)();
                crate::ticker::advance(due, job.period, now);
            }
        }
        busy = pace.busy();
        let period = base(busy).unwrap_or(slow);
        if period != ticker.period() {
            ticker.set_period(period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `make` returns, without calling it.
    fn size_of_return<A, R>(_make: impl Fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn busy_jobs_run_only_while_the_pace_is_raised() {
        use std::cell::Cell;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pace = Rc::new(Pace::default());
        let (slow, busy) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let jobs = {
            let (slow, busy, pace) = (slow.clone(), busy.clone(), pace.clone());
            vec![
                Job::always(Duration::from_secs(3600), move || slow.set(slow.get() + 1)),
                Job::busy(Duration::from_millis(10), move || {
                    busy.set(busy.get() + 1);
                    if busy.get() % 3 == 0 {
                        pace.lower();
                    }
                }),
            ]
        };
        let script = async {
            let wait = |ms| tokio::time::sleep(Duration::from_millis(ms));
            wait(300).await;
            assert_eq!(busy.get(), 0, "the pace starts low");
            pace.raise();
            wait(300).await;
            assert_eq!(busy.get(), 3, "three runs, then the job lowered the pace");
            pace.raise();
            wait(300).await;
            assert_eq!(busy.get(), 6, "raised again");
        };
        rt.block_on(async {
            tokio::select! {
                () = housekeeping(jobs, pace.clone()) => unreachable!(),
                () = script => {}
            }
        });
        assert_eq!(slow.get(), 0);
    }

    #[test]
    fn connection_task_stays_small() {
        // An idle connection holds this future: the session, the emptied
        // box of the HTTP phase, a pinned reference and a state tag, boxed
        // in the reactor's slab on either backend. mimalloc's size classes
        // here run 192, 224, 256, 320 B (`mi_good_size`), so 232 B cost
        // 256 and 224 B cost 224.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            client.set_nonblocking(true).unwrap();
            let io = tokio::net::TcpStream::from_std(client).unwrap();
            let worker = Worker::for_tests(crate::handler::Echo);
            let future = connection(io, worker.clone());
            let session = std::mem::size_of::<
                session::Session<tokio::net::TcpStream, crate::handler::Echo>,
            >();
            let size = std::mem::size_of_val(&future);
            assert!(
                size <= session + 24,
                "connection future {size} B (session {session} B)"
            );
            let for_uring = worker.clone();
            let epoll = size_of_return(move |io: crate::io::epoll::EpollStream| {
                connection(io, worker.clone())
            });
            let uring = size_of_return(move |io: crate::io::uring::UringStream| {
                connection(io, for_uring.clone())
            });
            // Debug builds lay futures out less tightly; the 224-byte
            // bound is for the optimised build that is deployed.
            let bound = if cfg!(debug_assertions) { 256 } else { 224 };
            assert!(epoll <= bound, "epoll connection future {epoll} B");
            assert!(uring <= bound, "io_uring connection future {uring} B");
        });
    }
}
