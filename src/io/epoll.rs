//! The epoll backend: each worker's connections are polled straight from the
//! readiness events of an epoll instance of their own.
//!
//! The worker still runs a tokio current-thread runtime (with a `LocalSet`)
//! for everything that is not a connection's socket: the accept loop,
//! timers (hyper's handshake timeout, the session's close timeout, the idle
//! and write-stall ticks), signals and drain. Connections do not go through
//! tokio's I/O driver and task scheduler, which cost about 40 % of the
//! user-space instructions of a small echo (callgrind, 100 × 20 B: 1,770
//! instructions per message through tokio's `TcpStream` and a task per
//! connection, 1,044 this way; and 640 of the 833 bytes of an idle
//! connection). Instead:
//!
//! - every accepted socket is added, edge-triggered, to the worker's own
//!   epoll instance ([`Reactor`]), which is itself registered with tokio's
//!   driver: when any socket is ready, tokio wakes one task, the reactor;
//! - the reactor reads the ready events (without blocking), records each
//!   socket's readiness in its [`Conn`] and polls the connection's future
//!   (HTTP phase, then the session) directly, from a slab indexed by the
//!   event's key;
//! - a connection's [`EpollStream`] reads and writes with plain system calls
//!   while its socket is marked ready and clears the mark on `EAGAIN`; it
//!   registers no waker, since the next edge on its socket polls its future
//!   anyway;
//! - anything else that wakes a connection (a timer, the worker's session
//!   table for drain and idle ticks, the session yielding after its frame
//!   budget) goes through the connection's [`Waker`], which queues its key
//!   for the reactor and wakes the reactor's task.
//!
//! The reactor's task polls at most [`EVENTS_PER_POLL`] events' worth of
//! connections before it yields to the other tasks of the worker. Within
//! that budget, while events pile up (a wake-up found more than one), it
//! reads its instance again after each batch, and goes back to tokio's
//! driver only when the instance has nothing left: under load the worker
//! makes one `epoll_wait` per batch (the reactor's) rather than two (tokio's,
//! which reports the reactor's instance after polling every ready socket in
//! it once more, then the reactor's own). Once such a read finds nothing, the
//! worker is keeping up, and until a wake-up finds more than one event again
//! it leaves reporting to tokio's driver rather than make an empty read after
//! each batch: in open loop at 10 k messages/s that is two `epoll_wait`s per
//! message instead of three, 6–8 % less server CPU per message at 10 k and
//! 70 k messages/s, and no change in closed loop.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use rustix::event::epoll;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};

use super::Handler;

/// A new current-thread tokio runtime with a `LocalSet` to run `!Send` tasks.
pub fn runtime() -> io::Result<(tokio::runtime::Runtime, tokio::task::LocalSet)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((rt, tokio::task::LocalSet::new()))
}

/// Accepts on `listener` forever and runs each connection on this worker's
/// [`Reactor`]. Accepted sockets go straight to the reactor's epoll instance
/// (`accept4` and one `setsockopt`, as a tokio `TcpStream` would cost, without
/// registering them with tokio's driver first).
pub async fn accept_loop<H: Handler>(
    listener: std::net::TcpListener,
    reactor: Rc<Reactor>,
    handler: H,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener: OwnedFd = listener.into();
    // SAFETY: the `OwnedFd` stays open and is the same descriptor for as long
    // as the `AsyncFd` owns it; nothing else closes it.
    let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(io::Error::from)?;
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|listener| {
            use rustix::net::SocketFlags as F;
            Ok(rustix::net::accept_with(
                listener.get_ref(),
                F::NONBLOCK | F::CLOEXEC,
            )?)
        });
        match accepted {
            Ok(Ok(socket)) => {
                let _ = rustix::net::sockopt::set_tcp_nodelay(&socket, true);
                if let Err(e) = reactor.add(socket, |io| handler.connection(io)) {
                    // The socket is closed; the loop goes on.
                    super::accept_failed(e).await;
                }
            }
            Ok(Err(e)) => super::accept_failed(e).await,
            // Nothing to accept: wait for the next edge.
            Err(_would_block) => {}
        }
    }
}

/// A new epoll instance for a worker's [`Reactor`].
pub fn instance() -> io::Result<OwnedFd> {
    Ok(epoll::create(epoll::CreateFlags::CLOEXEC)?)
}

/// Most events read and connections polled per poll of the reactor's task
/// before it lets the worker's other tasks run.
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

impl EpollStream {
    /// Runs `op` while the socket is marked ready (`bit`) or closed
    /// (`closed`), clearing `bit` when it finds the socket not ready.
    fn poll_io<T>(
        &self,
        bit: u8,
        closed: u8,
        mut op: impl FnMut(&OwnedFd) -> rustix::io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let conn = &*self.conn;
        while conn.ready.get() & (bit | closed) != 0 {
            match op(&conn.socket) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(rustix::io::Errno::AGAIN) => conn.ready.set(conn.ready.get() & !bit),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        // The socket's next edge polls this connection again: no waker to
        // register.
        Poll::Pending
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

/// One connection on the reactor: its future and what wakes it.
struct Slot {
    future: Pin<Box<dyn Future<Output = ()>>>,
    conn: Rc<Conn>,
    waker: Waker,
    /// In the run queue already.
    queued: bool,
}

/// Keys of connections woken through their [`Waker`] (possibly from
/// another thread), and the waker of the reactor's task.
#[derive(Default)]
struct Inbox {
    keys: Mutex<Vec<usize>>,
    /// `keys` is not empty (set and cleared under its lock), so that the
    /// reactor need not lock it to find out.
    pending: AtomicBool,
    reactor: Mutex<Option<Waker>>,
}

impl Inbox {
    fn has_keys(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Records the waker of the reactor's task (when it changed).
    fn set_reactor(&self, current: &Waker) {
        let mut waker = self.reactor.lock().expect("inbox lock");
        if !waker.as_ref().is_some_and(|w| w.will_wake(current)) {
            *waker = Some(current.clone());
        }
    }

    fn wake_reactor(&self) {
        if let Some(waker) = self.reactor.lock().expect("inbox lock").as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// The waker of the connection at `key`.
struct ConnWaker {
    key: usize,
    inbox: Arc<Inbox>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        {
            let mut keys = self.inbox.keys.lock().expect("inbox lock");
            keys.push(self.key);
            self.inbox.pending.store(true, Ordering::Release);
        }
        self.inbox.wake_reactor();
    }
}

/// A worker's connections, polled from their sockets' epoll events.
pub struct Reactor {
    /// The worker's epoll instance, registered with tokio's driver.
    epoll: AsyncFd<OwnedFd>,
    slots: RefCell<Slab<Slot>>,
    /// Where `epoll_wait` puts events (allocated once).
    events: RefCell<Vec<epoll::Event>>,
    /// Keys to poll.
    run: RefCell<Vec<usize>>,
    /// The keys being polled (`run`'s previous contents).
    batch: RefCell<Vec<usize>>,
    inbox: Arc<Inbox>,
    /// Read the instance again after each batch (see [`Reactor::poll`]).
    reread: Cell<bool>,
}

impl Reactor {
    /// A reactor on `epoll_fd`, an epoll instance from [`instance`] (must
    /// run inside the worker's tokio runtime).
    pub fn new(epoll_fd: OwnedFd) -> io::Result<Rc<Reactor>> {
        // SAFETY: the `OwnedFd` stays open and is the same descriptor for as
        // long as the `AsyncFd` owns it; nothing else closes it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll_fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Rc::new(Reactor {
            epoll,
            slots: RefCell::default(),
            events: RefCell::new(Vec::with_capacity(EVENTS_PER_POLL)),
            run: RefCell::default(),
            batch: RefCell::default(),
            inbox: Arc::default(),
            reread: Cell::new(true),
        }))
    }

    /// Adds a connection: `socket` is registered for edge-triggered
    /// readiness and `make`'s future is polled from then on until it ends,
    /// when the socket closes.
    pub fn add<F: Future<Output = ()> + 'static>(
        &self,
        socket: OwnedFd,
        make: impl FnOnce(EpollStream) -> F,
    ) -> io::Result<()> {
        let mut slots = self.slots.borrow_mut();
        let entry = slots.vacant_entry();
        let key = entry.key();
        use epoll::EventFlags as E;
        epoll::add(
            self.epoll.get_ref(),
            &socket,
            epoll::EventData::new_u64(key as u64),
            E::IN | E::OUT | E::RDHUP | E::ET,
        )?;
        // Writable until a write says otherwise; readable once an event says
        // so (the HTTP phase's first read would only find `EAGAIN`).
        let conn = Rc::new(Conn {
            socket,
            ready: Cell::new(WRITABLE),
        });
        let waker = Waker::from(Arc::new(ConnWaker {
            key,
            inbox: self.inbox.clone(),
        }));
        let future = Box::pin(make(EpollStream { conn: conn.clone() }));
        entry.insert(Slot {
            future,
            conn,
            waker,
            queued: false,
        });
        Ok(())
    }

    /// The reactor's task: runs for as long as the worker does (spawned on
    /// the worker's `LocalSet` with the runtime).
    pub async fn run(self: Rc<Self>) {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    /// One poll of the reactor's task: until a poll's worth of work is
    /// done, queue what woke, read the ready events without blocking and
    /// poll the queued connections; when nothing is left, arm tokio's
    /// driver for the instance's next event and sleep.
    ///
    /// While `reread` is set, the instance is read again after each batch,
    /// not only when tokio's driver reports it readable (see the module
    /// documentation for when it is set and cleared, and what it saves).
    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.inbox.set_reactor(cx.waker());
        let mut budget = EVENTS_PER_POLL;
        // The read about to be made comes right after a batch (not after a
        // wake-up from tokio's driver).
        let mut after_batch = false;
        loop {
            self.take_woken();
            let read = self.read_events();
            if self.run.borrow().is_empty() {
                if after_batch {
                    // The worker is keeping up: until a wake-up finds more
                    // than one event, leave it to tokio's driver to report
                    // events rather than read again after each batch.
                    self.reread.set(false);
                }
                if read == Read::Full || self.inbox.has_keys() || self.armed_is_stale(cx) {
                    budget = budget.saturating_sub(1);
                    if budget > 0 {
                        continue;
                    }
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            if !after_batch && matches!(read, Read::Full | Read::Partial(2..)) {
                // Events piled up while the worker slept or worked: read
                // again after each batch for as long as that finds more.
                self.reread.set(true);
            }
            let polled = self.poll_connections();
            budget = budget.saturating_sub(polled.max(1));
            if budget == 0 {
                // Let the worker's other tasks (accept, timers) run, and
                // come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            after_batch = true;
            if !self.reread.get() && !self.inbox.has_keys() && !self.armed_is_stale(cx) {
                return Poll::Pending;
            }
        }
    }

    /// Queues the connections woken through their wakers (at most a poll's
    /// worth; the rest stay in the inbox for the next round).
    fn take_woken(&self) {
        if !self.inbox.has_keys() {
            return;
        }
        let mut keys = self.inbox.keys.lock().expect("inbox lock");
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        let take = keys.len().min(EVENTS_PER_POLL);
        for key in keys.drain(..take) {
            queue(&mut slots, &mut run, key, 0);
        }
        self.inbox
            .pending
            .store(!keys.is_empty(), Ordering::Release);
    }

    /// Reads the instance's ready events without blocking and queues their
    /// connections.
    fn read_events(&self) -> Read {
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut events = self.events.borrow_mut();
        events.clear();
        let spare = rustix::buffer::spare_capacity(&mut *events);
        match epoll::wait(self.epoll.get_ref(), spare, Some(&zero)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Read::Full,
            // An error on an epoll descriptor we own cannot be acted upon;
            // tokio's driver reports the instance again if it has events.
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed");
                return Read::Partial(0);
            }
        }
        self.queue_events(&events);
        if events.len() == events.capacity() {
            Read::Full
        } else {
            Read::Partial(events.len())
        }
    }

    /// Arms tokio's driver to wake the reactor's task at the instance's next
    /// event. True if an event came since the instance was last read (read
    /// it again before sleeping).
    fn armed_is_stale(&self, cx: &mut Context<'_>) -> bool {
        match self.epoll.poll_read_ready(cx) {
            // Registered for the next edge.
            Poll::Pending => false,
            Poll::Ready(Ok(mut guard)) => {
                // The readiness tokio recorded was read above; clearing it
                // and polling again registers this task for the next edge,
                // or reports one that came meanwhile.
                guard.clear_ready();
                self.epoll.poll_read_ready(cx).is_ready()
            }
            Poll::Ready(Err(e)) => {
                tracing::error!(error = %e, "epoll instance failed");
                false
            }
        }
    }

    /// Marks the connections of `events` ready and queues them.
    fn queue_events(&self, events: &[epoll::Event]) {
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        use epoll::EventFlags as E;
        for event in events {
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
            queue(&mut slots, &mut run, event.data.u64() as usize, bits);
        }
    }

    /// Polls the queued connections once each; returns how many.
    fn poll_connections(&self) -> usize {
        // Two queues swapped, so that neither is reallocated.
        let mut batch = self.batch.borrow_mut();
        std::mem::swap(&mut *batch, &mut *self.run.borrow_mut());
        let count = batch.len();
        // Held while connections are polled: a connection's poll never
        // reaches the slab (it reads and writes its socket through its own
        // `Conn`, and its waker only touches the inbox), and connections are
        // added only by the accept loop, another task.
        let mut slots = self.slots.borrow_mut();
        for key in batch.drain(..) {
            let Some(slot) = slots.get_mut(key) else {
                continue;
            };
            slot.queued = false;
            // A panic ends this connection only, as it would end only its
            // task if each connection were a tokio task.
            let future = &mut slot.future;
            let waker = &slot.waker;
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                future.as_mut().poll(&mut Context::from_waker(waker))
            }));
            let done = match polled {
                Ok(poll) => poll.is_ready(),
                Err(_) => {
                    tracing::error!("a connection panicked; it is closed");
                    true
                }
            };
            if done {
                // Closes the socket, which leaves the epoll instance.
                drop(slots.remove(key));
            }
        }
        count
    }
}

/// What [`Reactor::read_events`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Fewer events than fit (this many): the instance had no more.
    Partial(usize),
    /// The buffer filled (or the call was interrupted): there may be more.
    Full,
}

/// Marks connection `key` ready for `bits` and queues it once.
fn queue(slots: &mut Slab<Slot>, run: &mut Vec<usize>, key: usize, bits: u8) {
    if let Some(slot) = slots.get_mut(key) {
        slot.conn.ready.set(slot.conn.ready.get() | bits);
        if !slot.queued {
            slot.queued = true;
            run.push(key);
        }
    }
}
