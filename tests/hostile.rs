//! What a hostile client can make ringws hold, against the real
//! binary with one worker, on both backends: request heads that never end
//! (`--max-request-header-size`, 431), too many header lines, connections
//! that never finish their request (`--max-pending-handshakes`), and
//! sessions that stall one byte short of a large frame
//! (`--max-buffered-bytes`, Close 1013), and decompression bombs
//! (`--deflate shared`, Close 1009). Memory is the process's RSS from
//! `/proc/PID/status`, bounded generously; no test asserts a timing (the
//! timeouts only keep a failing test from hanging). The tests of this file
//! run one at a time (`SERIAL`): each pushes a few hundred MB through
//! loopback on a machine with two cores.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::probe::{
    RssPeak, closed_within, failure_lines, handshake_failures, metric, raise_fd_limit, scrape,
};
use common::process::{Launch, Ringws};
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The backends, as `--io` values.
const IO: [&str; 2] = ["epoll", "uring"];

/// One test of this file at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Helpers

/// ringws with one worker on `--io io` and `args`, every worker ready.
async fn launch(io: &str, args: &[&str]) -> Ringws {
    let mut all = vec!["--io", io];
    all.extend_from_slice(args);
    // `Launch` borrows its arguments for its own lifetime only.
    let server = Launch::new(&all).workers(1).start();
    server.wait_ready().await;
    server
}

/// Reads one server frame from `r` within `limit`; an error says what
/// happened instead (timeout, EOF or reset, a masked frame).
async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<ServerFrame, String> {
    let read = async {
        let mut h = [0u8; 2];
        r.read_exact(&mut h)
            .await
            .map_err(|e| format!("frame header: {e}"))?;
        if h[1] & 0x80 != 0 {
            return Err(format!("masked server frame {h:02x?}"));
        }
        let len = match h[1] & 0x7f {
            126 => u64::from(r.read_u16().await.map_err(|e| e.to_string())?),
            127 => r.read_u64().await.map_err(|e| e.to_string())?,
            n => u64::from(n),
        };
        if len > 32 << 20 {
            return Err(format!("server frame of {len} bytes"));
        }
        let mut payload = vec![0; len as usize];
        r.read_exact(&mut payload)
            .await
            .map_err(|e| format!("payload of {len}: {e}"))?;
        Ok(ServerFrame {
            fin: h[0] & 0x80 != 0,
            opcode: h[0] & 0x0f,
            payload,
        })
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| Err(format!("no frame within {limit:?}")))
}

/// Scrapes `/metrics` until `value(scrape) >= at_least` (at most 3 s: a
/// client may see its close a moment before the worker counts it);
/// returns the last value and scrape.
async fn wait_metric(
    addr: SocketAddr,
    at_least: f64,
    value: impl Fn(&str) -> f64,
) -> (f64, String) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = scrape(addr).await;
        let v = value(&m);
        if v >= at_least || Instant::now() > deadline {
            return (v, m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upgrade request for `/ws` with `extra` header lines (each ending in
/// CRLF) after the ones the upgrade needs.
fn upgrade_with(addr: SocketAddr, extra: &str) -> String {
    let base = upgrade_request(addr);
    let head = base
        .strip_suffix("\r\n")
        .expect("request ends in a blank line");
    format!("{head}{extra}\r\n")
}

/// Checks a 101 with the right accept key.
fn assert_101(head: &str, what: &str) {
    assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{what}: {head}"
    );
}

// ---------------------------------------------------------------------------
// Request heads that never end

const FLOOD: usize = 1_000;
const FLOOD_WRITERS: usize = 200;
/// Each flood connection sends 48 header lines of 8 KiB (384 KiB) and
/// never the blank line that ends the head.
const PAD_LINE: usize = 8 << 10;
const PAD_LINES: usize = 48;
/// RSS growth allowed while the flood runs.
const FLOOD_RSS_KIB: u64 = 32 * 1024;

/// What one flood connection saw.
struct FloodOutcome {
    /// Bytes it got sent before the server stopped taking them.
    sent: usize,
    /// A write failed (the server closed or reset the connection).
    write_failed: bool,
    /// What the server answered before closing, `None` if it did not
    /// close within the time allowed.
    answer: Option<Vec<u8>>,
}

/// With default flags, one session open, 1,000 connections each send a
/// request line and then 384 KiB of header lines without ever finishing
/// the head (200 writing at a time). RSS grows by at most 32 MiB (peak
/// sampled every 10 ms during the flood and for a second after it), every
/// flood connection is answered 431 or closed (anything else it is
/// answered is a failure), the open session echoes all through the flood,
/// and afterwards an upgrade carrying an 8 KiB `Cookie` still gets 101 and
/// echoes. `/metrics` counts `header_too_large`.
#[tokio::test]
async fn header_flood_is_bounded_and_answered_431_or_closed() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    for io in IO {
        let server = launch(io, &[]).await;
        let addr = server.addr;
        let mut normal = raw_upgrade(addr, &[]).await;
        echo_once(&mut normal, b"before the flood", io).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.rss_kib();
        let peak = RssPeak::start(server.pid());

        // The open session echoes all through the flood.
        let flooding = Arc::new(AtomicBool::new(true));
        let echoing = {
            let flooding = flooding.clone();
            tokio::spawn(async move {
                let mut during = 0usize;
                while flooding.load(Ordering::Relaxed) {
                    let k = during;
                    echo_once(&mut normal, &pattern(1, k, 1_000 + k % 500), "open session").await;
                    during += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (normal, during)
            })
        };

        let mut line = b"X-Pad: ".to_vec();
        line.resize(PAD_LINE - 2, b'a');
        line.extend_from_slice(b"\r\n");
        let line = Arc::new(line);
        let gate = Arc::new(Semaphore::new(FLOOD_WRITERS));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(FLOOD);
        for _ in 0..FLOOD {
            let (line, gate) = (line.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let (mut sent, mut write_failed) = (0, false);
                {
                    let _permit = gate.acquire().await.unwrap();
                    // Bounded: a server that neither reads nor closes
                    // blocks the writes (then `answer` tells).
                    let _ = tokio::time::timeout(Duration::from_secs(30), async {
                        let start = b"GET /ws HTTP/1.1\r\nHost: flood\r\n";
                        if s.write_all(start).await.is_err() {
                            write_failed = true;
                            return;
                        }
                        sent += start.len();
                        for _ in 0..PAD_LINES {
                            if s.write_all(&line).await.is_err() {
                                write_failed = true;
                                return;
                            }
                            sent += line.len();
                        }
                    })
                    .await;
                }
                let answer = closed_within(&mut s, Duration::from_secs(30)).await;
                FloodOutcome {
                    sent,
                    write_failed,
                    answer,
                }
            }));
        }
        let mut outcomes = Vec::with_capacity(FLOOD);
        for t in tasks {
            outcomes.push(t.await.expect("flood connection"));
        }
        let flood_time = started.elapsed();
        // Right after the flood: a second more of sampling.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let peak_kib = peak.stop();
        flooding.store(false, Ordering::Relaxed);
        let (mut normal, echoed_during) = tokio::time::timeout(Duration::from_secs(30), echoing)
            .await
            .expect("open session echoes after the flood")
            .expect("the open session echoed intact through the flood");

        let open: Vec<usize> = (0..FLOOD)
            .filter(|&i| outcomes[i].answer.is_none())
            .collect();
        let mut answered_431 = 0;
        for o in &outcomes {
            if let Some(a) = &o.answer {
                if a.is_empty() {
                    continue;
                }
                assert!(
                    a.starts_with(b"HTTP/1.1 431"),
                    "{io}: a flood connection was answered {:?}",
                    String::from_utf8_lossy(&a[..a.len().min(200)])
                );
                answered_431 += 1;
            }
        }
        let write_failed = outcomes.iter().filter(|o| o.write_failed).count();
        let sent: usize = outcomes.iter().map(|o| o.sent).sum();
        let growth = peak_kib.saturating_sub(before);
        eprintln!(
            "hostile {io} header flood: RSS {before} -> peak {peak_kib} KiB (+{growth} KiB); \
             {FLOOD} connections in {flood_time:?}: {answered_431} answered 431, {} closed \
             without an answer, {} still open after 30 s, {write_failed} writes failed, \
             {} MiB sent; open session echoed {echoed_during} times during the flood",
            FLOOD - answered_431 - open.len(),
            open.len(),
            sent >> 20
        );
        assert!(
            open.is_empty(),
            "{io}: {} flood connections neither answered 431 nor closed within 30 s (e.g. #{})",
            open.len(),
            open[0]
        );
        assert!(
            growth <= FLOOD_RSS_KIB,
            "{io}: RSS grew by {growth} KiB during the header flood ({before} -> {peak_kib} KiB), \
             more than {FLOOD_RSS_KIB} KiB"
        );
        assert!(echoed_during > 0, "{io}: the open session never echoed");

        // A real browser's large cookies still pass.
        let cookie = format!("Cookie: session={}\r\n", "c".repeat(8 << 10));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_with(addr, &cookie).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert_101(&head, &format!("{io}: upgrade with an 8 KiB cookie"));
        echo_once(&mut s, b"cookie monster", io).await;
        echo_once(&mut normal, b"after the flood", io).await;

        let (too_large, m) =
            wait_metric(addr, 1.0, |m| handshake_failures(m, "header_too_large")).await;
        assert!(
            too_large > 0.0,
            "{io}: header_too_large not counted: {:#?}",
            failure_lines(&m)
        );
        eprintln!("hostile {io} header flood: header_too_large {too_large}");
    }
}

// ---------------------------------------------------------------------------
// Too many header lines

/// `n` header lines in all: the five an upgrade needs and `n - 5` small
/// ones.
fn upgrade_with_lines(addr: SocketAddr, n: usize) -> String {
    let extra: String = (0..n - 5).map(|i| format!("X-Line-{i}: {i}\r\n")).collect();
    let req = upgrade_with(addr, &extra);
    let lines = req.split("\r\n").count() - 3; // the request line and the blank line's two ends
    assert_eq!(lines, n, "{req}");
    req
}

/// A valid upgrade with 101 header lines (small ones) gets 431 and is
/// closed, counted as `too_many_headers`; with exactly 100 it gets 101
/// and echoes.
#[tokio::test]
async fn more_than_100_header_lines_get_431() {
    let _serial = SERIAL.lock().await;
    for io in IO {
        let server = launch(io, &[]).await;
        let addr = server.addr;

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_with_lines(addr, 101).as_bytes())
            .await
            .unwrap();
        let answer = closed_within(&mut s, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{io}: 101 header lines: connection not closed"));
        assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{io}: 101 header lines answered {:?}",
            String::from_utf8_lossy(&answer)
        );

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_with_lines(addr, 100).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert_101(&head, &format!("{io}: 100 header lines"));
        echo_once(&mut s, b"a hundred lines", io).await;

        let (n, m) = wait_metric(addr, 1.0, |m| handshake_failures(m, "too_many_headers")).await;
        assert!(
            n >= 1.0,
            "{io}: too_many_headers not counted: {:#?}",
            failure_lines(&m)
        );
        eprintln!("hostile {io} header lines: 101 -> 431, 100 -> 101; too_many_headers {n}");
    }
}

// ---------------------------------------------------------------------------
// Connections that never finish their request

const PENDING_LIMIT: usize = 10;
const PENDING_CLIENTS: usize = 50;

/// `--max-pending-handshakes 10` (and a handshake timeout of 60 s, so that
/// only the limit can close anything here): 50 connections that send
/// nothing or half a request line, then a normal client, which still gets
/// 101 and echoes. At least 40 of the 50 are closed by the server within
/// 5 s, without an answer, and `/metrics` counts at least 40
/// `pending_limit`.
#[tokio::test]
async fn pending_handshakes_beyond_the_limit_close_the_stalest() {
    let _serial = SERIAL.lock().await;
    for io in IO {
        let limit = PENDING_LIMIT.to_string();
        let server = launch(
            io,
            &[
                "--max-pending-handshakes",
                &limit,
                "--handshake-timeout",
                "60s",
            ],
        )
        .await;
        let addr = server.addr;
        let mut pending = Vec::with_capacity(PENDING_CLIENTS);
        for i in 0..PENDING_CLIENTS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /w").await.unwrap();
            }
            pending.push(s);
        }
        // The newest connection is never the stalest: a normal client is
        // served.
        let mut ok = raw_upgrade(addr, &[]).await;
        echo_once(&mut ok, b"served despite the pending ones", io).await;

        let watched: Vec<_> = pending
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let r = closed_within(&mut s, Duration::from_secs(5)).await;
                    (r, s)
                })
            })
            .collect();
        let (mut closed, mut answered) = (0, Vec::new());
        let mut still_open = Vec::new();
        for t in watched {
            match t.await.unwrap() {
                (Some(bytes), _) => {
                    closed += 1;
                    if !bytes.is_empty() {
                        answered.push(String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
                (None, s) => still_open.push(s),
            }
        }
        let want = PENDING_CLIENTS - PENDING_LIMIT;
        let (counted, m) = wait_metric(addr, want as f64, |m| {
            handshake_failures(m, "pending_limit")
        })
        .await;
        eprintln!(
            "hostile {io} pending limit {PENDING_LIMIT}: {closed} of {PENDING_CLIENTS} closed \
             by the server, {} still open; pending_limit {counted}",
            still_open.len()
        );
        assert!(
            closed >= want,
            "{io}: only {closed} of {PENDING_CLIENTS} pending connections closed with \
             --max-pending-handshakes {PENDING_LIMIT}: {:#?}",
            failure_lines(&m)
        );
        assert!(
            answered.is_empty(),
            "{io}: connections closed for the pending limit got an answer: {answered:?}"
        );
        assert!(
            counted >= want as f64,
            "{io}: pending_limit {counted}: {:#?}",
            failure_lines(&m)
        );
        echo_once(&mut ok, b"still served", io).await;
    }
}

// ---------------------------------------------------------------------------
// Sessions that stall one byte short of a large frame

const STALLED: usize = 40;
const BIG: usize = 8 << 20;
const BUDGET: &str = "64MiB";
/// RSS growth allowed with 40 × 8 MiB frames stalled and a 64 MiB budget:
/// half as much again for the rest (the honest client's buffer, pools,
/// freed 8 MiB buffers the allocator has not returned yet). Measured:
/// +58 MiB on epoll, +61 to +79 MiB on io_uring (+76 / up to +98 MiB
/// while read buffers doubled past their charge).
const STALL_RSS_KIB: u64 = 96 * 1024;

/// `--max-buffered-bytes 64MiB`: 40 sessions each send all but the last
/// byte of one 8 MiB masked binary frame and stall (320 MiB announced).
/// RSS grows by at most 96 MiB (sampled every 10 ms from the first byte
/// to the end of the test); a fresh session connects and echoes a small
/// message; an honest client's whole 8 MiB message comes back intact
/// (within 90 s: it may have to wait for budget); at least one stalled
/// session gets Close 1013, and `/metrics` counts at least one budget
/// close.
#[tokio::test]
async fn stalled_large_frames_are_bounded_by_the_buffer_budget() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let big = Arc::new(masked(true, 2, &pattern(0, 0, BIG)));
    for io in IO {
        let server = launch(io, &["--max-buffered-bytes", BUDGET]).await;
        let addr = server.addr;
        let mut warm = raw_upgrade(addr, &[]).await;
        echo_once(&mut warm, b"warm", io).await;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.rss_kib();
        let peak = RssPeak::start(server.pid());

        let closes_1013 = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::with_capacity(STALLED);
        let mut readers = Vec::with_capacity(STALLED);
        for _ in 0..STALLED {
            let s = raw_upgrade(addr, &[]).await;
            let (mut rd, mut wr) = s.into_split();
            let big = big.clone();
            // The write half is handed back, not dropped (which would send
            // FIN): the session stays open, one byte short.
            writers.push(tokio::spawn(async move {
                let _ = wr.write_all(&big[..big.len() - 1]).await;
                wr
            }));
            let closes_1013 = closes_1013.clone();
            readers.push(tokio::spawn(async move {
                // Nothing is echoed for an incomplete frame: the first
                // frame is a Close, if anything.
                let f = read_frame_within(&mut rd, Duration::from_secs(600)).await;
                let code = f.as_ref().ok().and_then(ServerFrame::close_code);
                if code == Some(1013) {
                    closes_1013.fetch_add(1, Ordering::Relaxed);
                }
                f
            }));
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let stalled_peak = peak.peak_kib();

        // A fresh session connects and echoes.
        let fresh_started = Instant::now();
        let mut fresh = raw_upgrade(addr, &[]).await;
        fresh
            .write_all(&masked(true, 1, b"fresh and small"))
            .await
            .unwrap();
        let f = read_frame_within(&mut fresh, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{io}: fresh session: {e}"));
        assert_eq!(
            (f.opcode, &f.payload[..]),
            (1, &b"fresh and small"[..]),
            "{io}: fresh session"
        );
        let fresh_time = fresh_started.elapsed();

        // An honest client's whole 8 MiB message comes back intact.
        let honest_started = Instant::now();
        let honest = raw_upgrade(addr, &[]).await;
        let (mut hrd, mut hwr) = honest.into_split();
        let honest_writer = {
            let big = big.clone();
            tokio::spawn(async move { hwr.write_all(&big).await.map(|()| hwr) })
        };
        let echo = read_frame_within(&mut hrd, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{io}: honest 8 MiB message: {e} (1013 closes so far: {})",
                    closes_1013.load(Ordering::Relaxed)
                )
            });
        let honest_time = honest_started.elapsed();
        assert_eq!((echo.fin, echo.opcode), (true, 2), "{io}: honest echo");
        assert!(
            echo.payload == pattern(0, 0, BIG),
            "{io}: honest 8 MiB echo differs ({} bytes)",
            echo.payload.len()
        );
        let _hwr = honest_writer.await.unwrap().expect("honest write");

        tokio::time::sleep(Duration::from_secs(1)).await;
        let peak_kib = peak.stop();
        let growth = peak_kib.saturating_sub(before);
        let (closes, m) = wait_metric(addr, 1.0, |m| {
            metric(m, "ringws_budget_closes_total").unwrap_or(0.0)
        })
        .await;
        let got_1013 = closes_1013.load(Ordering::Relaxed);
        let finished = readers.iter().filter(|r| r.is_finished()).count();
        for r in readers {
            r.abort();
        }
        for w in writers {
            w.abort();
        }
        eprintln!(
            "hostile {io} stalled frames: RSS {before} -> peak {peak_kib} KiB (+{growth} KiB; \
             {} KiB after 4 s of stall); {got_1013} of {STALLED} stalled sessions got Close \
             1013 ({finished} ended); fresh echo after {fresh_time:?}, honest 8 MiB echo after \
             {honest_time:?}; budget_closes {closes}, budget_waits {:?}, buffered_bytes {:?}",
            stalled_peak.saturating_sub(before),
            metric(&m, "ringws_budget_waits_total"),
            metric(&m, "ringws_buffered_bytes"),
        );
        assert!(
            growth <= STALL_RSS_KIB,
            "{io}: RSS grew by {growth} KiB with {STALLED} stalled 8 MiB frames and \
             --max-buffered-bytes {BUDGET} ({before} -> {peak_kib} KiB), more than \
             {STALL_RSS_KIB} KiB"
        );
        assert!(
            got_1013 >= 1,
            "{io}: no stalled session got Close 1013: {:#?}",
            failure_lines(&m)
        );
        assert!(
            closes >= 1.0,
            "{io}: budget closes not counted: {:#?}",
            failure_lines(&m)
        );
    }
}

/// A permessage-deflate bomb: one masked, compressed binary frame of about
/// 1 MiB that inflates to 1 GiB of zeros (the deflate blocks of 1 MiB of
/// zeros, sync-flushed so they end on a byte boundary, 1,024 times).
fn deflate_bomb() -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
    let mut block = Vec::with_capacity(64 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut block, FlushCompress::Sync)
        .unwrap();
    let mut payload = block.repeat(1024);
    payload.truncate(payload.len() - 4); // the last sync-flush tail
    let mut frame = masked(true, 2, &payload);
    frame[0] |= 0x40; // RSV1: compressed
    frame
}

#[tokio::test]
async fn decompression_bombs_cost_at_most_the_message_limit() {
    // Four clients at once each send a message that would inflate to 1 GiB;
    // ringws stops inflating one step past --max-message-size (16 MiB) and
    // answers 1009. A worker inflates one message at a time.
    let _one = SERIAL.lock().await;
    const CLIENTS: usize = 4;
    let bomb = Arc::new(deflate_bomb());
    for io in IO {
        let server = launch(io, &["--deflate", "shared"]).await;
        let before = server.rss_kib();
        let peak = RssPeak::start(server.pid());
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (addr, bomb) = (server.addr, bomb.clone());
            clients.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let req = upgrade_request(addr).replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let head = read_head(&mut s).await;
                assert!(head.contains("permessage-deflate"), "{head}");
                // The server may close before it has read all of it.
                let _ = s.write_all(&bomb).await;
                let f = read_frame_within(&mut s, Duration::from_secs(30)).await;
                f.map(|f| f.close_code())
            }));
        }
        for c in clients {
            assert_eq!(c.await.unwrap(), Ok(Some(1009)), "{io}");
        }
        let grew = peak.stop().saturating_sub(before);
        println!("{io}: {CLIENTS} bombs of 1 GiB: RSS peak +{grew} KiB");
        // The limit (16 MiB), the bombs' frames as they arrive (~1 MiB
        // each), the inflater: 22 to 31 MiB measured, against 1 GiB each.
        assert!(grew < 48 << 10, "{io}: RSS grew by {grew} KiB");
        // Still serving.
        let mut s = raw_upgrade(server.addr, &masked(true, 1, b"after")).await;
        assert_eq!(read_frame(&mut s).await.payload, b"after", "{io}");
    }
}
