//! Receives under pressure, on every backend: a receive-buffer ring far
//! smaller than the connections using it, receives armed when a connection
//! is closed or the server drains, and connections churned by the
//! thousand. Each ends with the file descriptors back where they started.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::probe::{metric, raise_fd_limit, scrape};
use common::process::Launch;
use common::*;
use ringws::IoMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Barrier, Semaphore};

/// Held by each test: they count file descriptors, this process's own
/// among them, so they do not run side by side.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `f()` equals `want` (at most 10 s); returns the last value.
async fn settle(want: usize, mut f: impl FnMut() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = f();
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open file descriptors of this process.
fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Connects from 127.0.0.`2 + i % 50` (spreading the connections over
/// source addresses, so that churn does not run out of ephemeral ports).
async fn connect_from(i: usize, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(([127, 0, 0, 2 + (i % 50) as u8], 0).into())
        .unwrap();
    let s = socket.connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Upgrades `s`; panics unless the answer is 101.
async fn upgrade(s: &mut TcpStream, addr: SocketAddr) {
    s.write_all(upgrade_request(addr).as_bytes()).await.unwrap();
    let head = read_head(s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Sends Close 1000, expects it back and the TCP close after it.
async fn close_cleanly(mut s: TcpStream, what: &str) {
    s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await.close_code(), Some(1000), "{what}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "{what}: no TCP close after Close"
    );
}

const BUSY: usize = 2_000;
const MESSAGES: usize = 4;

/// 2,000 connections echo at once through 16 receive buffers per worker
/// (`--recv-buffers 16`): sizes from 1 byte to 40 KiB (past one 32 KiB
/// buffer), every echo checked byte for byte. Receives that found no
/// buffer waited for one (the counter says it happened) and none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_receive_buffers_serve_two_thousand_busy_connections() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let server = start(IoMode::Uring, |c| c.recv_buffers = 16);
    let addr = server.local_addr();
    let gate = Arc::new(Semaphore::new(200));
    let barrier = Arc::new(Barrier::new(BUSY));
    let mut tasks = Vec::with_capacity(BUSY);
    for i in 0..BUSY {
        let gate = gate.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = {
                let _permit = gate.acquire().await.unwrap();
                let mut s = connect_from(i, addr).await;
                upgrade(&mut s, addr).await;
                s
            };
            // Everyone sends at once.
            barrier.wait().await;
            for k in 0..MESSAGES {
                let size = 1 + (i * 7_919 + k * 10_007) % (40 << 10);
                echo_once(&mut s, &pattern(i, k, size), "busy").await;
            }
            close_cleanly(s, "busy").await;
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("session");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("every echo within 120 s");
    let text = scrape(addr).await;
    let waits = metric(&text, "ringws_receive_buffer_waits_total").expect("counter");
    assert!(waits > 0.0, "no receive waited for a buffer:\n{text}");
    eprintln!("receives that waited for a buffer: {waits}");
    server.shutdown().unwrap();
}

const CHURNED: usize = 10_000;

/// 10,000 connections, 100 at a time, each upgrading, echoing once and
/// closing: every one is served, and afterwards no session is open and
/// the process holds the file descriptors it held before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_churned_connections_leave_no_fd_behind() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        let _ = scrape(addr).await;
        let fds = own_fds();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..100 {
            tasks.push(tokio::spawn(async move {
                for k in 0..CHURNED / 100 {
                    let i = t * (CHURNED / 100) + k;
                    let mut s = connect_from(i, addr).await;
                    upgrade(&mut s, addr).await;
                    echo_once(&mut s, &pattern(i, 0, 1 + i % 300), "churn").await;
                    close_cleanly(s, "churn").await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("churn task");
        }
        let took = started.elapsed();
        let text = scrape(addr).await;
        assert_eq!(metric(&text, "ringws_sessions_open"), Some(0.0), "{io:?}");
        assert_eq!(
            metric(&text, "ringws_sessions_total"),
            Some(CHURNED as f64),
            "{io:?}"
        );
        let after = settle(fds, own_fds).await;
        assert_eq!(after, fds, "{io:?}: fds {fds} before, {after} after");
        eprintln!("{io:?}: {CHURNED} connections churned in {took:?}");
        server.shutdown().unwrap();
    }
}

const ARMED: usize = 500;

/// Opens `n` sessions that then stay silent: each has a receive armed.
async fn silent_sessions(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let gate = Arc::new(Semaphore::new(200));
    let mut opening = Vec::with_capacity(n);
    for i in 0..n {
        let gate = gate.clone();
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut s = connect_from(i, addr).await;
            upgrade(&mut s, addr).await;
            echo_once(&mut s, b"armed", "silent").await;
            s
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for h in opening {
        sessions.push(h.await.expect("session opened"));
    }
    sessions
}

/// Reads frames until a Close; returns its code.
async fn close_code_after_pings(s: &mut TcpStream) -> Option<u16> {
    loop {
        let f = read_frame(s).await;
        if f.opcode == 8 {
            return f.close_code();
        }
    }
}

/// Closing with receives armed: 500 silent sessions are closed by the
/// server (`--idle-timeout 1s`: a Ping, then Close 1001), their receives
/// cancelled, and the process's file descriptors come back to what they
/// were; then 500 more are armed when SIGTERM comes: each gets Close 1001
/// and the process exits 0 at once, with no operation left in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_and_draining_with_receives_armed_leave_no_fd_behind() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    for io in ["uring", "epoll"] {
        let mut server = Launch::new(&["--io", io, "--idle-timeout", "1s"]).start();
        server.wait_ready().await;
        let addr = server.addr;
        let fds = server.fds();

        let mut sessions = silent_sessions(addr, ARMED).await;
        assert_eq!(server.fds(), fds + ARMED, "{io}: one fd per session");
        let mut closing = Vec::new();
        for mut s in sessions.drain(..) {
            closing.push(tokio::spawn(async move {
                assert_eq!(close_code_after_pings(&mut s).await, Some(1001));
                s.write_all(&masked(true, 8, &1001u16.to_be_bytes()))
                    .await
                    .unwrap();
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
                    .await
                    .expect("TCP closed after the close handshake");
            }));
        }
        for c in closing {
            c.await.expect("idle close");
        }
        let after = settle(fds, || server.fds()).await;
        assert_eq!(
            after,
            fds,
            "{io}: fds {fds} before, {after} after the idle closes: {:#?}",
            server.fd_targets()
        );

        let sessions = silent_sessions(addr, ARMED).await;
        server.signal(libc::SIGTERM);
        let mut draining = Vec::new();
        for mut s in sessions {
            draining.push(tokio::spawn(async move {
                assert_eq!(close_code_after_pings(&mut s).await, Some(1001));
                s.write_all(&masked(true, 8, &1001u16.to_be_bytes()))
                    .await
                    .unwrap();
            }));
        }
        for d in draining {
            d.await.expect("drained");
        }
        let started = Instant::now();
        let status = server.wait(Duration::from_secs(10));
        assert!(status.success(), "{io}: {status:?}\n{}", server.log());
        let log = server.log();
        assert!(
            !log.contains("still in flight"),
            "{io}: operations outlived the drain:\n{log}"
        );
        eprintln!(
            "{io}: exited {:?} after the drain's last Close",
            started.elapsed()
        );
    }
}
