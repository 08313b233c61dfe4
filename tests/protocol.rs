//! Raw-socket cases: bytes on the wire, close codes, handshake answers and
//! the plain HTTP routes, on both backends.

mod common;

use common::*;
use ringws::IoMode;
use tokio::io::AsyncWriteExt;

/// Runs `case` against a fresh server on each backend.
async fn each_backend<F, Fut>(tweak: fn(&mut ringws::Config), case: F)
where
    F: Fn(IoMode, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for io in BACKENDS {
        let server = start(io, tweak);
        case(io, server.local_addr()).await;
        server.shutdown().unwrap();
    }
}

fn no_tweak(_: &mut ringws::Config) {}

#[tokio::test]
async fn frame_sent_with_the_upgrade_request_is_echoed() {
    each_backend(no_tweak, |io, addr| async move {
        let mut pipelined = masked(true, 1, b"first!");
        pipelined.extend(masked(true, 2, &[9; 300]));
        let mut s = raw_upgrade(addr, &pipelined).await;
        assert_eq!(
            read_frame(&mut s).await,
            ServerFrame {
                fin: true,
                opcode: 1,
                payload: b"first!".to_vec()
            },
            "{io:?}"
        );
        assert_eq!(read_frame(&mut s).await.payload, vec![9; 300], "{io:?}");
        s.write_all(&masked(true, 1, b"after")).await.unwrap();
        assert_eq!(read_frame(&mut s).await.payload, b"after", "{io:?}");
    })
    .await;
}

#[tokio::test]
async fn fragments_are_joined_and_echoed_whole() {
    each_backend(no_tweak, |io, addr| async move {
        let mut s = raw_upgrade(addr, &[]).await;
        s.write_all(&masked(false, 2, b"ab")).await.unwrap();
        // A ping between fragments is answered at once.
        s.write_all(&masked(true, 9, b"p")).await.unwrap();
        s.write_all(&masked(false, 0, b"cd")).await.unwrap();
        s.write_all(&masked(true, 0, b"e")).await.unwrap();
        let frames = [read_frame(&mut s).await, read_frame(&mut s).await];
        assert_eq!(
            frames.map(|f| (f.fin, f.opcode, f.payload)),
            [(true, 10, b"p".to_vec()), (true, 2, b"abcde".to_vec())],
            "{io:?}"
        );
        // Text joined across a code point split between fragments.
        s.write_all(&masked(false, 1, b"caf\xc3")).await.unwrap();
        s.write_all(&masked(true, 0, b"\xa9")).await.unwrap();
        let f = read_frame(&mut s).await;
        assert_eq!(
            (f.fin, f.opcode, f.payload),
            (true, 1, "café".as_bytes().to_vec())
        );
    })
    .await;
}

/// Sends `bytes` after the handshake and expects Close `code`.
async fn expect_close_after(addr: std::net::SocketAddr, bytes: &[u8], code: u16) {
    let mut s = raw_upgrade(addr, &[]).await;
    s.write_all(bytes).await.unwrap();
    expect_close(&mut s, code).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    each_backend(no_tweak, |_, addr| async move {
        expect_close_after(addr, &masked(true, 1, b"ok \xff"), 1007).await;
        // Invalid across fragments: 0xed 0xa0 starts a UTF-16 surrogate.
        let mut bytes = masked(false, 1, b"fine \xed");
        bytes.extend(masked(true, 0, b"\xa0\x80"));
        expect_close_after(addr, &bytes, 1007).await;
        // A message ending inside a code point.
        let mut bytes = masked(false, 1, b"x");
        bytes.extend(masked(true, 0, b"\xce"));
        expect_close_after(addr, &bytes, 1007).await;
        // Close reason that is not UTF-8.
        expect_close_after(addr, &masked(true, 8, b"\x03\xe8\xff\xfe"), 1007).await;
    })
    .await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    each_backend(no_tweak, |_, addr| async move {
        // RSV1 set without an extension.
        expect_close_after(
            addr,
            &[&[0xc1u8][..], &masked(true, 1, b"x")[1..]].concat(),
            1002,
        )
        .await;
        // Unmasked client frame.
        expect_close_after(addr, &frame(true, 1, b"x", None), 1002).await;
        // Fragmented control frame.
        expect_close_after(addr, &masked(false, 9, b"x"), 1002).await;
        // Reserved opcode.
        expect_close_after(addr, &masked(true, 3, b"x"), 1002).await;
        // Continuation without a message.
        expect_close_after(addr, &masked(true, 0, b"x"), 1002).await;
        // New message while a fragmented one is open.
        let mut bytes = masked(false, 1, b"a");
        bytes.extend(masked(true, 1, b"b"));
        expect_close_after(addr, &bytes, 1002).await;
        // Control frames over 125 bytes (Ping, Pong, and Close: Autobahn 7.3.6).
        expect_close_after(addr, &masked(true, 9, &[0; 126]), 1002).await;
        expect_close_after(addr, &masked(true, 10, &[0; 126]), 1002).await;
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(&[b'a'; 124]);
        expect_close_after(addr, &masked(true, 8, &close), 1002).await;
        // Invalid close codes.
        for code in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
            expect_close_after(addr, &masked(true, 8, &code.to_be_bytes()), 1002).await;
        }
        expect_close_after(addr, &masked(true, 8, &[3]), 1002).await;
    })
    .await;
}

#[tokio::test]
async fn oversize_messages_close_with_1009() {
    fn small(c: &mut ringws::Config) {
        c.max_message_size = 1024;
    }
    each_backend(small, |io, addr| async move {
        // Exactly the limit is fine.
        let mut s = raw_upgrade(addr, &[]).await;
        s.write_all(&masked(true, 2, &[1; 1024])).await.unwrap();
        assert_eq!(read_frame(&mut s).await.payload.len(), 1024, "{io:?}");
        s.write_all(&masked(true, 2, &[1; 1025])).await.unwrap();
        expect_close(&mut s, 1009).await;
        // The total over fragments counts.
        let mut bytes = masked(false, 2, &[1; 600]);
        bytes.extend(masked(true, 0, &[1; 600]));
        let mut s = raw_upgrade(addr, &[]).await;
        s.write_all(&bytes).await.unwrap();
        expect_close(&mut s, 1009).await;
        let _ = io;
        // A 2^63 length header is refused without waiting for (or allocating) it.
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        expect_close_after(addr, &huge, 1009).await;
    })
    .await;
}

#[tokio::test]
async fn bad_handshakes() {
    each_backend(no_tweak, |io, addr| async move {
        let send = |req: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            read_head(&mut s).await
        };
        let base = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        let head = send(format!("{base}Sec-WebSocket-Version: 13\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{io:?} missing key: {head}");
        let head = send(format!("{base}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{io:?} malformed key: {head}");
        let head = send(format!("{base}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{io:?} version 8: {head}");
        assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
        let head = send("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".into()).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{io:?} plain GET: {head}");
        let head = send(
            "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n"
            .to_owned(),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{io:?} POST: {head}");

        let (status, _, body) = http_get(addr, "/ws").await;
        assert_eq!(status, 426);
        assert!(body.contains("WebSocket"), "{body}");
        let (_, _, metrics) = http_get(addr, "/metrics").await;
        for (reason, n) in [("key", 2), ("version", 1), ("not_upgrade", 2), ("method", 1)] {
            let line = format!("ringws_handshake_failures_total{{reason=\"{reason}\"}} {n}\n");
            assert!(metrics.contains(&line), "{io:?} {line}: {metrics}");
        }
    })
    .await;
}

#[tokio::test]
async fn probes_metrics_and_404() {
    each_backend(no_tweak, |io, addr| async move {
        assert_eq!(http_get(addr, "/healthz").await.0, 200);
        assert_eq!(http_get(addr, "/readyz").await.0, 200);
        assert_eq!(http_get(addr, "/nope").await.0, 404);
        let mut s = raw_upgrade(addr, &masked(true, 1, b"0123456789")).await;
        read_frame(&mut s).await;
        let (status, head, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.contains("openmetrics-text"), "{head}");
        let backend = match io {
            IoMode::Epoll => "epoll",
            _ => "io_uring",
        };
        for line in [
            "ringws_sessions_open 1\n".to_owned(),
            "ringws_sessions_total 1\n".to_owned(),
            "ringws_messages_received_total 1\n".to_owned(),
            "ringws_received_bytes_total 10\n".to_owned(),
            "ringws_messages_sent_total 1\n".to_owned(),
            "ringws_sent_bytes_total 10\n".to_owned(),
            format!("ringws_backend{{backend=\"{backend}\"}} 1\n"),
        ] {
            assert!(body.contains(&line), "{io:?} missing {line:?} in:\n{body}");
        }
        assert!(
            body.contains("ringws_connections_accepted_total "),
            "{body}"
        );
    })
    .await;
}

#[tokio::test]
async fn session_survives_cancelled_reads() {
    // The idle timer fires while a frame is half received: the session stops
    // reading to send a Ping, then resumes. Without the cancel-safe parser
    // (vendor/PATCHES.md, 1) the header bytes read so far were lost.
    fn fast_idle(c: &mut ringws::Config) {
        c.idle_timeout = std::time::Duration::from_millis(200);
    }
    each_backend(fast_idle, |io, addr| async move {
        let mut s = raw_upgrade(addr, &[]).await;
        let bytes = masked(true, 2, &[7; 300]); // 16-bit length: 8-byte header
        s.write_all(&bytes[..3]).await.unwrap();
        let ping = read_frame(&mut s).await;
        assert_eq!(
            ping.opcode, 9,
            "{io:?}: expected the idle Ping, got {ping:?}"
        );
        s.write_all(&bytes[3..]).await.unwrap();
        let echo = read_frame(&mut s).await;
        assert_eq!((echo.opcode, echo.payload), (2, vec![7; 300]), "{io:?}");
        // Then silence: a second Ping, then Close 1001.
        let ping = read_frame(&mut s).await;
        assert_eq!(ping.opcode, 9, "{io:?}");
        expect_close(&mut s, 1001).await;
    })
    .await;
}
