//! permessage-deflate (RFC 7692) in shared mode: the offer a client makes
//! and the answer, and each worker's one compressor and one inflater.
//!
//! Shared mode holds nothing of zlib's per connection, so an idle
//! connection costs what it costs without compression. The server answers
//! every offer it accepts with `server_no_context_takeover` (each message
//! it sends is compressed on its own) and `client_no_context_takeover` (the
//! client does the same; RFC 7692 §7.1.1.2 lets a server ask it even when
//! the offer did not, and browsers honour it), so one inflater, reset per
//! message, reads every client of the worker, and one compressor, reset per
//! message, writes for all of them.
//!
//! Inflating stops one byte past `--max-message-size` (the session answers
//! 1009), so a small compressed message cannot make the worker hold more
//! than the limit (a decompression bomb).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{frame_header, parse_header};

/// What was agreed with one client: the window the server compresses
/// with. Copied into its session (a flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The client asked for `server_max_window_bits` below 15: the server
    /// compresses with a 512-byte window (9 bits, the smallest zlib's raw
    /// deflate has), which fits any value a client may ask.
    pub narrow: bool,
}

/// The answer to an accepted offer with the default window.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer to an accepted offer with `server_max_window_bits`.
const ANSWER_NARROW: &str = "permessage-deflate; server_no_context_takeover; \
                             client_no_context_takeover; server_max_window_bits=9";

/// Messages shorter than this are sent uncompressed: deflate saves a few
/// bytes of a short message at the cost of a compressor reset and a call.
pub(crate) const COMPRESS_MIN: usize = 128;

/// The window bits a narrow agreement compresses with.
const NARROW_BITS: u8 = 9;

/// The compression level: 1, zlib's fastest. CPU per message is what a pod
/// pays for; the first levels differ little in size on short messages.
const LEVEL: u32 = 1;

/// Chooses the first acceptable permessage-deflate offer among the values
/// of the request's `Sec-WebSocket-Extensions` headers. An offer with an
/// unknown, repeated or malformed parameter is declined, and the next one
/// tried; none acceptable means no compression, never a failed handshake.
/// Returns the agreement and the header value to answer with.
pub(crate) fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Option<(Agreed, &'static str)> {
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in value.split(',') {
            if let Some(agreed) = accept(offer) {
                let answer = if agreed.narrow { ANSWER_NARROW } else { ANSWER };
                return Some((agreed, answer));
            }
        }
    }
    None
}

/// One offer (`permessage-deflate; param[=value]; ...`), if acceptable.
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut narrow = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let (i, ok) = match name {
            "server_no_context_takeover" => (0, value.is_none()),
            "client_no_context_takeover" => (1, value.is_none()),
            "server_max_window_bits" => {
                // 8 is declined: zlib's raw deflate cannot compress with
                // less than 9 bits, which such a client could not read.
                let bits = value.and_then(window_bits);
                narrow = bits.is_some_and(|b| b < 15);
                (2, bits.is_some_and(|b| b >= NARROW_BITS))
            }
            // A hint for the server: the inflater, reset per message,
            // reads any window up to 15 bits.
            "client_max_window_bits" => (3, value.is_none_or(|v| window_bits(v).is_some())),
            _ => return None,
        };
        if !ok || std::mem::replace(&mut seen[i], true) {
            return None;
        }
    }
    Some(Agreed { narrow })
}

/// A parameter value, without the quotes a quoted-string may have.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// A window-bits value: 8 to 15, digits only.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Why a message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the limit (1009).
    TooBig,
    /// Not a valid deflate stream (1007, as invalid payload data).
    Invalid,
}

/// The tail a sender strips from each compressed message (RFC 7692 §7.2.1)
/// and the receiver appends before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A worker's inflater, reset per message; made on first use, so a
/// worker that never inflates holds none.
#[derive(Default)]
pub(crate) struct Inflater {
    zlib: Option<Decompress>,
    /// An emptied output buffer, kept for the next message.
    spare: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

/// The first output buffer of a message holds this many times its
/// compressed size (at least [`KEEP_MAX`]): what text usually inflates to.
const FIRST_RATIO: usize = 4;

/// Above this, an output buffer is freed rather than kept.
const KEEP_MAX: usize = 64 << 10;

impl Inflater {
    /// Inflates one message (`compressed`: its payload, all frames joined)
    /// into a buffer of at most `max` bytes; hand the buffer back with
    /// [`Inflater::give`].
    pub(crate) fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, InflateError> {
        self.zlib
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, 15))
            .reset(false);
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        let first = compressed.len().saturating_mul(FIRST_RATIO).max(KEEP_MAX);
        out.reserve_exact(first.min(max + 1));
        let result = self
            .run(compressed, max, &mut out)
            .and_then(|()| self.run(&TAIL, max, &mut out));
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                self.give(out);
                Err(e)
            }
        }
    }

    /// Feeds `input` until all of it is consumed and no more output comes.
    fn run(&mut self, mut input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let zlib = self.zlib.as_mut().expect("made by inflate");
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                // Past the first guess, straight to the limit (one byte
                // past it tells "exactly max" from "more"): one copy, and
                // pages are touched, so counted in RSS, only as bytes
                // arrive. Doubling would leave each smaller buffer behind
                // in the allocator: a bomb cost 3× the limit so.
                out.reserve_exact(max + 1 - out.len());
            }
            let (before_in, before_out) = (zlib.total_in(), zlib.total_out());
            let status = zlib
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            let used = (zlib.total_in() - before_in) as usize;
            let produced = zlib.total_out() != before_out;
            input = &input[used..];
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if matches!(status, Status::StreamEnd) {
                // A final block: anything after it is not deflate.
                return if input.is_empty() || input == &TAIL[..input.len().min(4)] {
                    Ok(())
                } else {
                    Err(InflateError::Invalid)
                };
            }
            if input.is_empty() && !produced && out.len() < out.capacity() {
                return Ok(());
            }
            if used == 0 && !produced && out.len() < out.capacity() {
                return Err(InflateError::Invalid);
            }
        }
    }

    /// Takes back a buffer [`Inflater::inflate`] returned (kept if small).
    pub(crate) fn give(&mut self, mut out: Vec<u8>) {
        if out.capacity() <= KEEP_MAX && out.capacity() > self.spare.capacity() {
            out.clear();
            self.spare = out;
        }
    }
}

/// A worker's compressors (one per window size in use), reset per
/// message, and the buffer they compress into.
#[derive(Default)]
pub(crate) struct Deflater {
    wide: Option<Compress>,
    narrow: Option<Compress>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// Appends `payload` as one message frame to `out`: compressed (RSV1
    /// set) if it is at least [`COMPRESS_MIN`] bytes and compresses to
    /// fewer bytes, else as it is.
    pub(crate) fn put_frame(
        &mut self,
        out: &mut BytesMut,
        opcode: u8,
        payload: &[u8],
        agreed: Agreed,
    ) {
        let Some(compressed) = self.compress(payload, agreed) else {
            crate::frame::put_frame(out, opcode, payload);
            return;
        };
        let (mut header, n) = frame_header(opcode, compressed.len());
        header[0] |= RSV1;
        out.reserve(n + compressed.len());
        out.put_slice(&header[..n]);
        out.put_slice(compressed);
    }

    /// Appends the frames in `frames` (unmasked, unfragmented, one after
    /// another: what `Sender`s queue) to `out`, each compressed as
    /// [`Deflater::put_frame`] would.
    pub(crate) fn put_frames(&mut self, mut frames: &[u8], out: &mut BytesMut, agreed: Agreed) {
        while !frames.is_empty() {
            let (opcode, header, len) = parse_header(frames);
            let (frame, rest) = frames.split_at(header + len);
            self.put_frame(out, opcode, &frame[header..], agreed);
            frames = rest;
        }
    }

    /// A published frame (unmasked, unfragmented: `crate::frame`),
    /// compressed once for every subscriber that agreed on `agreed`'s
    /// window; `None` if it is not worth it (see [`Deflater::put_frame`]).
    pub(crate) fn compress_frame(&mut self, frame: &[u8], agreed: Agreed) -> Option<Arc<[u8]>> {
        let (opcode, header, _) = parse_header(frame);
        let compressed = self.compress(&frame[header..], agreed)?;
        let (mut header, n) = frame_header(opcode, compressed.len());
        header[0] |= RSV1;
        Some(header[..n].iter().chain(compressed).copied().collect())
    }

    /// `payload` compressed on its own, without the sync-flush tail, if it
    /// is at least [`COMPRESS_MIN`] bytes and shrinks.
    fn compress(&mut self, payload: &[u8], agreed: Agreed) -> Option<&[u8]> {
        if payload.len() < COMPRESS_MIN {
            return None;
        }
        if self.buf.capacity() > KEEP_MAX {
            self.buf = Vec::new();
        }
        let zlib = if agreed.narrow {
            self.narrow.get_or_insert_with(|| {
                Compress::new_with_window_bits(Compression::new(LEVEL), false, NARROW_BITS)
            })
        } else {
            self.wide.get_or_insert_with(|| {
                Compress::new_with_window_bits(Compression::new(LEVEL), false, 15)
            })
        };
        zlib.reset();
        let buf = &mut self.buf;
        buf.clear();
        let mut input = payload;
        loop {
            // Deflate's worst case is a few bytes per 16 KiB over the input.
            buf.reserve(input.len() / 2 + 64);
            let before = zlib.total_in();
            zlib.compress_vec(input, buf, FlushCompress::Sync)
                .expect("deflate with valid parameters does not fail");
            input = &input[(zlib.total_in() - before) as usize..];
            if input.is_empty() && buf.len() < buf.capacity() {
                break;
            }
        }
        let compressed = buf.strip_suffix(&TAIL).unwrap_or(buf);
        (compressed.len() < payload.len()).then_some(compressed)
    }
}

/// The RSV1 bit of a frame's first byte: "compressed", with
/// permessage-deflate.
pub(crate) const RSV1: u8 = 0x40;

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<(Agreed, &'static str)> {
        negotiate([value.as_bytes()])
    }

    #[test]
    fn what_browsers_and_libraries_offer_is_accepted() {
        // Chromium and Firefox.
        let (agreed, answer) = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert!(!agreed.narrow);
        assert_eq!(answer, ANSWER);
        // Python websockets' default, and a list of two offers.
        assert!(
            offer("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
                .unwrap()
                .0
                .narrow
        );
        assert!(offer("x-webkit-deflate-frame, permessage-deflate").is_some());
        assert!(
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover")
                .is_some_and(|(a, _)| !a.narrow),
            "the second offer, when the first asks 8 bits"
        );
        assert!(offer("permessage-deflate; server_max_window_bits=\"10\"").is_some());
        assert!(
            offer("permessage-deflate; server_max_window_bits=15").is_some_and(|(a, _)| !a.narrow)
        );
    }

    #[test]
    fn malformed_or_unknown_offers_are_declined() {
        for value in [
            "",
            "deflate",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(offer(value), None, "{value:?}");
        }
        assert_eq!(negotiate([&b"\xff"[..]]), None);
    }

    #[test]
    fn a_message_round_trips_through_both_windows() {
        let text = "{\"user\":\"ana\",\"text\":\"hello hello hello hello\"} ".repeat(40);
        for narrow in [false, true] {
            let mut out = BytesMut::new();
            Deflater::default().put_frame(&mut out, 0x1, text.as_bytes(), Agreed { narrow });
            assert_eq!(out[0], 0x80 | RSV1 | 0x1);
            let (len, header) = match out[1] {
                126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            assert!(len < text.len() / 4, "compresses: {len}");
            let mut inflater = Inflater::default();
            let got = inflater
                .inflate(&out[header..header + len], 1 << 20)
                .unwrap();
            assert_eq!(got, text.as_bytes());
            inflater.give(got);
        }
    }

    #[test]
    fn short_or_incompressible_messages_go_as_they_are() {
        let mut d = Deflater::default();
        let mut out = BytesMut::new();
        d.put_frame(&mut out, 0x2, b"short", Agreed { narrow: false });
        assert_eq!(&out[..], b"\x82\x05short");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        out.clear();
        d.put_frame(&mut out, 0x2, &noise, Agreed { narrow: false });
        assert_eq!(out[0], 0x82, "no RSV1");
        assert_eq!(&out[4..], &noise[..]);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let mut out = BytesMut::new();
        Deflater::default().put_frame(&mut out, 0x2, &zeros, Agreed { narrow: false });
        let payload = &out[4..];
        assert!(payload.len() < 65_536, "a 4-byte header: {}", payload.len());
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(payload, 1 << 20),
            Err(InflateError::TooBig)
        );
        assert_eq!(
            inflater.inflate(payload, 4 << 20).map(|v| v.len()),
            Ok(4 << 20)
        );
        assert_eq!(
            inflater.inflate(b"\xff\xff\xff", 1 << 20),
            Err(InflateError::Invalid)
        );
        // Reset per message: a valid one after the failures.
        let mut out = BytesMut::new();
        Deflater::default().put_frame(&mut out, 0x1, &[b'a'; 300], Agreed { narrow: false });
        assert_eq!(inflater.inflate(&out[2..], 300).unwrap(), vec![b'a'; 300]);
    }
}
