//! permessage-deflate (RFC 7692): the offer a client makes and the answer,
//! and each worker's one compressor and one inflater.
//!
//! No connection holds anything of zlib's, so an idle connection costs what
//! it costs without compression. The server answers every offer it accepts
//! with `client_no_context_takeover` (each message a client sends is
//! compressed on its own; RFC 7692 §7.1.1.2 lets a server ask it even when
//! the offer did not, and browsers honour it), so one inflater, reset per
//! message, reads every client of the worker. One compressor, reset per
//! message, writes for all of them:
//!
//! - **shared** mode answers `server_no_context_takeover`: each message the
//!   server sends stands alone.
//! - **dedicated** mode keeps the context the client's inflater keeps: a
//!   connection's window is the last bytes of what it was sent compressed
//!   (`--deflate-window`, 4 KiB by default; at most 512 with a narrow
//!   agreement), and the worker's compressor is primed with it
//!   (`deflateSetDictionary`) before each message, so a message may refer
//!   back into earlier ones. A zlib compressor of its own
//!   per connection would hold 128 KiB with zlib-rs, whose hash table does
//!   not shrink with `memLevel` (uWebSockets' smallest dedicated compressor,
//!   C zlib at `memLevel` 1, holds about 9 KB); the window alone is all a
//!   connection needs to keep. A message sent compressed without it (a
//!   published one, compressed once for all subscribers) empties the
//!   window: what follows is compressed as if it were the first.
//!
//! Inflating stops one byte past `--max-message-size` (the session answers
//! 1009), so a small compressed message cannot make the worker hold more
//! than the limit (a decompression bomb).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{frame_header, parse_header};

/// What was agreed with one client: the window the server compresses
/// with, and whether it keeps context. Copied into its session (flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The client asked for `server_max_window_bits` below 15: the server
    /// compresses with a 512-byte window (9 bits, the smallest zlib's raw
    /// deflate has), which fits any value a client may ask.
    pub narrow: bool,
    /// Dedicated mode, and the client did not ask
    /// `server_no_context_takeover`: messages to it may refer back into the
    /// ones before ([`Deflater`]'s windows).
    pub takeover: bool,
}

/// The answer to an accepted offer with the default window.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer to an accepted offer with `server_max_window_bits`.
const ANSWER_NARROW: &str = "permessage-deflate; server_no_context_takeover; \
                             client_no_context_takeover; server_max_window_bits=9";
/// Dedicated mode's answers: the server keeps context.
const ANSWER_TAKEOVER: &str = "permessage-deflate; client_no_context_takeover";
const ANSWER_TAKEOVER_NARROW: &str =
    "permessage-deflate; client_no_context_takeover; server_max_window_bits=9";

/// The most a connection keeps in dedicated mode with a narrow agreement
/// (9 bits): what the compressor can refer back to.
const WINDOW_NARROW: usize = 1 << NARROW_BITS;

/// The shortest message compressed: below it deflate saves too little for
/// a compressor reset and a call (2–4 µs). Measured on JSON chat messages
/// (docs/performance.md): with a window of earlier messages 64 bytes
/// become 14; on its own, at level 2 and above 128 bytes become 105; at
/// level 1 (fixed Huffman codes) 128 bytes become 126 and 512 bytes 448.
pub(crate) fn compress_min(agreed: Agreed, level: u32) -> usize {
    match (agreed.takeover, level) {
        (true, _) => 64,
        (false, 1) => 512,
        (false, _) => 128,
    }
}

/// The window bits a narrow agreement compresses with.
const NARROW_BITS: u8 = 9;

/// Chooses the first acceptable permessage-deflate offer among the values
/// of the request's `Sec-WebSocket-Extensions` headers, for shared mode or,
/// with `dedicated`, dedicated mode (which keeps context unless the offer
/// says `server_no_context_takeover`). An offer with an unknown, repeated
/// or malformed parameter is declined, and the next one tried; none
/// acceptable means no compression, never a failed handshake. Returns the
/// agreement and the header value to answer with.
pub(crate) fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    dedicated: bool,
) -> Option<(Agreed, &'static str)> {
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in value.split(',') {
            if let Some((narrow, no_takeover)) = accept(offer) {
                let takeover = dedicated && !no_takeover;
                let answer = match (takeover, narrow) {
                    (false, false) => ANSWER,
                    (false, true) => ANSWER_NARROW,
                    (true, false) => ANSWER_TAKEOVER,
                    (true, true) => ANSWER_TAKEOVER_NARROW,
                };
                return Some((Agreed { narrow, takeover }, answer));
            }
        }
    }
    None
}

/// One offer (`permessage-deflate; param[=value]; ...`), if acceptable:
/// whether it asks a narrow window, and `server_no_context_takeover`.
fn accept(offer: &str) -> Option<(bool, bool)> {
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
    Some((narrow, seen[0]))
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

/// How one connection's messages are compressed: its worker's compressor,
/// what was agreed, and the session (whose window dedicated mode keeps).
#[derive(Clone, Copy)]
pub(crate) struct Codec<'a> {
    pub deflater: &'a RefCell<Deflater>,
    pub agreed: Agreed,
    pub key: usize,
}

/// Appends `payload` as one message frame to `out`: through `codec` if the
/// connection negotiated permessage-deflate ([`Deflater::put_frame`]),
/// else as it is.
pub(crate) fn put_message(
    codec: Option<Codec<'_>>,
    out: &mut BytesMut,
    opcode: u8,
    payload: &[u8],
) {
    match codec {
        Some(c) => c
            .deflater
            .borrow_mut()
            .put_frame(out, opcode, payload, c.agreed, c.key),
        None => crate::frame::put_frame(out, opcode, payload),
    }
}

/// A worker's compressors (one per window size in use), reset per
/// message, the buffer they compress into, and, in dedicated mode, each
/// connection's window.
pub(crate) struct Deflater {
    /// zlib level (`--deflate-level`).
    level: u32,
    /// What each session keeps in dedicated mode (`--deflate-window`).
    window: usize,
    wide: Option<Compress>,
    narrow: Option<Compress>,
    buf: Vec<u8>,
    /// Dedicated mode: per session key, the last bytes that session was
    /// sent compressed, oldest first (at most `window`, or
    /// [`WINDOW_NARROW`]): the end of its client's window.
    windows: HashMap<usize, Vec<u8>>,
}

/// At the defaults of `--deflate-level` and `--deflate-window`.
impl Default for Deflater {
    fn default() -> Self {
        Deflater::new(1, 4 << 10)
    }
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("windows", &self.windows.len())
            .finish_non_exhaustive()
    }
}

impl Deflater {
    /// A deflater compressing at zlib `level` (1 to 9), keeping `window`
    /// bytes per session in dedicated mode.
    pub(crate) fn new(level: u32, window: usize) -> Self {
        Deflater {
            level,
            window,
            wide: None,
            narrow: None,
            buf: Vec::new(),
            windows: HashMap::new(),
        }
    }

    /// Appends `payload` as one message frame to `out`: compressed (RSV1
    /// set) if it is at least [`compress_min`] bytes and compresses to
    /// fewer bytes, else as it is. `key`: the session it is for.
    pub(crate) fn put_frame(
        &mut self,
        out: &mut BytesMut,
        opcode: u8,
        payload: &[u8],
        agreed: Agreed,
        key: usize,
    ) {
        let Some(compressed) = self.compress(payload, agreed, Some(key)) else {
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
    pub(crate) fn put_frames(
        &mut self,
        mut frames: &[u8],
        out: &mut BytesMut,
        agreed: Agreed,
        key: usize,
    ) {
        while !frames.is_empty() {
            let (opcode, header, len) = parse_header(frames);
            let (frame, rest) = frames.split_at(header + len);
            self.put_frame(out, opcode, &frame[header..], agreed, key);
            frames = rest;
        }
    }

    /// A published frame (unmasked, unfragmented: `crate::frame`),
    /// compressed on its own once for every subscriber that agreed on
    /// `agreed`'s window; `None` if it is not worth it (see
    /// [`Deflater::put_frame`]). A subscriber that keeps context must
    /// [`Deflater::forget`] its window before it is sent this.
    pub(crate) fn compress_frame(&mut self, frame: &[u8], agreed: Agreed) -> Option<Arc<[u8]>> {
        let (opcode, header, _) = parse_header(frame);
        let compressed = self.compress(&frame[header..], agreed, None)?;
        let (mut header, n) = frame_header(opcode, compressed.len());
        header[0] |= RSV1;
        Some(header[..n].iter().chain(compressed).copied().collect())
    }

    /// Session `key` was sent `payload` compressed other than through this
    /// deflater (its own compressed message, echoed as it came): `payload`
    /// is now the end of its client's window.
    pub(crate) fn remember(&mut self, key: usize, agreed: Agreed, payload: &[u8]) {
        if agreed.takeover {
            let size = self.window_of(agreed);
            remember(&mut self.windows, key, size, payload);
        }
    }

    /// What a session that agreed on `agreed` keeps.
    fn window_of(&self, agreed: Agreed) -> usize {
        if agreed.narrow {
            WINDOW_NARROW.min(self.window)
        } else {
            self.window
        }
    }

    /// Session `key` is about to be sent messages compressed without its
    /// window: what follows is compressed as if it were the first (the
    /// window's allocation is kept).
    pub(crate) fn forget(&mut self, key: usize) {
        if let Some(window) = self.windows.get_mut(&key) {
            window.clear();
        }
    }

    /// Session `key` is over: its window goes.
    pub(crate) fn end(&mut self, key: usize) {
        self.windows.remove(&key);
    }

    /// `payload` compressed, without the sync-flush tail, if it is at least
    /// [`compress_min`] bytes and shrinks: on its own, or, for session `key`
    /// if it keeps context, after its window (which it then ends).
    fn compress(&mut self, payload: &[u8], agreed: Agreed, key: Option<usize>) -> Option<&[u8]> {
        if payload.len() < compress_min(agreed, self.level) {
            return None;
        }
        if self.buf.capacity() > KEEP_MAX {
            self.buf = Vec::new();
        }
        let size = self.window_of(agreed);
        let level = Compression::new(self.level);
        let zlib = if agreed.narrow {
            self.narrow
                .get_or_insert_with(|| Compress::new_with_window_bits(level, false, NARROW_BITS))
        } else {
            self.wide
                .get_or_insert_with(|| Compress::new_with_window_bits(level, false, 15))
        };
        zlib.reset();
        let key = key.filter(|_| agreed.takeover);
        if let Some(window) = key.and_then(|key| self.windows.get(&key))
            && !window.is_empty()
        {
            zlib.set_dictionary(window)
                .expect("a dictionary right after a reset is accepted");
        }
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
        if compressed.len() >= payload.len() {
            return None;
        }
        if let Some(key) = key {
            remember(&mut self.windows, key, size, payload);
        }
        Some(compressed)
    }
}

/// Ends session `key`'s window, of at most `size` bytes, with `payload`.
/// The window's allocation grows with what it holds (doubling, up to
/// `size`), so a connection sent only short messages keeps only those.
fn remember(windows: &mut HashMap<usize, Vec<u8>>, key: usize, size: usize, payload: &[u8]) {
    if size == 0 {
        return;
    }
    let window = windows.entry(key).or_default();
    let payload = &payload[payload.len().saturating_sub(size)..];
    let keep = window.len().min(size - payload.len());
    window.drain(..window.len() - keep);
    let need = keep + payload.len();
    if need > window.capacity() {
        let grown = need.max(window.capacity() * 2).min(size);
        window.reserve_exact(grown - keep);
    }
    window.extend_from_slice(payload);
}

/// The RSV1 bit of a frame's first byte: "compressed", with
/// permessage-deflate.
pub(crate) const RSV1: u8 = 0x40;

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<(Agreed, &'static str)> {
        negotiate([value.as_bytes()], false)
    }

    fn shared(narrow: bool) -> Agreed {
        Agreed {
            narrow,
            takeover: false,
        }
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
    fn dedicated_mode_keeps_context_unless_the_client_forbids_it() {
        let dedicated = |value: &str| negotiate([value.as_bytes()], true).unwrap();
        let (agreed, answer) = dedicated("permessage-deflate; client_max_window_bits");
        assert!(agreed.takeover && !agreed.narrow);
        assert_eq!(answer, "permessage-deflate; client_no_context_takeover");
        let (agreed, answer) =
            dedicated("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12");
        assert!(agreed.takeover && agreed.narrow);
        assert_eq!(answer, ANSWER_TAKEOVER_NARROW);
        let (agreed, answer) = dedicated("permessage-deflate; server_no_context_takeover");
        assert!(!agreed.takeover);
        assert_eq!(
            answer, ANSWER,
            "the offer's server_no_context_takeover is honoured"
        );
    }

    /// A chat-like message: repeated field names, a few varying values.
    fn chat(i: usize) -> Vec<u8> {
        let words = [
            "deploy", "the", "pod", "is", "ready", "scale", "down", "now", "ok",
        ];
        let text: Vec<&str> = (0..60)
            .map(|k| words[(i * 7 + k * k) % words.len()])
            .collect();
        format!(
            "{{\"seq\":{i},\"room\":\"ops\",\"user\":\"user-{}\",\"text\":\"{}\"}}",
            i % 5,
            text.join(" ")
        )
        .into_bytes()
    }

    /// The payload of the one frame in `out`, inflated by `client`, which
    /// keeps its window from message to message as a browser does.
    fn client_reads(client: &mut Decompress, out: &[u8]) -> Vec<u8> {
        let (opcode, header, len) = parse_header(out);
        assert_eq!(header + len, out.len(), "one frame");
        let payload = &out[header..];
        if out[0] & RSV1 == 0 {
            assert!(opcode == 0x1 || opcode == 0x2);
            return payload.to_vec();
        }
        let input: Vec<u8> = payload.iter().chain(&TAIL).copied().collect();
        let mut got = Vec::with_capacity(64 << 10);
        let before = client.total_in();
        client
            .decompress_vec(&input, &mut got, FlushDecompress::Sync)
            .expect("valid deflate for a client that keeps context");
        assert_eq!((client.total_in() - before) as usize, input.len());
        got
    }

    #[test]
    fn dedicated_messages_refer_back_and_a_context_keeping_client_reads_them() {
        for narrow in [false, true] {
            let bits = if narrow { NARROW_BITS } else { 15 };
            let kept = Agreed {
                narrow,
                takeover: true,
            };
            let mut d = Deflater::default();
            let mut other = Deflater::default();
            let mut client = Decompress::new_with_window_bits(false, bits);
            let (mut with, mut without) = (0, 0);
            for i in 0..300 {
                let msg = chat(i);
                let mut out = BytesMut::new();
                match i % 10 {
                    // Published: compressed once, on its own; the
                    // subscriber forgets its window before it is sent.
                    3 => {
                        let mut plain = BytesMut::new();
                        crate::frame::put_frame(&mut plain, 0x1, &msg);
                        let frame = d.compress_frame(&plain, kept).expect("compresses");
                        d.forget(7);
                        out.extend_from_slice(&frame);
                    }
                    // The client's own message, compressed on its own (as
                    // a client that was asked client_no_context_takeover
                    // does), echoed as it came.
                    6 => {
                        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
                        let mut payload = Vec::with_capacity(msg.len() + 64);
                        c.compress_vec(&msg, &mut payload, FlushCompress::Sync)
                            .unwrap();
                        payload.truncate(payload.len() - TAIL.len());
                        let (mut header, n) = frame_header(0x1, payload.len());
                        header[0] |= RSV1;
                        out.extend_from_slice(&header[..n]);
                        out.extend_from_slice(&payload);
                        d.remember(7, kept, &msg);
                    }
                    // Short: sent plain, which the client's window never sees.
                    8 => {
                        d.put_frame(&mut out, 0x1, &msg[..100], kept, 7);
                        assert_eq!(client_reads(&mut client, &out), &msg[..100]);
                        continue;
                    }
                    _ => {
                        d.put_frame(&mut out, 0x1, &msg, kept, 7);
                        with += out.len();
                        let mut alone = BytesMut::new();
                        other.put_frame(&mut alone, 0x1, &msg, shared(narrow), 0);
                        without += alone.len();
                    }
                }
                assert_eq!(client_reads(&mut client, &out), msg, "message {i}");
            }
            assert!(
                with * 10 < without * 9,
                "narrow {narrow}: {with} B with the window, {without} B without"
            );
            assert!(d.windows[&7].len() <= if narrow { WINDOW_NARROW } else { 4096 });
            d.end(7);
            assert!(d.windows.is_empty());
        }
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
        assert_eq!(negotiate([&b"\xff"[..]], false), None);
    }

    #[test]
    fn a_message_round_trips_through_both_windows() {
        let text = "{\"user\":\"ana\",\"text\":\"hello hello hello hello\"} ".repeat(40);
        for narrow in [false, true] {
            let mut out = BytesMut::new();
            Deflater::default().put_frame(&mut out, 0x1, text.as_bytes(), shared(narrow), 0);
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
        d.put_frame(&mut out, 0x2, b"short", shared(false), 0);
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
        d.put_frame(&mut out, 0x2, &noise, shared(false), 0);
        assert_eq!(out[0], 0x82, "no RSV1");
        assert_eq!(&out[4..], &noise[..]);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let mut out = BytesMut::new();
        Deflater::default().put_frame(&mut out, 0x2, &zeros, shared(false), 0);
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
        Deflater::default().put_frame(&mut out, 0x1, &[b'a'; 600], shared(false), 0);
        assert_eq!(inflater.inflate(&out[2..], 600).unwrap(), vec![b'a'; 600]);
    }
}
