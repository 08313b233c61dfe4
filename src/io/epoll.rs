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
//! connections before it yields to the other tasks of the worker.
//!
//! The price of nesting in tokio's driver: each wake-up of the worker costs
//! two `epoll_wait` calls (tokio's, which reports the reactor's instance,
//! then the reactor's own), where a task per connection cost one. Measured
//! side by side that is 50–210 ns more system time per 20-byte message,
//! against 120–140 ns less user time (README, "Performance").

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
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
    instance: OwnedFd,
    handler: H,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener: OwnedFd = listener.into();
    // SAFETY: the `OwnedFd` stays open and is the same descriptor for as long
    // as the `AsyncFd` owns it; nothing else closes it.
    let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let reactor = Reactor::new(instance)?;
    tokio::task::spawn_local(reactor.clone().run());
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
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
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
    reactor: Mutex<Option<Waker>>,
}

impl Inbox {
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
        self.inbox.keys.lock().expect("inbox lock").push(self.key);
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
            future: Some(future),
            conn,
            waker,
            queued: false,
        });
        Ok(())
    }

    /// The reactor's task: runs for as long as the worker does.
    async fn run(self: Rc<Self>) {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    /// One poll of the reactor's task: queue what woke, read the ready
    /// events, poll the queued connections; come back at once if work is
    /// left, else when tokio's driver or a connection's waker says so.
    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut waker = self.inbox.reactor.lock().expect("inbox lock");
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        let mut more = self.take_woken();
        more |= self.take_events(cx);
        self.poll_connections();
        if more
            || !self.run.borrow().is_empty()
            || !self.inbox.keys.lock().expect("inbox lock").is_empty()
        {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Queues the connections woken through their wakers. True if more
    /// than a poll's worth were left.
    fn take_woken(&self) -> bool {
        let mut keys = self.inbox.keys.lock().expect("inbox lock");
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        let take = keys.len().min(EVENTS_PER_POLL);
        for key in keys.drain(..take) {
            queue(&mut slots, &mut run, key, 0);
        }
        !keys.is_empty()
    }

    /// Reads ready events without blocking and queues their connections,
    /// until none are left (the reactor's task is then registered with
    /// tokio's driver for the next) or a poll's worth was read (true: the
    /// caller comes back for more).
    fn take_events(&self, cx: &mut Context<'_>) -> bool {
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut events = self.events.borrow_mut();
        let mut taken = 0;
        loop {
            let mut guard = match self.epoll.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                // An error on an epoll descriptor we own cannot be acted
                // upon; it would repeat on every poll.
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "epoll instance failed");
                    return false;
                }
                Poll::Pending => return false,
            };
            events.clear();
            let spare = rustix::buffer::spare_capacity(&mut *events);
            match epoll::wait(self.epoll.get_ref(), spare, Some(&zero)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return true,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed");
                    return false;
                }
            }
            self.queue_events(&events);
            taken += events.len();
            if events.len() == events.capacity() || taken >= EVENTS_PER_POLL {
                // Maybe more: leave the readiness set and come back.
                return true;
            }
            // Everything ready was read. Clearing the readiness and polling
            // it again registers this task for the next edge (or reports
            // one that came meanwhile).
            guard.clear_ready();
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

    /// Polls the queued connections once each.
    fn poll_connections(&self) {
        // Two queues swapped, so that neither is reallocated.
        let mut batch = self.batch.borrow_mut();
        std::mem::swap(&mut *batch, &mut *self.run.borrow_mut());
        for key in batch.drain(..) {
            let (mut future, waker) = {
                let mut slots = self.slots.borrow_mut();
                let Some(slot) = slots.get_mut(key) else {
                    continue;
                };
                slot.queued = false;
                let Some(future) = slot.future.take() else {
                    continue;
                };
                // Moved out and back rather than cloned: no reference count
                // to touch per poll.
                let waker = std::mem::replace(&mut slot.waker, Waker::noop().clone());
                (future, waker)
            };
            // Polled with no borrow held: a connection may wake others (or
            // itself), which only touches the inbox. A panic ends this
            // connection only, as it would end only its task if each
            // connection were a tokio task.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                future.as_mut().poll(&mut Context::from_waker(&waker))
            }));
            let done = match polled {
                Ok(poll) => poll.is_ready(),
                Err(_) => {
                    tracing::error!("a connection panicked; it is closed");
                    true
                }
            };
            let mut slots = self.slots.borrow_mut();
            if done {
                // Closes the socket, which leaves the epoll instance.
                drop(slots.remove(key));
            } else {
                let slot = &mut slots[key];
                slot.future = Some(future);
                slot.waker = waker;
            }
        }
    }
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
