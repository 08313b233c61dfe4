//! `adapter`: the io_uring poll adapter (`ringws::io::uring::UringStream`)
//! on a real ring, over a Unix socket pair with small kernel buffers, driven
//! by an arbitrary sequence of operations of arbitrary sizes: the peer
//! writes (as much as fits) and reads, the adapter reads into buffers of
//! 1 B - 64 KiB, writes and vectored-writes 1 B - 64 KiB (pending past its
//! 64 KiB staging high-water mark until the peer reads), flushes, abandons a
//! read in flight, and either side shuts down.
//!
//! The adapter has no logic that runs without a ring (its buffer
//! bookkeeping lives inside `poll_read`/`poll_write` around tokio-uring
//! operations), so this target needs io_uring: where `io_uring_setup` is
//! refused it does nothing.
//!
//! Oracle: every byte the peer wrote is read by the adapter, in order, and
//! EOF after them; every byte the adapter accepted is received by the peer,
//! in order, before EOF; nothing hangs (10 s per input, real time).
//!
//! Input: pairs of bytes `[op, size]` (see `run`).
#![no_main]

use std::future::poll_fn;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

thread_local! {
    static RT: Option<tokio_uring::Runtime> =
        tokio_uring::Runtime::new(&tokio_uring::builder()).ok();
}

fuzz_target!(|data: &[u8]| {
    RT.with(|rt| {
        if let Some(rt) = rt {
            rt.block_on(async {
                if tokio::time::timeout(Duration::from_secs(10), run(data))
                    .await
                    .is_err()
                {
                    panic!("adapter run did not finish in 10 s");
                }
            });
        }
    });
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
/// sliced (building it per operation made the harness, not the adapter, the
/// cost of an execution: ~1,200 executions/s).
static PATTERN: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| (0..251 * 272).map(|i| (i % 251) as u8).collect());

/// Bytes `from..from + len` of the stream (`len` ≤ `size(255) + 2`).
fn pattern(from: usize, len: usize) -> &'static [u8] {
    let at = from % 251;
    &PATTERN[at..at + len]
}

/// Whether `got` is the start of the stream.
fn is_pattern_prefix(got: &[u8]) -> bool {
    got.chunks(251 * 256).all(|c| c == &PATTERN[..c.len()])
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

/// Reads whatever the peer socket has now, without waiting.
fn peer_take(peer: &tokio::net::unix::OwnedReadHalf, got: &mut Vec<u8>, eof: &mut bool) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match peer.try_read(&mut buf) {
            Ok(0) => {
                *eof = true;
                return;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
    }
}

/// Runs `op` while the peer keeps reading (so adapter writes can finish).
async fn with_peer_reading<T>(
    op: impl std::future::Future<Output = T>,
    peer: &mut tokio::net::unix::OwnedReadHalf,
    got: &mut Vec<u8>,
) -> T {
    let drain = async {
        let mut buf = [0u8; 16 << 10];
        loop {
            match peer.read(&mut buf).await {
                Ok(0) | Err(_) => std::future::pending::<()>().await,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::select! {
        biased;
        out = op => out,
        () = drain => unreachable!(),
    }
}

async fn run(data: &[u8]) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    small_buffers(&a);
    small_buffers(&b);
    // SAFETY: the fd is a connected stream socket we own; tokio-uring only
    // submits read, write, shutdown and close operations on it.
    let a = unsafe { std::net::TcpStream::from_raw_fd(a.into_raw_fd()) };
    let mut adapter =
        ringws::io::uring::UringStream::boxed(tokio_uring::net::TcpStream::from_std(a));
    b.set_nonblocking(true).unwrap();
    let (mut peer_r, mut peer_w) = tokio::net::UnixStream::from_std(b).unwrap().into_split();

    let mut to_adapter = 0usize; // bytes the peer wrote
    let mut adapter_got: Vec<u8> = Vec::new();
    let mut accepted = 0usize; // bytes the adapter's writes accepted
    let mut peer_got: Vec<u8> = Vec::new();
    let mut peer_eof = false;
    let mut peer_shut = false;
    let mut adapter_eof = false;

    for op in data.chunks_exact(2) {
        let (code, n) = (op[0] % 8, size(op[1]));
        match code {
            // The peer writes as much of n bytes as fits in the socket now.
            0 if !peer_shut => {
                let bytes = pattern(to_adapter, n);
                if let Ok(w) = peer_w.try_write(bytes) {
                    to_adapter += w;
                }
            }
            // The adapter reads into an n-byte buffer, when something is
            // there to read (bytes written and not read, or EOF).
            1 if !adapter_eof && (adapter_got.len() < to_adapter || peer_shut) => {
                let mut buf = vec![0u8; n];
                let r = adapter.read(&mut buf).await.expect("adapter read");
                if r == 0 {
                    assert!(peer_shut, "EOF before the peer shut down");
                    assert_eq!(adapter_got.len(), to_adapter, "EOF with bytes missing");
                    adapter_eof = true;
                } else {
                    adapter_got.extend_from_slice(&buf[..r]);
                    assert!(
                        adapter_got.len() <= to_adapter,
                        "read more than was written"
                    );
                }
            }
            // The adapter writes n bytes (or the part it accepts).
            2 => {
                let bytes = pattern(accepted, n);
                let w = with_peer_reading(adapter.write(bytes), &mut peer_r, &mut peer_got)
                    .await
                    .expect("adapter write");
                assert!(w > 0 && w <= n);
                accepted += w;
            }
            // Flush: everything accepted reaches the socket.
            3 => {
                with_peer_reading(adapter.flush(), &mut peer_r, &mut peer_got)
                    .await
                    .expect("adapter flush");
            }
            4 => peer_take(&peer_r, &mut peer_got, &mut peer_eof),
            // A vectored write of three parts of about n/3 bytes.
            5 => {
                let all = pattern(accepted, n + 2);
                let (x, rest) = all.split_at(n.div_ceil(3));
                let (y, z) = rest.split_at(rest.len() / 2);
                let parts = [
                    std::io::IoSlice::new(x),
                    std::io::IoSlice::new(y),
                    std::io::IoSlice::new(z),
                ];
                let w = with_peer_reading(
                    poll_fn(|cx| Pin::new(&mut adapter).poll_write_vectored(cx, &parts)),
                    &mut peer_r,
                    &mut peer_got,
                )
                .await
                .expect("adapter vectored write");
                assert!(w > 0 && w <= all.len());
                accepted += w;
            }
            // The peer shuts its write side.
            6 if !peer_shut => {
                peer_w.shutdown().await.unwrap();
                peer_shut = true;
            }
            // A read polled once and abandoned: if it stays in flight, the
            // bytes it gets must not be lost.
            7 if !adapter_eof => {
                let mut buf = vec![0u8; n];
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                let mut rb = ReadBuf::new(&mut buf);
                if let Poll::Ready(r) = Pin::new(&mut adapter).poll_read(&mut cx, &mut rb) {
                    r.expect("adapter read");
                    let filled = rb.filled();
                    if filled.is_empty() {
                        assert!(peer_shut && adapter_got.len() == to_adapter);
                        adapter_eof = true;
                    }
                    adapter_got.extend_from_slice(filled);
                }
            }
            _ => {}
        }
    }

    // The adapter's bytes all reach the peer, then EOF.
    with_peer_reading(adapter.shutdown(), &mut peer_r, &mut peer_got)
        .await
        .expect("adapter shutdown");
    if !peer_eof {
        peer_r.read_to_end(&mut peer_got).await.expect("peer read");
    }
    assert_eq!(peer_got.len(), accepted, "bytes the peer received");
    assert!(is_pattern_prefix(&peer_got), "bytes differ at the peer");
    // The peer's bytes all reach the adapter, then EOF.
    if !peer_shut {
        peer_w.shutdown().await.unwrap();
    }
    if !adapter_eof {
        let mut buf = vec![0u8; 4096];
        loop {
            let r = adapter.read(&mut buf).await.expect("adapter read");
            if r == 0 {
                break;
            }
            adapter_got.extend_from_slice(&buf[..r]);
        }
    }
    assert_eq!(adapter_got.len(), to_adapter, "bytes the adapter read");
    assert!(
        is_pattern_prefix(&adapter_got),
        "bytes differ at the adapter"
    );
}
