//! A minimal WebSocket client: the HTTP/1.1 upgrade, masked client frames and
//! a frame parser over a reusable receive buffer. Just enough for a load
//! generator that stays cheaper than the servers it measures: no allocation
//! per message, payloads pre-masked once per connection, one clock read per
//! wake-up.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::deflate::{self, Agreed, Inflater, RSV1};
use crate::target::Target;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame or message accepted from the server.
const MAX_FRAME: u64 = 64 << 20;
/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 << 10;
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A small, fast, non-cryptographic generator (xorshift64*) for handshake
/// keys and mask keys. RFC 6455 wants unpredictable masks to protect proxies
/// from cache poisoning; on loopback there is no proxy, and the server cannot
/// tell the difference.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let s = SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        Rng((t ^ s ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A generator whose draws depend on `seed` only (splitmix64 of it).
    pub fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A mask key that is never all zeros, so the server really unmasks.
    pub fn mask(&mut self) -> [u8; 4] {
        loop {
            let m = (self.next_u64() >> 16) as u32;
            if m != 0 {
                return m.to_be_bytes();
            }
        }
    }
}

/// An upgraded connection: the socket and whatever the server sent after
/// its 101 response.
pub struct Conn {
    pub stream: TcpStream,
    pub rx: RxBuf,
    /// What the server agreed to when permessage-deflate was offered and
    /// accepted (`rx` then inflates what comes compressed).
    pub deflate: Option<Agreed>,
}

/// Opens a TCP connection (bound to `src` first when given, to spread source
/// addresses over 127.0.0.0/8) and performs the WebSocket upgrade, checking
/// the status line and `Sec-WebSocket-Accept`.
pub async fn connect(
    target: &Target,
    src: Option<IpAddr>,
    rx_capacity: usize,
    rng: &mut Rng,
) -> Result<Conn, String> {
    connect_with(target, src, rx_capacity, rng, false).await
}

/// [`connect`], offering permessage-deflate ([`deflate::OFFER`]) when
/// `offer_deflate`: if the server accepts, the receive buffer inflates
/// compressed messages and `Conn::deflate` says what was agreed; the
/// outcome is noted for the report ([`deflate::note`]).
pub async fn connect_with(
    target: &Target,
    src: Option<IpAddr>,
    rx_capacity: usize,
    rng: &mut Rng,
    offer_deflate: bool,
) -> Result<Conn, String> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = src {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;

    let mut raw_key = [0u8; 16];
    raw_key[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    raw_key[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(raw_key);
    let extensions = if offer_deflate {
        format!("Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER)
    } else {
        String::new()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n",
        target.path, target.host_header
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the upgrade request: {e}"))?;

    let mut rx = RxBuf::new(rx_capacity);
    let head_len = loop {
        let n = stream
            .read(rx.space())
            .await
            .map_err(|e| format!("reading the upgrade response: {e}"))?;
        if n == 0 {
            return Err("server closed the connection during the handshake".into());
        }
        rx.filled(n);
        if let Some(pos) = find(rx.data(), b"\r\n\r\n") {
            break pos + 4;
        }
        if rx.data().len() > MAX_HEAD {
            return Err("upgrade response head larger than 16 KiB".into());
        }
    };
    let answer = check_response(&rx.data()[..head_len], &key)?;
    rx.consume(head_len);
    let mut agreed = None;
    if offer_deflate {
        agreed = deflate::parse_answer(&answer)?;
        deflate::note(agreed.as_ref());
        if let Some(a) = &agreed {
            rx.inflater = Some(Inflater::new(a));
        }
    }
    Ok(Conn {
        stream,
        rx,
        deflate: agreed,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks the 101 response; returns the values of its
/// `Sec-WebSocket-Extensions` headers, joined with ", " (empty if none).
fn check_response(head: &[u8], key: &str) -> Result<String, String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next(), parts.next());
    if version != Some("HTTP/1.1") || code != Some("101") {
        return Err(format!("upgrade refused: {status:?}"));
    }
    let mut digest = Sha1::new();
    digest.update(key.as_bytes());
    digest.update(GUID);
    let expected = base64::engine::general_purpose::STANDARD.encode(digest.finalize());
    let mut accepted = false;
    let mut extensions = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("sec-websocket-accept") {
            if value.trim() != expected {
                return Err(format!(
                    "wrong Sec-WebSocket-Accept {:?} (expected {expected:?})",
                    value.trim()
                ));
            }
            accepted = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") && !value.trim().is_empty()
        {
            if !extensions.is_empty() {
                extensions.push_str(", ");
            }
            extensions.push_str(value.trim());
        }
    }
    if accepted {
        Ok(extensions)
    } else {
        Err("101 response without Sec-WebSocket-Accept".into())
    }
}

/// What the server sent, one event per complete message or control frame.
pub enum Event<'a> {
    /// A whole text or binary message (fragments already joined).
    Data(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// A Close frame and its status code, if it carried one.
    Close(Option<u16>),
}

/// Receive buffer: bytes in `buf[start..end]` are received and not yet parsed.
pub struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes (from `start`) the frame being received needs in total.
    need: usize,
    frag: Vec<u8>,
    in_frag: bool,
    frag_ready: bool,
    /// Set when permessage-deflate was agreed: messages with RSV1 are
    /// inflated; without it RSV1 is an error.
    inflater: Option<Inflater>,
    /// The message being received (fragments joined) came with RSV1.
    frag_rsv1: bool,
    /// Frame bytes (headers included) of the data message being received,
    /// or of the last one returned.
    msg_wire: usize,
}

impl RxBuf {
    pub fn new(capacity: usize) -> Self {
        RxBuf {
            buf: vec![0; capacity.max(256)],
            start: 0,
            end: 0,
            need: 0,
            frag: Vec::new(),
            in_frag: false,
            frag_ready: false,
            inflater: None,
            frag_rsv1: false,
            msg_wire: 0,
        }
    }

    /// Frame bytes on the wire (headers included, all its fragments) of the
    /// last data message [`RxBuf::next_event`] returned.
    pub fn last_msg_wire(&self) -> usize {
        self.msg_wire
    }

    /// Free space to read into: compacts, or grows to hold the frame being
    /// received, so that one read can always make progress.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let min_free = 256;
        if self.buf.len() - self.end < min_free || self.buf.len() - self.start < self.need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let want = self.need.max(self.end + min_free);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// One frame from the buffer: (first header byte, payload range, frame
    /// length), payload unmasked in place if the server masked it (it must
    /// not, but be lenient).
    fn frame(&mut self) -> Result<Option<(u8, Range<usize>, usize)>, String> {
        let d = &mut self.buf[self.start..self.end];
        if d.len() < 2 {
            self.need = 2;
            return Ok(None);
        }
        let (b0, b1) = (d[0], d[1]);
        let masked = b1 & 0x80 != 0;
        let (mut len, mut header) = (u64::from(b1 & 0x7f), 2usize);
        if len == 126 {
            if d.len() < 4 {
                self.need = 4;
                return Ok(None);
            }
            len = u64::from(u16::from_be_bytes([d[2], d[3]]));
            header = 4;
        } else if len == 127 {
            if d.len() < 10 {
                self.need = 10;
                return Ok(None);
            }
            len = u64::from_be_bytes(d[2..10].try_into().expect("8 bytes"));
            header = 10;
        }
        if len > MAX_FRAME {
            return Err(format!("server sent a {len}-byte frame"));
        }
        if masked {
            header += 4;
        }
        let total = header + len as usize;
        if d.len() < total {
            self.need = total;
            return Ok(None);
        }
        if masked {
            let key: [u8; 4] = d[header - 4..header].try_into().expect("4 bytes");
            for (i, b) in d[header..total].iter_mut().enumerate() {
                *b ^= key[i & 3];
            }
        }
        self.need = 0;
        let payload = self.start + header..self.start + total;
        self.start += total;
        Ok(Some((b0, payload, total)))
    }

    /// The next complete message or control frame, or `None` when more bytes
    /// are needed.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, String> {
        if self.frag_ready {
            self.frag.clear();
            self.frag_ready = false;
        }
        loop {
            let Some((b0, range, wire)) = self.frame()? else {
                return Ok(None);
            };
            let rsv1 = b0 & RSV1 != 0;
            if b0 & 0x30 != 0 || (rsv1 && self.inflater.is_none()) {
                return Err(format!("server frame with RSV bits set (0x{b0:02x})"));
            }
            let fin = b0 & 0x80 != 0;
            match b0 & 0x0f {
                OP_TEXT | OP_BINARY if self.in_frag => {
                    return Err("new data frame inside a fragmented message".into());
                }
                OP_TEXT | OP_BINARY if fin => {
                    self.msg_wire = wire;
                    let payload = &self.buf[range];
                    return Ok(Some(Event::Data(match &mut self.inflater {
                        Some(inflater) if rsv1 => inflater.inflate(payload)?,
                        _ => payload,
                    })));
                }
                OP_TEXT | OP_BINARY => {
                    self.msg_wire = wire;
                    self.in_frag = true;
                    self.frag_rsv1 = rsv1;
                    self.frag.extend_from_slice(&self.buf[range]);
                }
                OP_CONT if !self.in_frag => {
                    return Err("continuation frame without a message to continue".into());
                }
                OP_CONT if rsv1 => {
                    return Err("continuation frame with RSV1 set".into());
                }
                OP_CONT => {
                    self.msg_wire += wire;
                    self.frag.extend_from_slice(&self.buf[range]);
                    if self.frag.len() as u64 > MAX_FRAME {
                        return Err("fragmented message larger than 64 MiB".into());
                    }
                    if fin {
                        self.in_frag = false;
                        self.frag_ready = true;
                        return Ok(Some(Event::Data(match &mut self.inflater {
                            Some(inflater) if self.frag_rsv1 => inflater.inflate(&self.frag)?,
                            _ => &self.frag,
                        })));
                    }
                }
                _ if rsv1 => {
                    return Err(format!("control frame with RSV1 set (0x{b0:02x})"));
                }
                OP_CLOSE => {
                    let p = &self.buf[range];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    return Ok(Some(Event::Close(code)));
                }
                OP_PING => return Ok(Some(Event::Ping(&self.buf[range]))),
                OP_PONG => return Ok(Some(Event::Pong)),
                op => return Err(format!("server frame with unknown opcode {op}")),
            }
        }
    }
}

/// Writes a frame header for a masked client frame of `len` bytes
/// (`opcode` may carry RSV1).
fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize, key: [u8; 4]) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
}

/// Appends a masked control frame (Close, Ping, Pong).
pub fn push_control(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    push_header(out, opcode, payload.len(), key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
}

/// Appends a masked Close frame with a status code.
pub fn push_close(out: &mut Vec<u8>, code: u16, key: [u8; 4]) {
    push_control(out, OP_CLOSE, &code.to_be_bytes(), key);
}

/// The messages one connection sends: a fixed ASCII pattern whose first 8
/// bytes carry the message's sequence number in hex (when the payload is at
/// least 8 bytes), so every echo is checked byte for byte and in order. The
/// frame is masked once, up front; each message only re-masks its 8 bytes.
pub struct Tx {
    plain: Vec<u8>,
    frame: Vec<u8>,
    payload_at: usize,
    pub key: [u8; 4],
}

impl Tx {
    pub fn new(size: usize, text: bool, rng: &mut Rng) -> Self {
        let key = rng.mask();
        let plain: Vec<u8> = (0..size)
            .map(|i| if i < 8 { b'0' } else { b'a' + (i % 26) as u8 })
            .collect();
        let mut frame = Vec::with_capacity(size + 14);
        push_header(
            &mut frame,
            if text { OP_TEXT } else { OP_BINARY },
            size,
            key,
        );
        let payload_at = frame.len();
        frame.extend(plain.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        Tx {
            plain,
            frame,
            payload_at,
            key,
        }
    }

    /// Payload bytes per message.
    pub fn size(&self) -> usize {
        self.plain.len()
    }

    pub fn frame_len(&self) -> usize {
        self.frame.len()
    }

    /// Appends message number `seq`, masked.
    pub fn push(&self, out: &mut Vec<u8>, seq: u32) {
        let at = out.len() + self.payload_at;
        out.extend_from_slice(&self.frame);
        if self.plain.len() >= 8 {
            let hex = hex8(seq);
            for i in 0..8 {
                out[at + i] = hex[i] ^ self.key[i & 3];
            }
        }
    }

    /// Whether `payload` is exactly message number `seq`.
    pub fn verify(&self, payload: &[u8], seq: u32) -> bool {
        if payload.len() != self.plain.len() {
            return false;
        }
        if self.plain.len() < 8 {
            return payload == &self.plain[..];
        }
        payload[..8] == hex8(seq) && payload[8..] == self.plain[8..]
    }
}

/// What a connection sends and how echoes are checked: the fixed pattern
/// ([`Tx`]) or messages made per send (`payload::Messages`: JSON payloads,
/// compression).
pub trait Source {
    /// Appends message number `seq` as one masked frame; returns its bytes.
    fn push(&mut self, out: &mut Vec<u8>, seq: u32) -> usize;
    /// Whether `payload` (inflated) is message number `seq`, the oldest one
    /// not yet checked or skipped.
    fn verify(&mut self, payload: &[u8], seq: u32) -> bool;
    /// Forgets the oldest message in flight without checking its answer.
    fn skip(&mut self) {}
    /// Payload bytes per message.
    fn size(&self) -> usize;
    /// The mask key of this connection's control frames.
    fn key(&self) -> [u8; 4];
}

impl Source for Tx {
    fn push(&mut self, out: &mut Vec<u8>, seq: u32) -> usize {
        Tx::push(self, out, seq);
        self.frame.len()
    }

    fn verify(&mut self, payload: &[u8], seq: u32) -> bool {
        Tx::verify(self, payload, seq)
    }

    fn size(&self) -> usize {
        Tx::size(self)
    }

    fn key(&self) -> [u8; 4] {
        self.key
    }
}

/// Appends a masked data frame carrying `payload` (`first` is the opcode,
/// with RSV1 when the payload is compressed).
pub fn push_data(out: &mut Vec<u8>, first: u8, payload: &[u8], key: [u8; 4]) {
    push_header(out, first, payload.len(), key);
    let at = out.len();
    out.extend_from_slice(payload);
    mask(&mut out[at..], key);
}

/// XORs `data` with the mask key, 8 bytes at a time.
fn mask(data: &mut [u8], key: [u8; 4]) {
    let k = u32::from_ne_bytes(key);
    let k8 = (u64::from(k) << 32) | u64::from(k);
    let k8 = k8.to_ne_bytes();
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ u64::from_ne_bytes(k8);
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let done = data.len() - data.len() % 8;
    for (i, b) in data[done..].iter_mut().enumerate() {
        *b ^= key[(done + i) & 3];
    }
}

pub fn hex8(v: u32) -> [u8; 8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    fn feed(rx: &mut RxBuf, bytes: &[u8]) {
        let space = rx.space();
        space[..bytes.len()].copy_from_slice(bytes);
        rx.filled(bytes.len());
    }

    #[test]
    fn masked_frame_unmasks_to_the_payload() {
        let mut rng = Rng::new();
        let tx = Tx::new(300, false, &mut rng);
        let mut out = Vec::new();
        tx.push(&mut out, 0xdead_beef);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 300);
        let key = &out[4..8];
        let payload: Vec<u8> = out[8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i & 3])
            .collect();
        assert_eq!(&payload[..8], b"deadbeef");
        assert!(tx.verify(&payload, 0xdead_beef));
        assert!(!tx.verify(&payload, 0xdead_beee));
    }

    #[test]
    fn parses_split_and_fragmented_frames() {
        let mut rx = RxBuf::new(16);
        let mut wire = server_frame(OP_BINARY, true, &[7u8; 200]);
        wire.extend(server_frame(OP_TEXT, false, b"ab"));
        wire.extend(server_frame(OP_PING, true, b"p"));
        wire.extend(server_frame(OP_CONT, true, b"cd"));
        wire.extend(server_frame(OP_CLOSE, true, &1000u16.to_be_bytes()));
        let mut seen = Vec::new();
        for chunk in wire.chunks(7) {
            feed(&mut rx, chunk);
            while let Some(ev) = rx.next_event().unwrap() {
                seen.push(match ev {
                    Event::Data(d) => format!("data {} {}", d.len(), d[0]),
                    Event::Ping(p) => format!("ping {}", p.len()),
                    Event::Pong => "pong".into(),
                    Event::Close(c) => format!("close {c:?}"),
                });
            }
        }
        assert_eq!(
            seen,
            ["data 200 7", "ping 1", "data 4 97", "close Some(1000)"]
        );
    }

    #[test]
    fn inflates_compressed_messages_only_when_agreed() {
        use crate::deflate::{Deflater, parse_answer};
        let agreed = parse_answer("permessage-deflate; client_max_window_bits=12")
            .unwrap()
            .unwrap();
        let text = b"{\"user\":\"ana\",\"text\":\"hello there\"}".repeat(30);
        let mut compressed = Vec::new();
        Deflater::new(&agreed, 6).compress(&text, &mut compressed);
        // The server's side: same window and context as the client's here.
        let mut server = agreed.clone();
        server.server_bits = agreed.client_bits;
        let half = compressed.len() / 2;
        let mut first = server_frame(OP_TEXT, false, &compressed[..half]);
        first[0] |= RSV1;
        let mut wire = first;
        wire.extend(server_frame(OP_CONT, true, &compressed[half..]));
        wire.extend(server_frame(OP_BINARY, true, b"plain"));
        let mut rx = RxBuf::new(64);
        rx.inflater = Some(Inflater::new(&server));
        let mut seen = Vec::new();
        for chunk in wire.chunks(5) {
            feed(&mut rx, chunk);
            while let Some(ev) = rx.next_event().unwrap() {
                let Event::Data(d) = ev else { panic!("data") };
                seen.push(d.to_vec());
            }
        }
        assert_eq!(seen, [text.clone(), b"plain".to_vec()]);
        assert_eq!(rx.last_msg_wire(), 2 + 5);

        // RSV1 without an agreement is an error.
        let mut rx = RxBuf::new(64);
        let mut frame = server_frame(OP_TEXT, true, &compressed);
        frame[0] |= RSV1;
        feed(&mut rx, &frame);
        assert!(rx.next_event().is_err());
    }

    #[test]
    fn masks_like_the_byte_loop() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 7, 8, 9, 31, 100] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut fast = data.clone();
            mask(&mut fast, key);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3])
                .collect();
            assert_eq!(fast, slow, "{len}");
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            check_response(head, "dGhlIHNhbXBsZSBub25jZQ==").as_deref(),
            Ok("")
        );
        let with_ext = b"HTTP/1.1 101 Switching Protocols\r\n\
            Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            check_response(with_ext, "dGhlIHNhbXBsZSBub25jZQ==").as_deref(),
            Ok("permessage-deflate; server_no_context_takeover")
        );
        assert!(check_response(head, "AAAAAAAAAAAAAAAAAAAAAA==").is_err());
        assert!(check_response(b"HTTP/1.1 503 Busy\r\n\r\n", "x").is_err());
    }
}
