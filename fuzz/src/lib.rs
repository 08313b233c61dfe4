//! What the fuzz targets share: an in-memory client that drives
//! `ringws::standalone::Standalone` over a `tokio::io::duplex`, a reference
//! model of RFC 6455 that predicts the server's answer to any client byte
//! stream, a strict parser of what the server sent, and an allocation guard.
//!
//! The model is written from the RFC (and ringws' README), not from ringws'
//! code: it is the oracle. Where ringws makes a documented choice the RFC
//! leaves open, the model follows the README (a fragmented message echoed
//! whole, in one frame, once its last fragment is in,
//! Close 1009 as soon as an oversize header is seen, the peer's close code
//! echoed with an empty reason).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use ringws::standalone::Standalone;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Allocation guard

/// Counts live heap bytes and their peak, and the largest single
/// allocation, so a target can check that what the server allocated for one
/// connection is bounded (a length header believed, a buffer grown without
/// bound). libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc
/// hooks; this works with `--sanitizer none` too. It only records: an
/// allocation too large to be made at all aborts in the allocator anyway.
pub struct Guard;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Accounts for `added` more live bytes in an allocation of `size` bytes.
fn grew(size: usize, added: usize) {
    LARGEST.fetch_max(size, Relaxed);
    let live = LIVE.fetch_add(added, Relaxed) + added;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size, new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

/// Largest single allocation allowed for one connection (inputs are at
/// most 64 KiB, `max_message_size` is 4 KiB, hyper's header buffer ~400 KiB).
pub const MAX_ALLOCATION: usize = 1 << 20;

/// Heap use while a closure ran.
#[derive(Copy, Clone, Debug)]
pub struct HeapUse {
    /// Peak of live heap bytes above what was live at the start.
    pub peak: usize,
    /// Largest single allocation (or reallocation) made.
    pub largest: usize,
}

/// Runs `f` and returns its output with the heap it used.
pub fn heap_during<T>(f: impl FnOnce() -> T) -> (T, HeapUse) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    LARGEST.store(0, Relaxed);
    let out = f();
    let heap = HeapUse {
        peak: PEAK.load(Relaxed).saturating_sub(base),
        largest: LARGEST.load(Relaxed),
    };
    (out, heap)
}

// ---------------------------------------------------------------------------
// Driving a connection

/// `--max-message-size` while fuzzing: small, so memory stays bounded and
/// the 1009 paths are reached.
pub const MAX_MESSAGE: usize = 4096;

/// The upgrade request every session input starts with.
pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// `Sec-WebSocket-Accept` for [`UPGRADE`]'s key (RFC 6455 §1.3).
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

struct Harness {
    rt: tokio::runtime::Runtime,
    server: Standalone,
}

thread_local! {
    static HARNESS: Harness = Harness {
        // Paused clock: timers (hyper's header timeout, the close timeout)
        // fire as soon as nothing else can run, so runs are fast and
        // deterministic.
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime"),
        server: Standalone::new(ringws::Config {
            max_message_size: MAX_MESSAGE,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            ..ringws::Config::default()
        }),
    };
}

/// Makes the thread-local harness exist (so its allocations are not counted
/// against the first input).
pub fn init() {
    HARNESS.with(|_| {});
}

/// How the client sends its bytes.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Sent first, alone or with the first chunk.
    pub request: &'a [u8],
    /// The rest of the stream, written chunk by chunk with the server polled
    /// in between (so it sees partial frames).
    pub chunks: Vec<&'a [u8]>,
    /// Send the first chunk in the same write as the request; otherwise wait
    /// for the response head (or EOF) first.
    pub pipelined: bool,
    /// Send EOF right after the last chunk, without waiting for the
    /// response head.
    pub eof_early: bool,
}

/// Serves one connection that sends `plan`, then EOF; returns all the server
/// wrote until it closed, and the heap used while serving. The buffer that
/// collects the server's bytes is reserved before measuring, so the heap
/// figures are the server's (and the in-memory pipe's). Panics if the
/// server has not finished within a minute of (virtual) time.
pub fn exchange(plan: &Plan<'_>) -> (Vec<u8>, HeapUse) {
    let mut out = Vec::with_capacity(out_limit(plan));
    let ((), heap) = heap_during(|| {
        HARNESS.with(|h| {
            let local = tokio::task::LocalSet::new();
            local.block_on(&h.rt, async {
                let run = drive(&h.server, plan, &mut out);
                if tokio::time::timeout(Duration::from_secs(60), run)
                    .await
                    .is_err()
                {
                    panic!("connection not finished after 60 s (virtual time)");
                }
            })
        })
    });
    (out, heap)
}

/// Most bytes the server may write for `plan`: a little more than it reads
/// (HTTP heads, Close frames), plus a response per request head in the
/// input (a /metrics page is ~2 KiB). A generous bound that catches a
/// runaway writer.
fn out_limit(plan: &Plan<'_>) -> usize {
    let input_len = plan.request.len() + plan.chunks.iter().map(|c| c.len()).sum::<usize>();
    let heads: usize = std::iter::once(plan.request)
        .chain(plan.chunks.iter().copied())
        .map(head_ends)
        .sum();
    4 * input_len + (64 << 10) + heads * (4 << 10)
}

async fn drive(server: &Standalone, plan: &Plan<'_>, out: &mut Vec<u8>) {
    let (client, conn) = tokio::io::duplex(64 << 10);
    let (mut rd, mut wr) = tokio::io::split(client);
    let head_seen = Rc::new(Cell::new(false));
    let notify = Rc::new(tokio::sync::Notify::new());
    let input_len = plan.request.len() + plan.chunks.iter().map(|c| c.len()).sum::<usize>();
    let out_limit = out.capacity();
    let write = async {
        let mut chunks = plan.chunks.iter();
        let first: Vec<u8> = if plan.pipelined {
            let mut v = plan.request.to_vec();
            v.extend_from_slice(chunks.next().copied().unwrap_or_default());
            v
        } else {
            plan.request.to_vec()
        };
        if wr.write_all(&first).await.is_err() {
            return;
        }
        if !plan.pipelined {
            while !head_seen.get() {
                notify.notified().await;
            }
        }
        for chunk in chunks {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
            // Let the server parse what it has.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
        // EOF only once the server has answered, unless asked otherwise:
        // hyper (with its default `half_close(false)`) drops a request
        // whose connection reaches EOF before the answer is written.
        while !plan.eof_early && !head_seen.get() {
            notify.notified().await;
        }
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = rd.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            assert!(
                out.len() + n <= out_limit,
                "server wrote over {out_limit} bytes for {input_len} bytes of input"
            );
            out.extend_from_slice(&buf[..n]); // within capacity: no allocation
            if !head_seen.get() && out.windows(4).any(|w| w == b"\r\n\r\n") {
                head_seen.set(true);
                notify.notify_one();
            }
        }
        head_seen.set(true);
        notify.notify_one();
    };
    tokio::join!(server.serve(conn), write, read);
}

/// How many request heads could end in `data` (a `\n` followed by `\n` or
/// `\r\n`).
fn head_ends(data: &[u8]) -> usize {
    (0..data.len())
        .filter(|&i| {
            let rest = &data[i..];
            rest.starts_with(b"\n\n") || rest.starts_with(b"\n\r\n")
        })
        .count()
}

/// Splits `data` at the points `cuts` (taken modulo the length, sorted).
pub fn split_at<'a>(data: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % data.len()).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

// ---------------------------------------------------------------------------
// The reference model

/// A frame as the server should send it (or did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// How the server should end the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// No Close frame: the client's stream ended (EOF, perhaps mid-frame).
    Silent,
    /// A Close frame with exactly this payload (answering the client's Close).
    Echo(Vec<u8>),
    /// A Close frame with this code and some valid UTF-8 reason (a failure).
    Fail(u16),
}

/// What the server must send after its `101` for a client byte stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    pub frames: Vec<WireFrame>,
    pub ending: Ending,
}

/// Close codes a peer may send (RFC 6455 §7.4, as fastwebsockets' table:
/// 1000-1003, 1007-1013, 3000-4999).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// How far a stream of text fragments is from valid UTF-8.
#[derive(Debug, PartialEq, Eq)]
enum Utf8State {
    Valid,
    /// Valid so far, but ends inside a code point.
    Incomplete,
    /// No continuation can make it valid.
    Invalid,
}

fn utf8_state(bytes: &[u8]) -> Utf8State {
    match std::str::from_utf8(bytes) {
        Ok(_) => Utf8State::Valid,
        Err(e) if e.error_len().is_none() => Utf8State::Incomplete,
        Err(_) => Utf8State::Invalid,
    }
}

/// Predicts the server's frames for the client byte stream `wire` (what
/// follows the upgrade request), with `--max-message-size` `max`.
pub fn expect(wire: &[u8], max: usize) -> Expected {
    let mut frames = Vec::new();
    let fail = |frames, code| Expected {
        frames,
        ending: Ending::Fail(code),
    };
    // A fragmented message in progress: is it text, and its bytes so far.
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut rest = wire;
    loop {
        if rest.len() < 2 {
            break;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x70 != 0 {
            return fail(frames, 1002); // RSV bits without an extension
        }
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return fail(frames, 1002); // reserved opcode
        }
        let masked = b1 & 0x80 != 0;
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + extra + if masked { 4 } else { 0 };
        if rest.len() < head {
            break;
        }
        let len: u64 = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
            _ => u64::from_be_bytes(rest[2..10].try_into().unwrap()),
        };
        let control = opcode >= 8;
        if control && !fin {
            return fail(frames, 1002);
        }
        if control && len > 125 {
            return fail(frames, 1002);
        }
        if len > max as u64 {
            return fail(frames, 1009); // decided on the header alone
        }
        let len = len as usize;
        if rest.len() < head + len {
            break;
        }
        let mut payload = rest[head..head + len].to_vec();
        if masked {
            let key = &rest[head - 4..head];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        rest = &rest[head + len..];
        if opcode == 1 && fin && std::str::from_utf8(&payload).is_err() {
            return fail(frames, 1007);
        }
        if !masked {
            return fail(frames, 1002); // client frames must be masked
        }
        match opcode {
            1 | 2 => {
                if message.is_some() {
                    return fail(frames, 1002); // new message inside a fragmented one
                }
                if !fin {
                    if opcode == 1 && utf8_state(&payload) == Utf8State::Invalid {
                        return fail(frames, 1007);
                    }
                    message = Some((opcode == 1, payload));
                    continue;
                }
            }
            0 => {
                let Some((text, sofar)) = message.as_mut() else {
                    return fail(frames, 1002); // continuation of nothing
                };
                sofar.extend_from_slice(&payload);
                if sofar.len() > max {
                    return fail(frames, 1009);
                }
                if *text {
                    let state = utf8_state(sofar);
                    if state == Utf8State::Invalid || (fin && state != Utf8State::Valid) {
                        return fail(frames, 1007);
                    }
                }
                if !fin {
                    continue;
                }
                let (text, whole) = message.take().expect("in progress");
                frames.push(WireFrame {
                    fin: true,
                    opcode: if text { 1 } else { 2 },
                    payload: whole,
                });
                continue;
            }
            9 => {
                frames.push(WireFrame {
                    fin: true,
                    opcode: 10,
                    payload,
                });
                continue;
            }
            10 => continue,
            _ => {
                // Close.
                return match payload.as_slice() {
                    [] => Expected {
                        frames,
                        ending: Ending::Echo(Vec::new()),
                    },
                    [_] => fail(frames, 1002),
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !close_code_allowed(code) {
                            fail(frames, 1002)
                        } else if std::str::from_utf8(reason).is_err() {
                            fail(frames, 1007)
                        } else {
                            Expected {
                                frames,
                                ending: Ending::Echo(code.to_be_bytes().to_vec()),
                            }
                        }
                    }
                };
            }
        }
        frames.push(WireFrame {
            fin,
            opcode,
            payload,
        });
    }
    Expected {
        frames,
        ending: Ending::Silent,
    }
}

// ---------------------------------------------------------------------------
// Reading what the server sent

/// Splits off an HTTP response head; returns (status, head, rest).
pub fn response_head(out: &[u8]) -> Option<(u16, &str, &[u8])> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&out[..end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, head, &out[end..]))
}

/// Parses server frames strictly: no mask, no RSV bits, minimal lengths,
/// control frames unfragmented and at most 125 bytes, nothing after a Close.
/// A trailing partial frame is an error too (the server closes only after
/// whole frames).
pub fn server_frames(mut out: &[u8]) -> Result<Vec<WireFrame>, String> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        if frames.last().is_some_and(|f: &WireFrame| f.opcode == 8) {
            return Err(format!("{} bytes after the server's Close", out.len()));
        }
        if out.len() < 2 {
            return Err("partial frame header".into());
        }
        let (b0, b1) = (out[0], out[1]);
        if b0 & 0x70 != 0 {
            return Err(format!("RSV bits in a server frame: {b0:#04x}"));
        }
        if b1 & 0x80 != 0 {
            return Err("masked server frame".into());
        }
        let (len, head) = match b1 & 0x7f {
            126 if out.len() >= 4 => (usize::from(u16::from_be_bytes([out[2], out[3]])), 4),
            127 if out.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(out[2..10].try_into().unwrap()))
                    .map_err(|_| "length over usize")?,
                10,
            ),
            126 | 127 => return Err("partial frame header".into()),
            n => (usize::from(n), 2),
        };
        let minimal = match head {
            4 => len >= 126,
            10 => len > 0xffff,
            _ => true,
        };
        if !minimal {
            return Err(format!("non-minimal length encoding for {len} bytes"));
        }
        if out.len() < head + len {
            return Err(format!(
                "partial frame: {len} bytes announced, {} sent",
                out.len() - head
            ));
        }
        let frame = WireFrame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload: out[head..head + len].to_vec(),
        };
        if !matches!(frame.opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return Err(format!("server sent opcode {}", frame.opcode));
        }
        if frame.opcode >= 8 && (!frame.fin || len > 125) {
            return Err(format!("bad control frame {frame:?}"));
        }
        frames.push(frame);
        out = &out[head + len..];
    }
    Ok(frames)
}

/// Codes the server itself may close with.
pub fn server_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007 | 1009)
}

/// Checks the server's frames against the model; panics with a readable
/// account on any difference.
pub fn check(expected: &Expected, got: &[WireFrame], context: &dyn Fn() -> String) {
    let (data, close) = match got.last() {
        Some(f) if f.opcode == 8 => (&got[..got.len() - 1], Some(f)),
        _ => (got, None),
    };
    if data != expected.frames.as_slice() {
        let first = data
            .iter()
            .zip(&expected.frames)
            .position(|(a, b)| a != b)
            .unwrap_or(data.len().min(expected.frames.len()));
        panic!(
            "echo differs at frame {first}: server sent {} frames, model expects {}\n\
             server: {:?}\nmodel:  {:?}\n{}",
            data.len(),
            expected.frames.len(),
            data.get(first),
            expected.frames.get(first),
            context()
        );
    }
    match (&expected.ending, close) {
        (Ending::Silent, None) => {}
        (Ending::Echo(payload), Some(f)) if &f.payload == payload => {}
        (Ending::Fail(code), Some(f)) => {
            let got_code =
                (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
            assert!(
                got_code == Some(*code),
                "server closed with {got_code:?} ({:?}), model expects {code}\n{}",
                String::from_utf8_lossy(f.payload.get(2..).unwrap_or_default()),
                context()
            );
            assert!(server_code_allowed(*code));
            assert!(
                std::str::from_utf8(&f.payload[2..]).is_ok(),
                "close reason not UTF-8"
            );
        }
        (want, got) => panic!(
            "ending differs: model {want:?}, server {:?}\n{}",
            got,
            context()
        ),
    }
}

/// Hex dump for panic messages.
pub fn hex(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(256)];
    let mut s: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    if bytes.len() > shown.len() {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut v = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    fn serve(wire: &[u8], pipelined: bool) -> Vec<WireFrame> {
        let plan = Plan {
            request: UPGRADE,
            chunks: split_at(wire, &[3, 7]),
            pipelined,
            eof_early: false,
        };
        let (out, _) = exchange(&plan);
        let (status, _, rest) = response_head(&out).expect("head");
        assert_eq!(status, 101);
        server_frames(rest).unwrap()
    }

    /// The harness and the model agree with the README on known streams,
    /// and the checker rejects a wrong answer (it is not vacuous).
    #[test]
    fn model_and_harness_agree_on_known_streams() {
        let mut wire = masked(false, 1, "h\u{e9}".as_bytes()[..2].as_ref());
        wire.extend(masked(true, 0, &"h\u{e9}".as_bytes()[2..]));
        wire.extend(masked(true, 9, b"p"));
        wire.extend(masked(true, 2, &[0; 300]));
        wire.extend(masked(true, 8, &4000u16.to_be_bytes()));
        let want = expect(&wire, MAX_MESSAGE);
        // The fragmented text is echoed whole, then the pong and the binary.
        assert_eq!(want.frames.len(), 3);
        assert_eq!(want.ending, Ending::Echo(4000u16.to_be_bytes().to_vec()));
        for pipelined in [false, true] {
            let got = serve(&wire, pipelined);
            check(&want, &got, &|| String::new());
        }
        let wrong = Expected {
            frames: want.frames[..2].to_vec(),
            ending: want.ending.clone(),
        };
        let got = serve(&wire, true);
        assert!(std::panic::catch_unwind(|| check(&wrong, &got, &|| String::new())).is_err());
    }

    #[test]
    fn model_failures() {
        let max = MAX_MESSAGE;
        let code = |wire: &[u8]| expect(wire, max).ending;
        assert_eq!(code(&masked(true, 1, b"\xff")), Ending::Fail(1007));
        assert_eq!(code(&masked(true, 3, b"")), Ending::Fail(1002));
        assert_eq!(code(&masked(true, 0, b"x")), Ending::Fail(1002));
        assert_eq!(
            code(&masked(true, 2, &vec![0; max + 1])),
            Ending::Fail(1009)
        );
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(code(&huge), Ending::Fail(1009));
        assert_eq!(
            code(&masked(true, 8, &1005u16.to_be_bytes())),
            Ending::Fail(1002)
        );
        assert_eq!(code(&masked(true, 2, b"abc")[..5]), Ending::Silent);
        let got = serve(&huge, false);
        check(&expect(&huge, max), &got, &|| String::new());
    }
}
