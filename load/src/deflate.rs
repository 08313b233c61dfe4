//! Client-side permessage-deflate (RFC 7692), for `--deflate`: the offer a
//! browser makes, the server's answer parsed into what each side agreed,
//! a compressor for what the client sends and an inflater for what it
//! receives, and a process-wide note of what servers answered.
//!
//! The offer is Chromium's, `permessage-deflate; client_max_window_bits`.
//! Every message the client sends is compressed, whatever its size (as
//! Chromium does), at `--deflate-level` (default 6, zlib's default and
//! Chromium's), with context takeover unless the answer has
//! `client_no_context_takeover`, in a window of `client_max_window_bits`
//! (default 15). A received message with RSV1 is inflated with a window of
//! `server_max_window_bits` (default 15), keeping the inflater's context
//! from message to message unless the answer has
//! `server_no_context_takeover`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// What the client offers: what Chromium offers.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The tail a sender strips from each compressed message (RFC 7692 §7.2.1)
/// and the receiver appends before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest inflated message accepted (as the frame limit of `ws`).
const MAX_INFLATED: usize = 64 << 20;

/// The RSV1 bit of a frame's first byte: "compressed".
pub const RSV1: u8 = 0x40;

/// What the server's answer agreed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The answer as the server wrote it.
    pub answer: String,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The client's compression window (bits).
    pub client_bits: u8,
    /// The server resets its compressor after each message, so the client
    /// may reset its inflater.
    pub server_no_context_takeover: bool,
    /// The server's compression window (bits).
    pub server_bits: u8,
}

/// Parses the values of the response's `Sec-WebSocket-Extensions` headers
/// (joined with ", "). `Ok(None)`: the server declined (no extension).
/// An answer the offer does not allow (another extension, an unknown or
/// repeated parameter, a window out of 8..=15, `client_max_window_bits=8`
/// which zlib's raw deflate cannot honour) fails the connection, as RFC
/// 7692 §5 asks of a client.
pub fn parse_answer(value: &str) -> Result<Option<Agreed>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.contains(',') {
        return Err(format!("server answered several extensions: {value:?}"));
    }
    let mut parts = value.split(';').map(str::trim);
    let name = parts.next().unwrap_or_default();
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return Err(format!(
            "server answered an extension not offered: {value:?}"
        ));
    }
    let mut agreed = Agreed {
        answer: value.to_owned(),
        client_no_context_takeover: false,
        client_bits: 15,
        server_no_context_takeover: false,
        server_bits: 15,
    };
    let mut seen = [false; 4];
    for param in parts {
        let (name, arg) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let bits = || {
            arg.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
                .ok_or_else(|| format!("bad {name} in the server's answer {value:?}"))
        };
        let i = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if arg.is_none() => {
                agreed.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" if arg.is_none() => {
                agreed.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                agreed.server_bits = bits()?;
                2
            }
            "client_max_window_bits" => {
                agreed.client_bits = bits()?;
                if agreed.client_bits == 8 {
                    return Err(format!(
                        "the server asks client_max_window_bits=8, which zlib's raw deflate \
                         cannot honour: {value:?}"
                    ));
                }
                3
            }
            _ => return Err(format!("unexpected parameter {param:?} in {value:?}")),
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("parameter {name} repeated in {value:?}"));
        }
    }
    Ok(Some(agreed))
}

/// The client's compressor.
pub struct Deflater {
    zlib: Compress,
    reset: bool,
}

impl Deflater {
    pub fn new(agreed: &Agreed, level: u32) -> Self {
        Deflater {
            zlib: Compress::new_with_window_bits(
                Compression::new(level),
                false,
                agreed.client_bits,
            ),
            reset: agreed.client_no_context_takeover,
        }
    }

    /// Appends `plain` compressed (sync flush, tail stripped) to `out`.
    pub fn compress(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut input = plain;
        loop {
            out.reserve(input.len() / 2 + 64);
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(input, out, FlushCompress::Sync)
                .expect("deflate with valid parameters does not fail");
            input = &input[(self.zlib.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // An empty message: one empty stored block's first byte (§7.2.3.6).
            out.push(0x00);
        }
        if self.reset {
            self.zlib.reset();
        }
    }
}

/// The client's inflater, with the buffer it inflates into.
pub struct Inflater {
    zlib: Decompress,
    reset: bool,
    out: Vec<u8>,
}

impl Inflater {
    pub fn new(agreed: &Agreed) -> Self {
        Inflater {
            // flate2 takes 9..=15; a wider window reads a narrower one.
            zlib: Decompress::new_with_window_bits(false, agreed.server_bits.max(9)),
            reset: agreed.server_no_context_takeover,
            out: Vec::new(),
        }
    }

    /// One compressed message (tail stripped), inflated.
    pub fn inflate(&mut self, data: &[u8]) -> Result<&[u8], String> {
        self.out.clear();
        for mut input in [data, &TAIL[..]] {
            loop {
                if self.out.len() == self.out.capacity() {
                    self.out.reserve((input.len() * 4).max(256));
                }
                let before = self.zlib.total_in();
                self.zlib
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|e| format!("inflating a message from the server: {e}"))?;
                input = &input[(self.zlib.total_in() - before) as usize..];
                if self.out.len() > MAX_INFLATED {
                    return Err("a compressed message inflated past 64 MiB".into());
                }
                if input.is_empty() && self.out.len() < self.out.capacity() {
                    break;
                }
            }
        }
        if self.reset {
            self.zlib.reset(false);
        }
        Ok(&self.out)
    }
}

/// Connections that offered deflate, and those on which it was agreed.
static OFFERED: AtomicU64 = AtomicU64::new(0);
static AGREED: AtomicU64 = AtomicU64::new(0);
/// The first answer seen, and whether any later one differed.
static ANSWER: Mutex<Option<(String, bool)>> = Mutex::new(None);

/// Notes one connection's outcome (the answer, if deflate was agreed).
pub fn note(agreed: Option<&Agreed>) {
    OFFERED.fetch_add(1, Ordering::Relaxed);
    if let Some(a) = agreed {
        AGREED.fetch_add(1, Ordering::Relaxed);
        let mut slot = ANSWER.lock().expect("answer");
        match slot.as_mut() {
            None => *slot = Some((a.answer.clone(), false)),
            Some((first, differ)) => *differ |= *first != a.answer,
        }
    }
}

/// Forgets what was noted (idle: the warm-up connection's outcome).
pub fn reset_notes() {
    OFFERED.store(0, Ordering::Relaxed);
    AGREED.store(0, Ordering::Relaxed);
    *ANSWER.lock().expect("answer") = None;
}

/// Adds what a worker process noted.
pub fn absorb(offered: u64, agreed: u64, answer: Option<String>) {
    OFFERED.fetch_add(offered, Ordering::Relaxed);
    AGREED.fetch_add(agreed, Ordering::Relaxed);
    if let Some(answer) = answer {
        let mut slot = ANSWER.lock().expect("answer");
        match slot.as_mut() {
            None => *slot = Some((answer, false)),
            Some((first, differ)) => *differ |= *first != answer,
        }
    }
}

/// (connections that offered, that agreed, the first answer and whether
/// others differed).
pub fn summary() -> (u64, u64, Option<(String, bool)>) {
    (
        OFFERED.load(Ordering::Relaxed),
        AGREED.load(Ordering::Relaxed),
        ANSWER.lock().expect("answer").clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = parse_answer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )
        .unwrap()
        .unwrap();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        assert_eq!((a.client_bits, a.server_bits), (15, 15));
        let a = parse_answer(
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=9",
        )
        .unwrap()
        .unwrap();
        assert!(!a.server_no_context_takeover && a.client_no_context_takeover);
        assert_eq!(a.server_bits, 9);
        let a = parse_answer("permessage-deflate; client_max_window_bits=\"10\"")
            .unwrap()
            .unwrap();
        assert_eq!(a.client_bits, 10);
        assert_eq!(parse_answer("").unwrap(), None);
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert!(parse_answer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_with_and_without_context() {
        let text = b"{\"user\":\"ana\",\"text\":\"hello there, hello again\"}".repeat(20);
        for (answer, bits) in [
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                15,
            ),
            (
                "permessage-deflate; client_max_window_bits=9; server_max_window_bits=9",
                9,
            ),
        ] {
            let mut a = parse_answer(answer).unwrap().unwrap();
            // Both ends of the test use the client's side of the agreement.
            a.server_no_context_takeover = a.client_no_context_takeover;
            a.server_bits = bits;
            let mut d = Deflater::new(&a, 6);
            let mut i = Inflater::new(&a);
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let mut out = Vec::new();
                d.compress(&text, &mut out);
                assert!(!out.ends_with(&TAIL));
                sizes.push(out.len());
                assert_eq!(i.inflate(&out).unwrap(), &text[..]);
            }
            if a.client_no_context_takeover {
                assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
            } else {
                assert!(sizes[1] < sizes[0], "context takeover helps: {sizes:?}");
            }
        }
        let a = parse_answer("permessage-deflate").unwrap().unwrap();
        let mut out = Vec::new();
        Deflater::new(&a, 6).compress(b"", &mut out);
        assert_eq!(Inflater::new(&a).inflate(&out).unwrap(), b"");
    }
}
