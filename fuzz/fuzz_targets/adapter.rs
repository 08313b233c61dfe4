//! `adapter`: the io_uring stream (`ringws::io::uring::UringStream`) on a
//! real ring of ringws's own reactor (`ringws::io::uring::Reactor`), over a
//! Unix socket pair with small kernel buffers, driven by an arbitrary
//! sequence of operations of arbitrary sizes: the peer writes (as much as
//! fits) and reads, the stream reads into buffers of 1 B - 64 KiB, writes
//! and vectored-writes 1 B - 64 KiB (pending past its 64 KiB staging
//! high-water mark until the peer reads), flushes, leaves a receive armed
//! while it does something else, and either side shuts down.
//!
//! The stream has no logic that runs without a ring (its receive, provided
//! buffer and send bookkeeping lives in the reactor's completions), so this
//! target needs io_uring: where `ringws::io::uring::probe` says it is
//! refused, it does nothing.
//!
//! Oracle: every byte the peer wrote is read by the stream, in order, and
//! EOF after them; every byte the stream accepted is received by the peer,
//! in order, before EOF; nothing hangs (10 s per input, real time).
//!
//! How it runs: the stream exists only inside a task of the reactor
//! (`Reactor::add`), polled when one of its operations completes; no tokio
//! runtime runs there. So the sequence runs in that task, and the peer is
//! the other end of the pair as a plain non-blocking std `UnixStream`. A
//! send waiting for room in the socket completes only once the peer reads:
//! while a stream write, flush or shutdown is pending, the reactor's main
//! future reads what the peer socket has, once per round of the loop (it
//! wakes itself meanwhile, so the loop goes round without blocking), and
//! the task waits for the reactor to poll it: the task never wakes itself,
//! so a wake-up the stream or the reactor forgets is a hang, caught. The
//! main future also waits (10 s at most) for the task to report that it
//! finished. One reactor per thread, reused from input to input; after a
//! failed input it is dropped (which drops what was left on it and cancels
//! its operations) before the panic, never reused.
//!
//! The old tokio-uring adapter's "read polled once and abandoned" op has no
//! equivalent any more (there is no read future to drop: a receive is armed
//! by `poll_read` and its completion requeues the task). Op 7 keeps what is
//! left of it: `poll_read` once; if it is pending, the receive stays armed
//! while the next ops run (its completion polls the task in the middle of
//! whatever it awaits then), and the bytes it got must be the next ones the
//! stream reads.
//!
//! Input: pairs of bytes `[op, size]` (see `run`).
#![no_main]

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringws::io::uring::{Reactor, Setup, UringStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How long one input may take (real time).
const LIMIT: Duration = Duration::from_secs(10);

thread_local! {
    /// This thread's reactor, between inputs.
    static REACTOR: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
    /// `probe` refused io_uring (checked once).
    static UNAVAILABLE: Cell<bool> = const { Cell::new(false) };
}

/// This thread's reactor (made on first use), or `None` without io_uring.
fn reactor() -> Option<Rc<Reactor>> {
    if UNAVAILABLE.get() {
        return None;
    }
    if let Some(reactor) = REACTOR.take() {
        return Some(reactor);
    }
    match ringws::io::uring::probe() {
        Ok(flags) => Some(
            Reactor::new(Setup { flags, buffers: 16 })
                .expect("io_uring probed fine, but Reactor::new failed"),
        ),
        Err(why) => {
            eprintln!("adapter: no io_uring here ({why}): every input is a no-op");
            UNAVAILABLE.set(true);
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(reactor) = reactor() else { return };
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    small_buffers(&ours);
    small_buffers(&theirs);
    theirs.set_nonblocking(true).unwrap();
    let shared = Rc::new(Shared {
        peer: RefCell::new(Peer {
            socket: theirs,
            got: 0,
            eof: false,
        }),
        draining: Cell::new(false),
        main: Cell::new(None),
    });
    let (done, mut finished) = tokio::sync::oneshot::channel();
    let data = data.to_vec();
    let task_shared = shared.clone();
    reactor.add(OwnedFd::from(ours), move |stream| async move {
        run(stream, &task_shared, &data).await;
        let _ = done.send(());
    });
    // The main future: waits for the task to finish; meanwhile, while the
    // task waits for a write, flush or shutdown, reads what the peer socket
    // has, once per round of the reactor.
    let main = poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut finished).poll(cx) {
            return Poll::Ready(out);
        }
        if shared.draining.get() {
            shared.peer.borrow_mut().take();
            cx.waker().wake_by_ref();
        } else {
            shared.main.set(Some(cx.waker().clone()));
        }
        Poll::Pending
    });
    match reactor.block_on(ringws::timer::timeout(LIMIT, main)) {
        Some(Ok(())) => REACTOR.set(Some(reactor)),
        // The reactor (and the task left on it) is dropped before the panic.
        Some(Err(_)) => {
            drop(reactor);
            panic!("the adapter task ended without finishing (it panicked)");
        }
        None => {
            drop(reactor);
            panic!("adapter run did not finish in {LIMIT:?}");
        }
    }
});

/// Sizes: 1 B to 64 KiB + a little, more often small.
fn size(b: u8) -> usize {
    match b {
        0..=127 => usize::from(b) + 1,
        128..=223 => (usize::from(b) - 127) * 97,
        _ => (usize::from(b) - 223) * 2_100,
    }
}

/// The byte stream both sides send: byte `i` is `i % 251`. Built once, then
/// sliced.
static PATTERN: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| (0..251 * 272).map(|i| (i % 251) as u8).collect());

/// Bytes `from..from + len` of the stream (`len` ≤ `size(255) + 2`).
fn pattern(from: usize, len: usize) -> &'static [u8] {
    let at = from % 251;
    &PATTERN[at..at + len]
}

/// Checks that `got` are bytes `from..` of the stream.
fn check(who: &str, from: usize, got: &[u8]) {
    for (i, chunk) in got.chunks(size(255)).enumerate() {
        let at = from + i * size(255);
        if chunk != pattern(at, chunk.len()) {
            let bad = chunk
                .iter()
                .zip(pattern(at, chunk.len()))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "bytes differ at the {who}: byte {} is {}, not {}",
                at + bad,
                chunk[bad],
                (at + bad) % 251
            );
        }
    }
}

fn small_buffers(fd: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 4096;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on an open socket with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// The peer's end (non-blocking) and what it received.
struct Peer {
    socket: UnixStream,
    /// Bytes received (all checked against the pattern).
    got: usize,
    eof: bool,
}

impl Peer {
    /// Reads whatever the socket has now, without waiting.
    fn take(&mut self) {
        let mut buf = [0u8; 16 << 10];
        while !self.eof {
            match self.socket.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    check("peer", self.got, &buf[..n]);
                    self.got += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }
}

/// What the stream's task and the main future share.
struct Shared {
    peer: RefCell<Peer>,
    /// The task waits for a write, flush or shutdown of the stream: the main
    /// future reads the peer socket meanwhile.
    draining: Cell<bool>,
    /// The main future's waker, while it waits for `draining`.
    main: Cell<Option<Waker>>,
}

/// Polls `op` until it is ready while the peer reads what it can (so that
/// the stream's sends can complete). The peer reads in the main future,
/// once per round of the reactor, not in this task: the task is polled
/// again only when the reactor queues it (a send completion), so a wake-up
/// the stream forgets is a hang.
async fn with_peer_reading<T>(shared: &Shared, op: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    shared.draining.set(true);
    if let Some(main) = shared.main.take() {
        main.wake();
    }
    let out = poll_fn(op).await;
    shared.draining.set(false);
    out
}

/// Lets the reactor go round once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// The bytes the peer sent to the stream, and what the stream read of them.
#[derive(Default)]
struct Sent {
    /// Bytes the peer wrote.
    written: usize,
    /// The peer shut its write side.
    shut: bool,
    /// Bytes the stream read (checked against the pattern).
    read: usize,
    /// The stream read EOF.
    eof: bool,
}

impl Sent {
    /// A read of the stream returned `got`.
    fn read(&mut self, got: &[u8]) {
        if got.is_empty() {
            assert!(self.shut, "EOF before the peer shut down");
            assert_eq!(self.read, self.written, "EOF with bytes missing");
            self.eof = true;
        } else {
            check("stream", self.read, got);
            self.read += got.len();
            assert!(self.read <= self.written, "read more than was written");
        }
    }
}

/// Runs the input's operations on `stream`, `peer` being the other end.
async fn run(mut stream: UringStream, shared: &Shared, data: &[u8]) {
    let peer = &shared.peer;
    let mut buf = vec![0u8; size(255)];
    let mut sent = Sent::default();
    let mut accepted = 0usize; // bytes the stream's writes accepted

    for op in data.chunks_exact(2) {
        let (code, n) = (op[0] % 8, size(op[1]));
        match code {
            // The peer writes as much of n bytes as fits in the socket now.
            0 if !sent.shut => match peer.borrow_mut().socket.write(pattern(sent.written, n)) {
                Ok(w) => sent.written += w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("peer write: {e}"),
            },
            // The stream reads into an n-byte buffer, when something is
            // there to read (bytes written and not read, or EOF).
            1 if !sent.eof && (sent.read < sent.written || sent.shut) => {
                let r = stream.read(&mut buf[..n]).await.expect("stream read");
                sent.read(&buf[..r]);
            }
            // The stream writes n bytes (or the part it accepts).
            2 => {
                let bytes = pattern(accepted, n);
                let w = with_peer_reading(shared, |cx| Pin::new(&mut stream).poll_write(cx, bytes))
                    .await
                    .expect("stream write");
                assert!(w > 0 && w <= n, "write of {n} accepted {w}");
                accepted += w;
            }
            // Flush: everything accepted reaches the socket.
            3 => with_peer_reading(shared, |cx| Pin::new(&mut stream).poll_flush(cx))
                .await
                .expect("stream flush"),
            4 => peer.borrow_mut().take(),
            // A vectored write of three parts of about n/3 bytes.
            5 => {
                let all = pattern(accepted, n + 2);
                let (x, rest) = all.split_at(n.div_ceil(3));
                let (y, z) = rest.split_at(rest.len() / 2);
                let parts = [IoSlice::new(x), IoSlice::new(y), IoSlice::new(z)];
                let w = with_peer_reading(shared, |cx| {
                    Pin::new(&mut stream).poll_write_vectored(cx, &parts)
                })
                .await
                .expect("stream vectored write");
                assert!(
                    w > 0 && w <= all.len(),
                    "vectored write of {} accepted {w}",
                    all.len()
                );
                accepted += w;
            }
            // The peer shuts its write side.
            6 if !sent.shut => {
                peer.borrow().socket.shutdown(Shutdown::Write).unwrap();
                sent.shut = true;
            }
            // A read polled once: if it is pending, its receive stays armed
            // while the next ops run, and the bytes it gets must not be lost.
            7 if !sent.eof => {
                let mut rb = ReadBuf::new(&mut buf[..n]);
                let polled =
                    poll_fn(|cx| Poll::Ready(Pin::new(&mut stream).poll_read(cx, &mut rb))).await;
                if let Poll::Ready(r) = polled {
                    r.expect("stream read");
                    sent.read(rb.filled());
                }
            }
            _ => {}
        }
    }

    // The stream's bytes all reach the peer, then EOF.
    with_peer_reading(shared, |cx| Pin::new(&mut stream).poll_shutdown(cx))
        .await
        .expect("stream shutdown");
    while !peer.borrow().eof {
        peer.borrow_mut().take();
        if !peer.borrow().eof {
            yield_now().await;
        }
    }
    assert_eq!(peer.borrow().got, accepted, "bytes the peer received");
    // The peer's bytes all reach the stream, then EOF.
    if !sent.shut {
        peer.borrow().socket.shutdown(Shutdown::Write).unwrap();
        sent.shut = true;
    }
    while !sent.eof {
        let r = stream.read(&mut buf[..4096]).await.expect("stream read");
        sent.read(&buf[..r]);
    }
    assert_eq!(sent.read, sent.written, "bytes the stream read");
}
