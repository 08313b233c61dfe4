//! The epoll backend: each worker is one event loop of its own, the
//! [`Reactor`], blocking in one `epoll_wait` on one epoll instance.
//!
//! No tokio runtime runs on an epoll worker. Its tasks (every connection,
//! the accept loop, housekeeping, and the worker's main future) are polled
//! by the reactor from a slab:
//!
//! - every accepted socket joins the instance, edge-triggered, under its
//!   task's key; an event records the socket's readiness in its `Conn` and
//!   queues the task;
//! - a connection's [`EpollStream`] reads and writes with plain system calls
//!   while its socket is marked ready and clears the mark on `EAGAIN`; it
//!   registers no waker, since the socket's next edge polls its task anyway;
//! - anything else that wakes a task (a timer, the worker's session table
//!   for drain and idle ticks, a session yielding after its frame budget)
//!   goes through the task's [`Waker`], which queues its key; a wake from
//!   another thread (drain, from the signal thread) also writes an eventfd
//!   in the instance, if the loop sleeps;
//! - timers ([`crate::timer`]: the handshake timeout, close and drain
//!   timeouts, accept back-off, housekeeping) are kept by deadline and
//!   fire from a timerfd in the instance, armed for the earliest.
//!
//! So a wake-up costs one `epoll_wait`, which returns up to
//! [`EVENTS_PER_POLL`] events, and a loop with nothing to do blocks without
//! a timeout. (Until 2026-12 the reactor's instance was itself registered
//! with a tokio current-thread runtime's driver: every wake-up was tokio's
//! `epoll_wait` reporting the reactor's instance, then the reactor's own.)
//! Connections never went through tokio's I/O driver and task scheduler,
//! which cost about 40 % of the user-space instructions of a small echo
//! (callgrind, 100 × 20 B: 1,770 instructions per message through tokio's
//! `TcpStream` and a task per connection, 1,044 this way; and 640 of the 833
//! bytes of an idle connection).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use rustix::event::epoll;
use slab::Slab;
use tokio::io::ReadBuf;

use super::Handler;
use crate::timer::Timers;

/// Accepts on `listener` forever and runs each connection on `reactor`.
/// Accepted sockets go straight to the reactor's epoll instance (`accept4`
/// and one `setsockopt`, as a tokio `TcpStream` would cost, without
/// registering them with tokio's driver first). Ends only if the listener
/// cannot join the instance.
pub async fn accept_loop<H: Handler + 'static>(
    listener: std::net::TcpListener,
    reactor: Rc<Reactor>,
    handler: H,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let (joined, failed) = tokio::sync::oneshot::channel::<()>();
    // The accept task holds the reactor weakly: the reactor owns the task.
    let weak = Rc::downgrade(&reactor);
    reactor.add_socket(listener.into(), move |listener| async move {
        let _joined = joined;
        accept(listener, weak, handler).await
    });
    // The task drops `joined` only if the listener could not join the
    // instance (it never ends otherwise).
    let _ = failed.await;
    Err(io::Error::other(
        "the listener could not join the worker's epoll instance",
    ))
}

async fn accept<H: Handler>(listener: Rc<Conn>, reactor: Weak<Reactor>, handler: H) {
    let mut accepted = 0;
    loop {
        let res = std::future::poll_fn(|cx| {
            if accepted == ACCEPTS_PER_POLL {
                // Let the connections run; come back at once.
                accepted = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            use rustix::net::SocketFlags as F;
            listener.poll_io(READABLE, 0, |fd| {
                rustix::net::accept_with(fd, F::NONBLOCK | F::CLOEXEC)
            })
        })
        .await;
        accepted += 1;
        match res {
            Ok(socket) => {
                let _ = rustix::net::sockopt::set_tcp_nodelay(&socket, true);
                let Some(reactor) = reactor.upgrade() else {
                    return;
                };
                reactor.add(socket, |io| handler.connection(io));
            }
            Err(e) => super::accept_failed(e).await,
        }
    }
}

/// Most events read per `epoll_wait`, and most woken tasks queued per
/// round of the loop.
pub const EVENTS_PER_POLL: usize = 256;

/// Readiness bits of a [`Conn`]. `READABLE` and `WRITABLE` are cleared when
/// an operation finds the socket not ready; the `*_CLOSED` bits stay: once
/// the peer closed (or the socket failed) every read or write goes to the
/// kernel, which answers EOF or the error, since no further edge may come.
const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
const READ_CLOSED: u8 = 4;
const WRITE_CLOSED: u8 = 8;

/// A connection's socket and whether it is ready, shared by its stream
/// (which clears the bits) and the reactor (which sets them).
#[derive(Debug)]
struct Conn {
    socket: OwnedFd,
    ready: Cell<u8>,
}

/// A connection's socket as a tokio byte stream, on the [`Reactor`] that
/// polls its owner.
#[derive(Debug)]
pub struct EpollStream {
    conn: Rc<Conn>,
}

impl Conn {
    /// Runs `op` while the socket is marked ready (`bit`) or closed
    /// (`closed`), clearing `bit` when it finds the socket not ready.
    fn poll_io<T>(
        &self,
        bit: u8,
        closed: u8,
        mut op: impl FnMut(&OwnedFd) -> rustix::io::Result<T>,
    ) -> Poll<io::Result<T>> {
        while self.ready.get() & (bit | closed) != 0 {
            match op(&self.socket) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(rustix::io::Errno::AGAIN) => self.ready.set(self.ready.get() & !bit),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        // The socket's next edge polls this task again: no waker to
        // register.
        Poll::Pending
    }
}

impl EpollStream {
    fn poll_io<T>(
        &self,
        bit: u8,
        closed: u8,
        op: impl FnMut(&OwnedFd) -> rustix::io::Result<T>,
    ) -> Poll<io::Result<T>> {
        self.conn.poll_io(bit, closed, op)
    }
}

impl super::Stream for EpollStream {
    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        use std::os::fd::AsFd;
        super::peer_of(self.conn.socket.as_fd())
    }
}

impl tokio::io::AsyncRead for EpollStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `recv` only writes into the slice (it never de-initialises
        // bytes), and the bytes it reports written are marked initialised
        // below, as `ReadBuf::assume_init` requires.
        let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
        let room = unfilled.len();
        let n = std::task::ready!(self.poll_io(READABLE, READ_CLOSED, |socket| {
            rustix::net::recv(socket, &mut *unfilled, rustix::net::RecvFlags::empty())
                .map(|(_, n)| n)
        }))?;
        // SAFETY: `recv` initialised the first `n` bytes of the unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        // A short read emptied the socket's receive queue: the next bytes
        // will come with a new edge (tokio's `TcpStream` does the same).
        if n > 0 && n < room {
            let conn = &*self.conn;
            conn.ready.set(conn.ready.get() & !READABLE);
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for EpollStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(WRITABLE, WRITE_CLOSED, |socket| {
            rustix::net::send(socket, data, rustix::net::SendFlags::NOSIGNAL)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(WRITABLE, WRITE_CLOSED, |socket| {
            rustix::net::sendmsg(
                socket,
                parts,
                &mut rustix::net::SendAncillaryBuffer::default(),
                rustix::net::SendFlags::NOSIGNAL,
            )
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.conn.socket;
        Poll::Ready(rustix::net::shutdown(socket, rustix::net::Shutdown::Write).map_err(Into::into))
    }
}

/// A task on the reactor: a connection (with its socket) or a worker's
/// own task (accept loop, housekeeping), and what wakes it.
struct Slot {
    future: Pin<Box<dyn Future<Output = ()>>>,
    /// The socket whose events poll this task, if any.
    conn: Option<Rc<Conn>>,
    waker: Waker,
    /// In the run queue already.
    queued: bool,
}

/// A task made while the slab was in use, inserted after the batch.
struct Incoming {
    future: Pin<Box<dyn Future<Output = ()>>>,
    conn: Option<Rc<Conn>>,
}

/// Keys of tasks woken through their [`Waker`] (possibly from another
/// thread), and how to wake the loop if it sleeps.
struct Inbox {
    keys: Mutex<Vec<usize>>,
    /// `keys` is not empty (set and cleared under its lock), so that the
    /// loop need not lock it to find out.
    pending: AtomicBool,
    /// The loop is in (or about to enter) a blocking `epoll_wait`: a wake
    /// must write `eventfd`. Only ever true while no task runs, so a task
    /// waking another on the worker's own thread makes no system call.
    sleeping: AtomicBool,
    /// In the reactor's epoll instance under [`WAKE_KEY`].
    eventfd: OwnedFd,
}

impl Inbox {
    fn has_keys(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    fn wake(&self, key: usize) {
        {
            let mut keys = self.keys.lock().expect("inbox lock");
            keys.push(key);
            self.pending.store(true, Ordering::SeqCst);
        }
        // Paired with the loop's store of `sleeping` before it checks
        // `pending` (both SeqCst): either it sees this key, or this sees it
        // sleeping and interrupts the wait.
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }
}

/// The waker of the task at `key` (or of the loop's main future, [`MAIN`]).
struct TaskWaker {
    key: usize,
    inbox: Arc<Inbox>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.inbox.wake(self.key);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.inbox.wake(self.key);
    }
}

/// Key of the main future of [`Reactor::block_on`] in the inbox.
const MAIN: usize = usize::MAX;
/// epoll data of the inbox's eventfd.
const WAKE_KEY: u64 = u64::MAX;
/// epoll data of the timers' timerfd.
const TIMER_KEY: u64 = u64::MAX - 1;
/// Accepts made in one poll of the accept loop before it lets other tasks
/// run.
const ACCEPTS_PER_POLL: usize = 64;

/// A worker's event loop: its tasks, polled from their sockets' epoll
/// events, their wakers and its timers, all from one epoll instance.
pub struct Reactor {
    epoll: OwnedFd,
    slots: RefCell<Slab<Slot>>,
    /// Tasks made while `slots` was borrowed.
    incoming: RefCell<Vec<Incoming>>,
    /// Where `epoll_wait` puts events (allocated once).
    events: RefCell<Vec<epoll::Event>>,
    /// Keys to poll.
    run: RefCell<Vec<usize>>,
    /// The keys being polled (`run`'s previous contents).
    batch: RefCell<Vec<usize>>,
    inbox: Arc<Inbox>,
    timers: Rc<Timers>,
    /// In the epoll instance under [`TIMER_KEY`]; armed for `armed`.
    timerfd: OwnedFd,
    armed: Cell<Option<Instant>>,
}

impl Reactor {
    /// A reactor with its epoll instance, eventfd and timerfd.
    pub fn new() -> io::Result<Rc<Reactor>> {
        use rustix::event::{EventfdFlags, eventfd};
        let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let wake = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        let timerfd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        use epoll::EventFlags as E;
        for (fd, key) in [(&wake, WAKE_KEY), (&timerfd, TIMER_KEY)] {
            epoll::add(&epoll_fd, fd, epoll::EventData::new_u64(key), E::IN | E::ET)?;
        }
        Ok(Rc::new(Reactor {
            epoll: epoll_fd,
            slots: RefCell::default(),
            incoming: RefCell::default(),
            events: RefCell::new(Vec::with_capacity(EVENTS_PER_POLL)),
            run: RefCell::default(),
            batch: RefCell::default(),
            inbox: Arc::new(Inbox {
                keys: Mutex::default(),
                pending: AtomicBool::new(false),
                sleeping: AtomicBool::new(false),
                eventfd: wake,
            }),
            timers: Rc::default(),
            timerfd,
            armed: Cell::new(None),
        }))
    }

    /// Adds a connection: `make`'s future is polled whenever `socket` has an
    /// edge (registered for readiness, edge-triggered) or its waker is
    /// woken, until it ends, when the socket closes.
    pub fn add<F: Future<Output = ()> + 'static>(
        &self,
        socket: OwnedFd,
        make: impl FnOnce(EpollStream) -> F,
    ) {
        self.add_socket(socket, |conn| make(EpollStream { conn }));
    }

    /// Adds a task polled on `socket`'s edges (and its waker), with the
    /// socket's readiness.
    fn add_socket<F: Future<Output = ()> + 'static>(
        &self,
        socket: OwnedFd,
        make: impl FnOnce(Rc<Conn>) -> F,
    ) {
        // Writable until a write says otherwise; readable once an event says
        // so (the HTTP phase's first read would only find `EAGAIN`).
        let conn = Rc::new(Conn {
            socket,
            ready: Cell::new(WRITABLE),
        });
        let future = Box::pin(make(conn.clone()));
        self.incoming.borrow_mut().push(Incoming {
            future,
            conn: Some(conn),
        });
    }

    /// Runs `future` on this reactor until it ends (polled once soon, then
    /// whenever its waker is woken).
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.incoming.borrow_mut().push(Incoming {
            future: Box::pin(future),
            conn: None,
        });
    }

    /// Inserts the tasks made since the last call: a connection's socket
    /// joins the epoll instance (its first edge polls it), any other task is
    /// queued to run.
    fn insert_incoming(&self) {
        let mut incoming = self.incoming.borrow_mut();
        if incoming.is_empty() {
            return;
        }
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        for Incoming { future, conn } in incoming.drain(..) {
            let entry = slots.vacant_entry();
            let key = entry.key();
            if let Some(conn) = &conn {
                use epoll::EventFlags as E;
                let data = epoll::EventData::new_u64(key as u64);
                let flags = E::IN | E::OUT | E::RDHUP | E::ET;
                if let Err(e) = epoll::add(&self.epoll, &conn.socket, data, flags) {
                    // Out of memory for the registration: the connection is
                    // closed (its future dropped unpolled).
                    tracing::warn!(error = %e, "epoll_ctl failed: connection closed");
                    continue;
                }
            } else {
                run.push(key);
            }
            let waker = Waker::from(Arc::new(TaskWaker {
                key,
                inbox: self.inbox.clone(),
            }));
            entry.insert(Slot {
                future,
                queued: conn.is_none(),
                conn,
                waker,
            });
        }
    }

    /// Runs `main` to completion on this thread, with every task of the
    /// reactor: the worker's whole life. The thread blocks only in
    /// `epoll_wait` on the reactor's instance, with no timeout: a socket's
    /// edge, a wake from another thread (the eventfd) or the next timer (the
    /// timerfd, armed for the earliest of [`crate::timer`]'s deadlines)
    /// ends it.
    pub fn block_on<F: Future>(&self, main: F) -> F::Output {
        let _timers = self.timers.enter();
        let mut main = std::pin::pin!(main);
        let main_waker = Waker::from(Arc::new(TaskWaker {
            key: MAIN,
            inbox: self.inbox.clone(),
        }));
        let mut main_woken = true;
        loop {
            if main_woken {
                main_woken = false;
                if let Poll::Ready(out) = main.as_mut().poll(&mut Context::from_waker(&main_waker))
                {
                    return out;
                }
            }
            self.insert_incoming();
            main_woken |= self.take_woken();
            // Armed (or fired) on every round, not only before blocking, so
            // that timers keep firing while tasks keep waking each other.
            let fired = self.arm_timer();
            // Block only with nothing to run; otherwise only look for events.
            let block = !main_woken && !fired && self.run.borrow().is_empty();
            main_woken |= self.wait(block);
            self.poll_tasks();
        }
    }

    /// Queues the tasks woken through their wakers (at most a batch's worth;
    /// the rest stay in the inbox for the next round). True if the main
    /// future was woken.
    fn take_woken(&self) -> bool {
        if !self.inbox.has_keys() {
            return false;
        }
        let mut main = false;
        let mut keys = self.inbox.keys.lock().expect("inbox lock");
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        let take = keys.len().min(EVENTS_PER_POLL);
        for key in keys.drain(..take) {
            if key == MAIN {
                main = true;
            } else {
                queue(&mut slots, &mut run, key, 0);
            }
        }
        self.inbox.pending.store(!keys.is_empty(), Ordering::SeqCst);
        main
    }

    /// Arms the timerfd for the earliest timer, unless it already is; fires
    /// the timers already due instead (true: something may have woken).
    fn arm_timer(&self) -> bool {
        let Some(next) = self.timers.next_deadline() else {
            return false;
        };
        if self.armed.get() == Some(next) {
            return false;
        }
        let now = Instant::now();
        if next <= now {
            self.timers.fire(now);
            return true;
        }
        let left = next - now;
        let spec = rustix::time::Itimerspec {
            it_interval: rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: rustix::time::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            },
        };
        let flags = rustix::time::TimerfdTimerFlags::empty();
        match rustix::time::timerfd_settime(&self.timerfd, flags, &spec) {
            Ok(_) => self.armed.set(Some(next)),
            // Cannot happen with a valid timerfd and value; without it timers
            // would only fire with the next event, so say so.
            Err(e) => tracing::error!(error = %e, "timerfd_settime failed"),
        }
        false
    }

    /// Reads the instance's events (waiting for one if `block`) and queues
    /// their tasks; fires due timers. True if the main future was woken.
    fn wait(&self, block: bool) -> bool {
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut timeout = None;
        if block {
            self.inbox.sleeping.store(true, Ordering::SeqCst);
            if self.inbox.has_keys() {
                timeout = Some(&zero);
            }
        } else {
            timeout = Some(&zero);
        }
        let mut events = self.events.borrow_mut();
        events.clear();
        let spare = rustix::buffer::spare_capacity(&mut *events);
        let res = epoll::wait(&self.epoll, spare, timeout);
        self.inbox.sleeping.store(false, Ordering::Relaxed);
        match res {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            // An error on an epoll descriptor we own cannot be acted upon.
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed");
                return false;
            }
        }
        if self.queue_events(&events) {
            self.armed.set(None);
            let mut expirations = [0u8; 8];
            let _ = rustix::io::read(&self.timerfd, &mut expirations);
            self.timers.fire(Instant::now());
        }
        self.take_woken()
    }

    /// Marks the connections of `events` ready and queues them; drains the
    /// eventfd. True if the timerfd expired.
    fn queue_events(&self, events: &[epoll::Event]) -> bool {
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        let mut timer = false;
        use epoll::EventFlags as E;
        for event in events {
            let key = event.data.u64();
            if key == WAKE_KEY {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&self.inbox.eventfd, &mut count);
                continue;
            }
            if key == TIMER_KEY {
                timer = true;
                continue;
            }
            let flags = event.flags;
            let mut bits = 0;
            if flags.contains(E::IN) {
                bits |= READABLE;
            }
            if flags.contains(E::OUT) {
                bits |= WRITABLE;
            }
            if flags.intersects(E::RDHUP | E::HUP | E::ERR) {
                bits |= READ_CLOSED;
            }
            if flags.intersects(E::HUP | E::ERR) {
                bits |= WRITE_CLOSED;
            }
            // A key may be stale (its connection ended and the key went to
            // a new one): marking the new one ready costs it one `EAGAIN`.
            queue(&mut slots, &mut run, key as usize, bits);
        }
        timer
    }

    /// Polls the queued tasks once each.
    fn poll_tasks(&self) {
        // Two queues swapped, so that neither is reallocated.
        let mut batch = self.batch.borrow_mut();
        std::mem::swap(&mut *batch, &mut *self.run.borrow_mut());
        // Held while tasks are polled: a task's poll never reaches the slab
        // (a connection reads and writes its socket through its own `Conn`,
        // a waker only touches the inbox, and new tasks wait in `incoming`).
        let mut slots = self.slots.borrow_mut();
        for key in batch.drain(..) {
            let Some(slot) = slots.get_mut(key) else {
                continue;
            };
            slot.queued = false;
            // A panic ends this task only, as it would end only its task if
            // each connection were a tokio task.
            let future = &mut slot.future;
            let waker = &slot.waker;
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                future.as_mut().poll(&mut Context::from_waker(waker))
            }));
            let done = match polled {
                Ok(poll) => poll.is_ready(),
                Err(_) => {
                    tracing::error!("a task panicked; it is dropped");
                    true
                }
            };
            if done {
                // Closes a connection's socket, which leaves the instance.
                drop(slots.remove(key));
            }
        }
    }
}

/// Marks connection `key` ready for `bits` and queues it once.
fn queue(slots: &mut Slab<Slot>, run: &mut Vec<usize>, key: usize, bits: u8) {
    if let Some(slot) = slots.get_mut(key) {
        if let Some(conn) = &slot.conn {
            conn.ready.set(conn.ready.get() | bits);
        }
        if !slot.queued {
            slot.queued = true;
            run.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn another_thread_wakes_the_sleeping_loop() {
        let reactor = Reactor::new().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        // The loop blocks with no timer pending: only the eventfd wakes it.
        assert_eq!(reactor.block_on(rx).unwrap(), 7);
        sender.join().unwrap();
    }

    #[test]
    fn timers_and_spawned_tasks_run_on_the_loop() {
        let reactor = Reactor::new().unwrap();
        let order = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        reactor.block_on(async {
            for (name, ms) in [("b", 40), ("a", 20)] {
                let order = order.clone();
                reactor.spawn(async move {
                    crate::timer::sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(name);
                });
            }
            crate::timer::sleep(Duration::from_millis(60)).await;
        });
        assert_eq!(*order.borrow(), ["a", "b"]);
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert!(reactor.timers.is_empty());
    }

    #[test]
    fn timers_fire_while_a_task_keeps_waking_itself() {
        let reactor = Reactor::new().unwrap();
        let spins = Rc::new(Cell::new(0u64));
        let counter = spins.clone();
        // Never lets the run queue empty, so the loop never blocks.
        reactor.spawn(std::future::poll_fn(move |cx| {
            counter.set(counter.get() + 1);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        reactor.block_on(crate::timer::sleep(Duration::from_millis(30)));
        assert!(spins.get() > 1, "the task ran {} times", spins.get());
    }
}
