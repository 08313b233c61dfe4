//! Faults and hostile clients, black-box, on both backends: resets under
//! load, slowloris, connection floods, protocol edge cases on the wire, file
//! descriptor exhaustion at accept, and regressions for inputs found by the
//! fuzz targets (`fuzz/`). Every test is bounded in time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::probe::raise_fd_limit;
use common::process::Launch;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

// ---------------------------------------------------------------------------
// Helpers

/// The value of a metric line `name VALUE` in a /metrics scrape.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

async fn sessions_open(addr: SocketAddr) -> u64 {
    let (_, _, body) = http_get(addr, "/metrics").await;
    metric(&body, "ringws_sessions_open").expect("ringws_sessions_open in /metrics")
}

/// Waits until `/metrics` shows no open session (at most 10 s).
async fn wait_no_sessions(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = sessions_open(addr).await;
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {open} sessions still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes TCP (EOF or reset); true if it did within
/// `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

// ---------------------------------------------------------------------------
// Resets under load

const RESET_SESSIONS: usize = 2_000;
const MESSAGES_PER_PHASE: usize = 4;

/// One round: `RESET_SESSIONS` sessions echo; then half of them reset
/// abruptly (SO_LINGER 0) in the middle of a message while the other half
/// go on echoing, every byte checked, and then close cleanly. A task that
/// fails leaves the others at the barrier: the round is bounded to 60 s.
async fn reset_round(addr: SocketAddr, what: &'static str) {
    let gate = Arc::new(Semaphore::new(200));
    let barrier = Arc::new(Barrier::new(RESET_SESSIONS));
    let mut tasks = Vec::with_capacity(RESET_SESSIONS);
    for i in 0..RESET_SESSIONS {
        let gate = gate.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = {
                let _permit = gate.acquire().await.unwrap();
                raw_upgrade(addr, &[]).await
            };
            // Sizes from 1 byte to 20 KiB (past one read buffer).
            let size = |k: usize| 1 + (i * 131 + k * 4_099) % 20_000;
            for k in 0..MESSAGES_PER_PHASE {
                echo_once(&mut s, &pattern(i, k, size(k)), what).await;
            }
            barrier.wait().await;
            if i % 2 == 0 {
                // A reset in the middle of a 64 KiB message: half of them
                // while the server reads it (half the frame sent), half
                // while it writes the echo (the whole frame sent, the echo
                // not read).
                let frame = masked(true, 2, &pattern(i, 99, 64 << 10));
                let cut = if i % 4 == 0 {
                    frame.len() / 2
                } else {
                    frame.len()
                };
                s.write_all(&frame[..cut]).await.unwrap();
                s.set_zero_linger().unwrap();
                drop(s);
                return;
            }
            for k in MESSAGES_PER_PHASE..2 * MESSAGES_PER_PHASE {
                echo_once(&mut s, &pattern(i, k, size(k)), what).await;
            }
            s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
                .await
                .unwrap();
            assert_eq!(read_frame(&mut s).await.close_code(), Some(1000), "{what}");
            assert!(
                closed_within(&mut s, Duration::from_secs(10)).await,
                "{what}"
            );
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("session task");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .unwrap_or_else(|_| panic!("{what}: reset round not done in 60 s"));
}

/// Waits until `f()` returns a value `<= limit` (at most 10 s); returns the
/// last value.
async fn settle(limit: u64, mut f: impl FnMut() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = f();
        if v <= limit || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After all sessions closed the gauge is 0, the process's fds are exactly
/// what they were before any session (the /metrics scrape's own connection
/// is closed before counting), and its RSS is within 24 MiB of what it was
/// then: the two workers' read buffer pools (8 MiB each at most, by design)
/// plus 8 MiB; on io_uring 16 MiB more: each worker's 128 receive buffers
/// (4 MiB, resident once used) and its pool of send buffers (at most 4 MiB).
/// A second identical round must not add more than 4 MiB beyond what the
/// pools can still take after the first. The binary runs with mimalloc's
/// defaults: its workers return freed memory to the OS once a second
/// (`src/memory.rs`).
#[tokio::test]
async fn resets_under_load_leave_no_session_fd_or_memory_behind() {
    raise_fd_limit();
    for io in ["uring", "epoll"] {
        let server = Launch::new(&["--io", io, "--close-timeout", "1s"]).start();
        server.wait_ready().await;
        let addr = server.addr;
        // Baseline: started, one session served and closed.
        let mut s = raw_upgrade(addr, &[]).await;
        echo_once(&mut s, b"warm", io).await;
        drop(s);
        wait_no_sessions(addr, io).await;
        server.wait_ready().await; // the scrapes' connections closed too
        let fds = server.fds() as u64;
        let fds_list = server.fd_targets();
        let rss = server.rss_kib();
        reset_round(addr, io).await;
        wait_no_sessions(addr, io).await;
        let fds_after = settle(fds, || server.fds() as u64).await;
        assert_eq!(
            fds_after,
            fds,
            "{io}: fds {fds} before, {fds_after} after\nbefore: {fds_list:#?}\nafter: {:#?}",
            server.fd_targets()
        );
        let rings = if io == "uring" { 16 * 1024 } else { 0 };
        let limit = rss + 24 * 1024 + rings;
        let rss_after = settle(limit, || server.rss_kib()).await;
        assert!(
            rss_after <= limit,
            "{io}: RSS {rss} KiB before, {rss_after} KiB after the round"
        );
        reset_round(addr, io).await;
        wait_no_sessions(addr, io).await;
        let fds_after2 = settle(fds, || server.fds() as u64).await;
        assert_eq!(
            fds_after2,
            fds,
            "{io}: fds {fds} before, {fds_after2} after round 2\nbefore: {fds_list:#?}\nafter: {:#?}",
            server.fd_targets()
        );
        // The pools may still be filling after round 1 (which buffers a
        // worker gets back depends on how the resets fell), so round 2 may
        // add up to what they can still take, plus 4 MiB.
        let pools = 16 * 1024 + rings;
        let limit2 = rss_after.max(rss + pools) + 4 * 1024;
        let rss_after2 = settle(limit2, || server.rss_kib()).await;
        assert!(
            rss_after2 <= limit2,
            "{io}: RSS {rss} KiB before, {rss_after} KiB after round 1, {rss_after2} KiB after round 2"
        );
        let (_, _, m) = http_get(addr, "/metrics").await;
        eprintln!(
            "{io}: fds {fds} -> {fds_after} -> {fds_after2}; RSS {rss} -> {rss_after} -> \
             {rss_after2} KiB; sessions_total {:?}",
            metric(&m, "ringws_sessions_total")
        );
    }
}

// ---------------------------------------------------------------------------
// Slowloris

const SLOWLORIS: usize = 1_000;

/// 1,000 clients trickle their request headers, a byte every 200 ms; each
/// is closed at `--handshake-timeout` (1 s: between 0.9 s and 3 s after its
/// first byte) and a normal client upgrades and echoes meanwhile.
#[tokio::test]
async fn slowloris_connections_are_closed_at_the_handshake_timeout() {
    raise_fd_limit();
    for io in BACKENDS {
        let server = start(io, |c| c.handshake_timeout = Duration::from_secs(1));
        let addr = server.local_addr();
        let mut tasks = Vec::with_capacity(SLOWLORIS);
        for _ in 0..SLOWLORIS {
            tasks.push(tokio::spawn(async move {
                // Timed from before the connect: with 1,000 tasks on one
                // thread, a task may resume well after its connect completed.
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
                let trickle = b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX: ";
                let mut sink = [0u8; 256];
                let mut i = 0usize;
                loop {
                    tokio::select! {
                        r = s.read(&mut sink) => {
                            match r {
                                Ok(0) | Err(_) => return started.elapsed(),
                                Ok(_) => {} // e.g. a 408; keep reading to the close
                            }
                        }
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            let byte = trickle[i % trickle.len()];
                            i += 1;
                            if s.write_all(&[byte]).await.is_err() {
                                return started.elapsed();
                            }
                        }
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "trickling connection still open after 10 s"
                    );
                }
            }));
        }
        // Meanwhile a normal client is served promptly.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let normal = Instant::now();
        let mut ok = raw_upgrade(addr, &[]).await;
        for k in 0..20 {
            echo_once(&mut ok, &pattern(7, k, 100 + k), "normal client").await;
        }
        let normal = normal.elapsed();
        assert!(
            normal < Duration::from_millis(900),
            "{io:?}: normal client took {normal:?} among the slowloris clients"
        );
        let mut times = Vec::with_capacity(SLOWLORIS);
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        let (first, last) = (times[0], times[SLOWLORIS - 1]);
        assert!(
            first >= Duration::from_millis(900) && last <= Duration::from_secs(3),
            "{io:?}: slowloris connections closed between {first:?} and {last:?}"
        );
        // The normal session is still fine after the wave.
        echo_once(&mut ok, b"after", "normal client").await;
        // Every one of them was counted as a handshake timeout (a client
        // may see its close a moment before the server's worker counts it:
        // wait up to 2 s for the count).
        let deadline = Instant::now() + Duration::from_secs(2);
        let (timeouts, m) = loop {
            let (_, _, m) = http_get(addr, "/metrics").await;
            let timeouts = m
                .lines()
                .find(|l| l.starts_with("ringws_handshake_failures_total{reason=\"timeout\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0) as usize;
            if timeouts >= SLOWLORIS || Instant::now() > deadline {
                break (timeouts, m);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let failures: Vec<&str> = m
            .lines()
            .filter(|l| {
                l.starts_with("ringws_handshake_failures_total")
                    || l.starts_with("ringws_connections")
            })
            .collect();
        assert_eq!(timeouts, SLOWLORIS, "{io:?}: {failures:#?}");
        eprintln!(
            "{io:?}: slowloris closed between {first:?} and {last:?}; normal client {normal:?}"
        );
        server.shutdown().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Flood

const FLOOD_LIMIT: usize = 50;
const FLOOD_EXISTING: usize = 10;
const FLOOD_ATTEMPTS: usize = 10 * FLOOD_LIMIT;

/// 500 upgrade attempts in one burst against `--max-connections 50` with 10
/// sessions already open and echoing: exactly 40 get 101, the other 460 get
/// 503 with Retry-After, the gauge never exceeds 50, and the existing
/// sessions echo intact throughout.
#[tokio::test]
async fn connection_flood_gets_503_beyond_the_limit() {
    raise_fd_limit();
    for io in BACKENDS {
        let server = start(io, |c| c.max_connections = Some(FLOOD_LIMIT));
        let addr = server.local_addr();
        let mut existing = Vec::new();
        for _ in 0..FLOOD_EXISTING {
            existing.push(raw_upgrade(addr, &[]).await);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The existing sessions echo all through the flood.
        let echoing = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 5 {
                    for (i, s) in existing.iter_mut().enumerate() {
                        echo_once(s, &pattern(i, rounds, 2_000 + rounds), "existing").await;
                    }
                    rounds += 1;
                }
                (existing, rounds)
            })
        };
        // The gauge, sampled all through the flood.
        let sampler = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut max = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    max = max.max(sessions_open(addr).await);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                max
            })
        };
        let mut flood = Vec::with_capacity(FLOOD_ATTEMPTS);
        for _ in 0..FLOOD_ATTEMPTS {
            flood.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(upgrade_request(addr).as_bytes()).await.unwrap();
                let head = read_head(&mut s).await;
                (head, s)
            }));
        }
        let (mut ok, mut refused) = (Vec::new(), 0);
        for t in flood {
            let (head, s) = t.await.unwrap();
            if head.starts_with("HTTP/1.1 101") {
                ok.push(s); // kept open: the slot stays taken
            } else {
                assert!(head.starts_with("HTTP/1.1 503"), "{io:?}: {head}");
                assert!(
                    head.to_ascii_lowercase().contains("\r\nretry-after: "),
                    "{io:?}: {head}"
                );
                refused += 1;
            }
        }
        assert_eq!(
            (ok.len(), refused),
            (
                FLOOD_LIMIT - FLOOD_EXISTING,
                FLOOD_ATTEMPTS - FLOOD_LIMIT + FLOOD_EXISTING
            ),
            "{io:?}: accepted, refused"
        );
        // The accepted ones are real sessions.
        for (i, s) in ok.iter_mut().enumerate() {
            echo_once(s, &pattern(i, 1, 64), "flood survivor").await;
        }
        assert_eq!(sessions_open(addr).await, FLOOD_LIMIT as u64, "{io:?}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let max = sampler.await.unwrap();
        let (_existing, rounds) = echoing.await.expect("existing sessions echoed intact");
        assert!(max <= FLOOD_LIMIT as u64, "{io:?}: gauge reached {max}");
        eprintln!(
            "{io:?}: flood {FLOOD_ATTEMPTS}: {} x 101, {refused} x 503; gauge max {max}; \
             existing sessions echoed {rounds} rounds meanwhile",
            ok.len()
        );
        server.shutdown().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Protocol edge cases on the wire

/// EOF inside the request head, inside a frame header, inside a payload,
/// and a TCP close without a Close frame: the server closes its side and
/// the session gauge returns to 0.
#[tokio::test]
async fn eof_mid_header_mid_payload_and_tcp_close_clean_up() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        // EOF inside the HTTP request head: closed without an answer.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed after EOF in the request head")
            .unwrap();
        assert!(
            rest.is_empty(),
            "{io:?}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        let cases: [(&str, Vec<u8>); 4] = [
            (
                "EOF in the frame header",
                masked(true, 2, b"abc")[..1].to_vec(),
            ),
            (
                "EOF in the extended length",
                masked(true, 2, &[0; 300])[..3].to_vec(),
            ),
            (
                "EOF in the payload",
                masked(true, 2, &[7; 1_000])[..500].to_vec(),
            ),
            ("EOF after a whole frame", masked(true, 1, b"whole")),
        ];
        for (what, bytes) in cases {
            let mut s = raw_upgrade(addr, &[]).await;
            echo_once(&mut s, b"first", what).await;
            s.write_all(&bytes).await.unwrap();
            s.shutdown().await.unwrap(); // FIN, no Close frame
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("{io:?}: {what}: not closed"))
                .unwrap();
            // Only whole frames were echoed; no Close is owed to a peer
            // that left.
            let expected: &[u8] = if what == "EOF after a whole frame" {
                b"\x81\x05whole"
            } else {
                b""
            };
            assert_eq!(rest, expected, "{io:?}: {what}");
            wait_no_sessions(addr, what).await;
        }
        // A TCP close (both directions) without a Close frame.
        let mut s = raw_upgrade(addr, &[]).await;
        echo_once(&mut s, b"bye", "tcp close").await;
        drop(s);
        wait_no_sessions(addr, "TCP close without a Close frame").await;
        server.shutdown().unwrap();
    }
}

/// The client sends Close and shuts its write side at once: the server
/// still answers with its Close (the peer's code) and closes TCP.
#[tokio::test]
async fn half_close_after_a_close_frame_is_answered() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        let mut s = raw_upgrade(addr, &[]).await;
        s.write_all(&masked(true, 1, b"last words")).await.unwrap();
        s.write_all(&masked(true, 8, &4001u16.to_be_bytes()))
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(read_frame(&mut s).await.payload, b"last words", "{io:?}");
        let close = read_frame(&mut s).await;
        assert_eq!(close.close_code(), Some(4001), "{io:?}: {close:?}");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("server closes TCP after answering")
            .unwrap();
        assert!(rest.is_empty(), "{io:?}: bytes after the Close");
        wait_no_sessions(addr, "half-close").await;
        server.shutdown().unwrap();
    }
}

/// Close codes that must never be sent (1005, 1006, 1015), are out of range
/// (999, 5000) or unassigned (1004, 2000) fail the connection with 1002; an
/// invalid UTF-8 reason with 1007.
#[tokio::test]
async fn invalid_close_codes_and_reasons_are_refused() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        for code in [1005u16, 1006, 999, 5000, 1004, 1015, 2000, 0] {
            let mut s = raw_upgrade(addr, &[]).await;
            s.write_all(&masked(true, 8, &code.to_be_bytes()))
                .await
                .unwrap();
            expect_close(&mut s, 1002).await;
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bad \xc3\x28 reason");
        let mut s = raw_upgrade(addr, &[]).await;
        s.write_all(&masked(true, 8, &payload)).await.unwrap();
        expect_close(&mut s, 1007).await;
        wait_no_sessions(addr, "close codes").await;
        server.shutdown().unwrap();
    }
}

/// 1,000 pings in one write: 1,000 pongs with the same payloads, in order.
#[tokio::test]
async fn thousand_pings_in_a_burst_get_thousand_pongs_in_order() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        let mut s = raw_upgrade(addr, &[]).await;
        let burst: Vec<u8> = (0..1_000u32)
            .flat_map(|i| masked(true, 9, format!("ping {i}").as_bytes()))
            .collect();
        let (mut rd, mut wr) = s.split();
        let write = async {
            wr.write_all(&burst).await.unwrap();
        };
        let read = async {
            let mut got = Vec::new();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            while got.len() < 1_000 {
                let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk))
                    .await
                    .expect("pongs in time")
                    .unwrap();
                assert!(n > 0, "closed after {} pongs", got.len());
                buf.extend_from_slice(&chunk[..n]);
                // Server frames here are short: [0x8A, len, payload].
                while buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1]) {
                    assert_eq!(buf[0], 0x8a, "a pong, unmasked");
                    let len = usize::from(buf[1]);
                    got.push(String::from_utf8(buf[2..2 + len].to_vec()).unwrap());
                    buf.drain(..2 + len);
                }
            }
            got
        };
        let ((), got) = tokio::join!(write, read);
        let want: Vec<String> = (0..1_000).map(|i| format!("ping {i}")).collect();
        assert_eq!(got, want, "{io:?}");
        echo_once(&mut s, b"still echoing", "after pings").await;
        server.shutdown().unwrap();
    }
}

/// A frame header announcing 2^63 bytes (and 2^64 - 1) is answered with
/// Close 1009 at once, without waiting for (or allocating) the payload.
#[tokio::test]
async fn huge_length_header_closes_with_1009() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        for len in [1u64 << 63, u64::MAX, (16 << 20) + 1] {
            let mut s = raw_upgrade(addr, &[]).await;
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&len.to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            s.write_all(&header).await.unwrap();
            expect_close(&mut s, 1009).await;
        }
        wait_no_sessions(addr, "huge header").await;
        server.shutdown().unwrap();
    }
}

// In-process measurement of what the server allocates for one connection
// (served by `Standalone` on this thread): a counting allocator that only
// looks at allocations made on a thread that asked for it.

struct ThreadTracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for ThreadTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: ThreadTracking = ThreadTracking;

/// Serves one in-memory connection that sends `client` bytes (after the
/// upgrade request, pipelined) and then EOF once the server has answered;
/// returns what the server sent after its 101 and the largest single
/// allocation made while serving it.
fn serve_in_memory(config: ringws::Config, client: &[u8]) -> (Vec<u8>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = ringws::standalone::Standalone::new(config);
    let mut request = upgrade_request("127.0.0.1:1".parse().unwrap()).into_bytes();
    request.extend_from_slice(client);
    let local = tokio::task::LocalSet::new();
    TRACKING.with(|t| t.set(true));
    LARGEST.with(|l| l.set(0));
    let out = local.block_on(&rt, async {
        let (conn, client) = tokio::io::duplex(64 << 10);
        let (mut rd, mut wr) = tokio::io::split(client);
        let talk = async {
            wr.write_all(&request).await.unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let mut shut = false;
            loop {
                let n = rd.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if !shut && out.windows(4).any(|w| w == b"\r\n\r\n") {
                    shut = true;
                    let _ = wr.shutdown().await;
                }
            }
            out
        };
        let run = async { tokio::join!(server.serve(conn), talk).1 };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("in-memory connection finished")
    });
    TRACKING.with(|t| t.set(false));
    let largest = LARGEST.with(Cell::get);
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    assert!(
        out.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    (out[end..].to_vec(), largest)
}

/// With the default 16 MiB `--max-message-size`, a 2^63-byte header costs
/// no allocation proportional to it: the largest allocation while serving
/// the connection stays under 64 KiB, and the answer is Close 1009.
#[test]
fn huge_length_header_allocates_nothing_proportional() {
    for len in [1u64 << 63, u64::MAX, (16 << 20) + 1] {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let (out, largest) = serve_in_memory(ringws::Config::default(), &header);
        assert!(
            out.len() >= 4 && out[0] == 0x88 && out[2..4] == 1009u16.to_be_bytes(),
            "expected Close 1009, got {out:02x?}"
        );
        assert!(
            largest < 64 << 10,
            "{len}: largest allocation {largest} bytes"
        );
    }
}

// ---------------------------------------------------------------------------
// Accept-side faults

/// ringws with RLIMIT_NOFILE 64 (soft and hard) and 120 clients: those
/// beyond its descriptors wait in the backlog while accept fails with
/// EMFILE; the accept loop backs off instead of spinning (CPU over 2 s well
/// under 1 CPU-second per second: at most 0.3), the sessions it holds keep
/// echoing, and once the clients leave new connections are served again.
#[tokio::test]
async fn fd_exhaustion_backs_off_and_recovers() {
    raise_fd_limit();
    const CLIENTS: usize = 120;
    for io in ["uring", "epoll"] {
        // --max-connections above what the fds allow, so the fd limit and
        // not the session limit is what is hit.
        let server = Launch::new(&[
            "--io",
            io,
            "--max-connections",
            "1000",
            "--log",
            "ringws=debug,hyper=debug",
        ])
        .nofile(64)
        .start();
        let addr = server.addr;
        // Let every worker build its runtime first (see
        // `fd_exhaustion_during_startup_does_not_stop_the_server`).
        server.wait_ready().await;
        assert_eq!(http_get(addr, "/healthz").await.0, 200, "{io}");
        // Those that got a descriptor are upgraded within a second; the
        // rest get nothing (they wait in the listen backlog).
        let mut tries = Vec::new();
        for _ in 0..CLIENTS {
            tries.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(upgrade_request(addr).as_bytes()).await?;
                let mut head = [0u8; 12];
                let got = tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut head))
                    .await
                    .ok()
                    .map(|r| r.map(|_| head));
                Ok::<_, std::io::Error>((s, got))
            }));
        }
        let mut upgraded = Vec::new();
        let mut waiting = Vec::new();
        for t in tries {
            let (mut s, got) = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{io}: connect failed: {e}\n{}", server.log()));
            match got {
                Some(Ok(head)) => {
                    assert_eq!(&head, b"HTTP/1.1 101", "{io}");
                    read_head(&mut s).await;
                    upgraded.push(s);
                }
                Some(Err(e)) => panic!("{io}: client failed: {e}\n{}", server.log()),
                None => waiting.push(s),
            }
        }
        assert!(
            !upgraded.is_empty() && !waiting.is_empty(),
            "{io}: {} upgraded, {} waiting: the fd limit was not reached\n{}",
            upgraded.len(),
            waiting.len(),
            server.log()
        );
        // Out of descriptors now: the accept loop must not spin.
        let cpu0 = server.cpu_seconds();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu = (server.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
        assert!(
            cpu < 0.3,
            "{io}: {cpu:.2} CPU-seconds per second while out of fds\n{}",
            server.log()
        );
        assert!(
            server.log().contains("accept failed for lack of resources"),
            "{io}: no EMFILE warning\n{}",
            server.log()
        );
        // The sessions it holds still echo.
        for (i, s) in upgraded.iter_mut().enumerate().take(5) {
            echo_once(s, &pattern(i, 0, 500), "session held at EMFILE").await;
        }
        // Everyone leaves; the backlog drains and new clients are served.
        let held = upgraded.len();
        drop(upgraded);
        drop(waiting);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < 3 {
            assert!(
                Instant::now() < deadline,
                "{io}: not serving again 10 s after the clients left\n{}",
                server.log()
            );
            let attempt = async {
                let mut s = raw_upgrade(addr, &[]).await;
                echo_once(&mut s, b"recovered", "after EMFILE").await;
            };
            if tokio::time::timeout(Duration::from_secs(1), attempt)
                .await
                .is_ok()
            {
                served += 1;
            }
        }
        wait_no_sessions(addr, io).await;
        eprintln!(
            "{io}: RLIMIT_NOFILE 64: {held} sessions held, {} clients waited; \
             {cpu:.3} CPU-s/s while out of fds; serving again after they left",
            CLIENTS - held
        );
    }
}

/// A burst of connections right at startup with a tight RLIMIT_NOFILE must
/// not stop the server. Regression: the first worker accepted (and used up
/// the descriptors) while another was still building its runtime (an
/// io_uring or epoll instance needs descriptors too); that worker failed
/// with EMFILE, and a failed worker drained and stopped the whole server
/// ("worker failed; draining ... Too many open files", exit 1). Workers now
/// build their runtimes before any accepts. Racy by nature, so it tries 15
/// times per backend.
#[tokio::test]
async fn fd_exhaustion_during_startup_does_not_stop_the_server() {
    raise_fd_limit();
    for attempt in 0..15 {
        for io in ["uring", "epoll"] {
            let mut server = Launch::new(&["--io", io, "--max-connections", "1000"])
                .nofile(64)
                .start();
            let addr = server.addr;
            let mut burst = Vec::new();
            for _ in 0..120 {
                burst.push(tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.ok()?;
                    s.write_all(upgrade_request(addr).as_bytes()).await.ok()?;
                    Some(s)
                }));
            }
            let mut held = Vec::new();
            for t in burst {
                held.push(t.await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let exited = server.try_wait();
            if exited.is_some() {
                std::thread::sleep(Duration::from_millis(200)); // the last log lines
            }
            assert!(
                exited.is_none(),
                "{io}, attempt {attempt}: ringws exited ({exited:?}) under a connection burst \
                 at startup\n{}",
                server.log()
            );
        }
    }
}

/// A header announcing a 16 MiB frame (the default `--max-message-size`)
/// followed by 100 bytes: what the server allocates follows the bytes that
/// arrived, not the length announced. Regression: the read buffer reserved
/// the whole announced frame at once (`reserve(missing + 14)` in the
/// vendored fastwebsockets' `try_parse_frame`): 16 MiB of address space per
/// connection for 114 bytes sent, and with transparent huge pages about
/// 2 MiB resident (500 such connections took a release ringws from 12 MB
/// to 1.07 GB RSS, on either backend).
#[test]
fn announced_length_is_not_allocated_before_the_bytes_arrive() {
    let mut client = vec![0x82, 0x80 | 127];
    client.extend_from_slice(&(16u64 << 20).to_be_bytes());
    client.extend_from_slice(&[1, 2, 3, 4]);
    client.extend_from_slice(&[0x55; 100]);
    let (out, largest) = serve_in_memory(ringws::Config::default(), &client);
    assert!(out.is_empty(), "{out:02x?}");
    assert!(
        largest < 1 << 20,
        "largest allocation {largest} bytes for 114 bytes of frame"
    );
}
