//! I/O backends: which one runs, why, and the runtime each worker builds.
//!
//! Every backend hands the rest of the server a stream that implements tokio's
//! `AsyncRead + AsyncWrite + Unpin`; nothing above this module knows which
//! backend it runs on.

use std::fmt;
use std::future::Future;
use std::io;

use crate::config::IoMode;

pub mod epoll;
pub mod uring;

/// The I/O backend the workers run on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: each worker is an event loop of its own on its own ring
    /// (one `io_uring_enter` per round, receives from provided buffers).
    Uring,
    /// Readiness-based epoll: each worker is an event loop of its own on its
    /// own epoll instance (connections, accept, timers and wakes; no tokio
    /// runtime).
    Epoll,
}

impl Backend {
    /// Short name used in logs and the `/metrics` label.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend `--io auto` picks when io_uring is available.
///
/// Decided by measurement (docs/performance.md, "io_uring"; re-measure on
/// your kernel with `benches/compare.sh`): on this machine's kernel (6.18)
/// the io_uring loop costs as much server CPU per message as epoll at 20 B
/// and 1 KiB (0.95×, 1.00×) and per handshake (0.94×), more at 16 KiB
/// (1.13×: each message is copied out of a provided buffer and into a send
/// buffer, which epoll's `recv` and `send` do not need), and it holds more
/// memory per idle connection (570–635 bytes against epoll's 414–420).
/// Memory per connection is what sets the replica count, so epoll stays
/// the default.
pub const AUTO_PREFERS: Backend = Backend::Epoll;

/// The outcome of [`choose`].
#[derive(Clone, Debug)]
pub struct Choice {
    /// The backend to run.
    pub backend: Backend,
    /// How each worker's ring is set up when `backend` is io_uring.
    pub uring: Option<uring::Setup>,
    /// Set when `--io auto` fell back to epoll: why io_uring could not be used.
    pub fallback: Option<String>,
}

/// io_uring was requested with `--io uring` but cannot be used here.
#[derive(Debug)]
pub struct UringUnavailable(pub String);

impl fmt::Display for UringUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring is unavailable: {} (use --io epoll or --io auto)",
            self.0
        )
    }
}

impl std::error::Error for UringUnavailable {}

/// Resolves `--io` to a backend, probing io_uring when it may be used;
/// `recv_buffers` is the io_uring backend's provided buffers per worker.
///
/// `auto` always probes, so the log says whether io_uring could have been
/// used; it then takes [`AUTO_PREFERS`] when io_uring is available.
pub fn choose(mode: IoMode, recv_buffers: u16) -> Result<Choice, UringUnavailable> {
    let epoll = |fallback| Choice {
        backend: Backend::Epoll,
        uring: None,
        fallback,
    };
    match mode {
        IoMode::Epoll => Ok(epoll(None)),
        IoMode::Uring | IoMode::Auto => match uring::probe() {
            Ok(_) if mode == IoMode::Auto && AUTO_PREFERS == Backend::Epoll => Ok(epoll(None)),
            Ok(flags) => Ok(Choice {
                backend: Backend::Uring,
                uring: Some(uring::Setup {
                    flags,
                    buffers: recv_buffers,
                }),
                fallback: None,
            }),
            Err(why) if mode == IoMode::Auto => Ok(epoll(Some(why))),
            Err(why) => Err(UringUnavailable(why)),
        },
    }
}

/// A worker's single-threaded runtime, of the chosen backend. Built before
/// the worker serves, so that a worker that cannot get one (no file
/// descriptors, no memory) fails the server's start rather than its service.
pub enum Runtime {
    /// The worker's own event loop on its io_uring instance.
    Uring(std::rc::Rc<uring::Reactor>),
    /// The worker's own event loop on its epoll instance.
    Epoll(std::rc::Rc<epoll::Reactor>),
}

impl Runtime {
    /// Builds the runtime for `choice`.
    pub fn new(choice: &Choice) -> io::Result<Runtime> {
        Ok(match choice.uring {
            Some(setup) => Runtime::Uring(uring::Reactor::new(setup)?),
            None => Runtime::Epoll(epoll::Reactor::new()?),
        })
    }

    /// Runs `f` to completion on this thread, with the tasks spawned on it.
    /// Inside, [`Runtime::spawn`], [`crate::timer`] and `tokio::sync` work
    /// (`tokio::time` and tokio's I/O do not: no tokio runtime runs here).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Runtime::Uring(reactor) => reactor.block_on(f),
            Runtime::Epoll(reactor) => reactor.block_on(f),
        }
    }

    /// Runs `f` on this worker until it ends, beside the future given to
    /// [`Runtime::block_on`] (called from within it).
    pub fn spawn(&self, f: impl Future<Output = ()> + 'static) {
        match self {
            Runtime::Uring(reactor) => reactor.spawn(f),
            Runtime::Epoll(reactor) => reactor.spawn(f),
        }
    }
}

/// Builds a runtime for `choice` and runs `f` on it.
pub fn block_on<F: Future>(choice: &Choice, f: F) -> io::Result<F::Output> {
    Ok(Runtime::new(choice)?.block_on(f))
}

/// A byte stream the HTTP and WebSocket layers can run on.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static {
    /// The peer's address, if the stream is a connected socket.
    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

impl Stream for tokio::net::TcpStream {
    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        tokio::net::TcpStream::peer_addr(self).ok()
    }
}

/// In-memory connections (tests, benchmarks, fuzzing) have no peer address.
impl Stream for tokio::io::DuplexStream {}

/// The address of the peer of a connected socket.
fn peer_of(fd: std::os::fd::BorrowedFd<'_>) -> Option<std::net::SocketAddr> {
    let addr = rustix::net::getpeername(fd).ok()??;
    std::net::SocketAddr::try_from(addr).ok()
}

/// What an accept loop hands each accepted connection to.
pub trait Handler {
    /// The whole life of a freshly accepted connection (TCP_NODELAY set),
    /// as a future the backend runs on this worker.
    fn connection<S: Stream>(&self, io: S) -> impl Future<Output = ()> + 'static;
}

/// Accepts connections on `listener` forever, on `runtime`'s backend (the
/// future must run on `runtime`).
pub fn accept_loop<H: Handler + 'static>(
    runtime: &Runtime,
    listener: std::net::TcpListener,
    handler: H,
) -> impl Future<Output = io::Result<()>> + 'static {
    let runtime = match runtime {
        Runtime::Uring(reactor) => Runtime::Uring(reactor.clone()),
        Runtime::Epoll(reactor) => Runtime::Epoll(reactor.clone()),
    };
    async move {
        match runtime {
            Runtime::Uring(reactor) => uring::accept_loop(listener, reactor, handler).await,
            Runtime::Epoll(reactor) => epoll::accept_loop(listener, reactor, handler).await,
        }
    }
}

/// What an accept loop does after `accept` failed: out of file descriptors
/// or memory, it backs off for a while rather than spin (the listener stays
/// readable while the backlog is full); other errors concern one connection
/// and the loop goes on at once.
async fn accept_failed(err: io::Error) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    let resource = matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12));
    if !resource {
        tracing::debug!(error = %err, "accept failed");
        return;
    }
    // One warning per second at most, whatever the number of workers.
    static LAST_WARN: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARN.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(error = %err, "accept failed for lack of resources; backing off");
    }
    crate::timer::sleep(Duration::from_millis(50)).await;
}
