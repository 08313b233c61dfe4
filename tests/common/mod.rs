//! Helpers shared by the black-box tests: start a server (in process, or
//! the real binary as a child: `process`), speak raw WebSocket frames,
//! connect with an independent client library.
#![allow(dead_code)]

pub mod probe;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use ringws::{Config, IoMode, RunningServer, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every backend, for tests that run on each.
pub const BACKENDS: [IoMode; 2] = [IoMode::Uring, IoMode::Epoll];

/// Starts an in-process server on 127.0.0.1:0 with two workers.
pub fn start(io: IoMode, tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        io,
        workers: std::num::NonZeroUsize::new(2),
        close_timeout: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::bind(config).expect("bind").start().expect("start");
    let expected = match io {
        IoMode::Epoll => ringws::Backend::Epoll,
        _ => ringws::Backend::Uring,
    };
    assert_eq!(server.backend(), expected);
    server
}

/// A client handshake request for `/ws`.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads an HTTP response head (through the blank line); returns it as text.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(
            n == 1,
            "connection closed inside the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ascii head")
}

/// Opens a raw WebSocket connection, sending `then` in the same write as the
/// request (to test bytes pipelined behind the upgrade).
pub async fn raw_upgrade(addr: SocketAddr, then: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let mut req = upgrade_request(addr).into_bytes();
    req.extend_from_slice(then);
    s.write_all(&req).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s
}

/// Encodes a client frame (masked unless `mask` is None).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(fin as u8) << 7 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame with a fixed key.
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// A server frame as read off the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one server frame; checks it is unmasked and has no RSV bits.
pub async fn read_frame(s: &mut TcpStream) -> ServerFrame {
    let (first, payload) = read_frame_bits(s).await;
    assert_eq!(first & 0x70, 0, "RSV bits from the server");
    ServerFrame {
        fin: first & 0x80 != 0,
        opcode: first & 0x0f,
        payload,
    }
}

/// Reads one server frame, whatever its RSV bits: its first byte (FIN, RSV,
/// opcode) and payload; checks it is unmasked.
pub async fn read_frame_bits(s: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.expect("frame header");
        assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
        let len = match h[1] & 0x7f {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await.unwrap();
        (h[0], payload)
    })
    .await
    .expect("frame in time")
}

/// Reads frames until a Close arrives (skipping echoes of fragments sent
/// before the failure) and checks its code. Then answers it and expects the
/// server to close TCP.
pub async fn expect_close(s: &mut TcpStream, code: u16) {
    let mut f = read_frame(s).await;
    while matches!(f.opcode, 0..=2) {
        f = read_frame(s).await;
    }
    assert_eq!(f.opcode, 8, "expected Close {code}, got {f:?}");
    assert_eq!(
        f.close_code(),
        Some(code),
        "close payload {:?}",
        String::from_utf8_lossy(&f.payload)
    );
    // Answer, then the server closes TCP.
    let _ = s.write_all(&masked(true, 8, &f.payload[..2])).await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "server did not close TCP after Close {code}");
}

/// Fetches `path` with a plain HTTP/1.1 GET; returns (status, head, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// Bytes for message `k` of session `i`: a pattern that differs per
/// session and message, so a byte from the wrong place shows.
pub fn pattern(i: usize, k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(31) ^ k.wrapping_mul(7) ^ j) as u8)
        .collect()
}

/// Sends one masked binary message and checks its echo byte for byte.
pub async fn echo_once(s: &mut TcpStream, payload: &[u8], what: &str) {
    s.write_all(&masked(true, 2, payload)).await.unwrap();
    let f = read_frame(s).await;
    assert_eq!((f.fin, f.opcode), (true, 2), "{what}");
    assert!(f.payload == payload, "{what}: echo differs");
}
