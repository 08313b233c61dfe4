//! Limits: --max-connections and --handshake-timeout, on both backends.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn max_connections_refuses_with_503_and_keeps_existing_sessions() {
    for io in BACKENDS {
        let server = start(io, |c| c.max_connections = Some(2));
        let addr = server.local_addr();
        let mut a = raw_upgrade(addr, &[]).await;
        let mut b = raw_upgrade(addr, &[]).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(upgrade_request(addr).as_bytes()).await.unwrap();
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{io:?}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: "),
            "{head}"
        );
        for (s, msg) in [(&mut a, &b"still here"[..]), (&mut b, &b"me too"[..])] {
            s.write_all(&masked(true, 2, msg)).await.unwrap();
            assert_eq!(read_frame(s).await.payload, msg, "{io:?}");
        }
        // A slot frees up when a session ends.
        a.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut a).await.close_code(), Some(1000));
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        let mut ok = false;
        for _ in 0..50 {
            let mut d = tokio::net::TcpStream::connect(addr).await.unwrap();
            d.write_all(upgrade_request(addr).as_bytes()).await.unwrap();
            if read_head(&mut d).await.starts_with("HTTP/1.1 101") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "{io:?}: freed slot not reusable");
        let (_, _, metrics) = http_get(addr, "/metrics").await;
        assert!(
            metrics.contains("ringws_handshake_failures_total{reason=\"capacity\"} "),
            "{metrics}"
        );
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn stalled_handshake_is_closed_after_the_timeout() {
    for io in BACKENDS {
        let server = start(io, |c| c.handshake_timeout = Duration::from_millis(500));
        let addr = server.local_addr();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webso")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "{io:?}: connection not closed within 5 s");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "{io:?}: closed too early ({waited:?})"
        );
        // Meanwhile a normal client is served.
        let mut ok = raw_upgrade(addr, &masked(true, 1, b"hi")).await;
        assert_eq!(read_frame(&mut ok).await.payload, b"hi");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn peer_that_never_reads_is_closed_after_the_write_timeout() {
    for io in BACKENDS {
        let server = start(io, |c| c.write_timeout = Duration::from_millis(300));
        let addr = server.local_addr();
        // Sends 64 KiB messages as fast as it can and never reads an echo.
        let hog = raw_upgrade(addr, &[]).await;
        let (_hog_read, mut hog_write) = hog.into_split();
        let frame = masked(true, 2, &vec![5u8; 64 << 10]);
        let sender = tokio::spawn(async move {
            let mut sent = 0usize;
            while hog_write.write_all(&frame).await.is_ok() {
                sent += 1;
            }
            sent
        });
        // Meanwhile another session echoes normally.
        let mut good = raw_upgrade(addr, &[]).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            good.write_all(&masked(true, 1, b"unaffected"))
                .await
                .unwrap();
            assert_eq!(read_frame(&mut good).await.payload, b"unaffected", "{io:?}");
            let (_, _, metrics) = http_get(addr, "/metrics").await;
            if metrics.contains("ringws_write_stalls_total 1\n") {
                assert!(
                    metrics.contains("ringws_sessions_open 1\n"),
                    "{io:?}: {metrics}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{io:?}: never closed: {metrics}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The hog's writes now fail: the server closed the connection.
        let sent = tokio::time::timeout(Duration::from_secs(10), sender)
            .await
            .expect("hog's writes end")
            .unwrap();
        assert!(sent > 0);
        server.shutdown().unwrap();
    }
}

/// `--min-message-rate` (1 KiB/s): a frame trickled at a byte a second is
/// closed with 1008 once a whole 10-second window has passed in which it
/// grew by less (within about 20 s), while a frame arriving at 4 KiB/s over
/// as long is echoed intact. Both backends at once, since each takes ~20 s.
#[tokio::test]
async fn a_frame_arriving_slower_than_the_min_rate_is_closed_with_1008() {
    let runs = BACKENDS.map(|io| async move {
        let server = start(io, |c| c.min_message_rate = 1024);
        let addr = server.local_addr();
        let slow = raw_upgrade(addr, &[]).await;
        let (mut slow_read, mut slow_write) = slow.into_split();
        let big = masked(true, 2, &vec![7u8; 100 << 10]);
        slow_write.write_all(&big[..2048]).await.unwrap();
        let trickle = tokio::spawn(async move {
            for byte in &big[2048..] {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if slow_write.write_all(&[*byte]).await.is_err() {
                    break;
                }
            }
        });
        let steady = tokio::spawn(async move {
            let payload: Vec<u8> = (0..60 << 10).map(|i| (i % 251) as u8).collect();
            let frame = masked(true, 2, &payload);
            let mut s = raw_upgrade(addr, &[]).await;
            for chunk in frame.chunks(4 << 10) {
                s.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            assert_eq!(read_frame(&mut s).await.payload, payload, "{io:?}");
        });
        let mut close = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(40), slow_read.read_exact(&mut close))
            .await
            .unwrap_or_else(|_| panic!("{io:?}: the trickled frame was not closed"))
            .unwrap();
        assert_eq!(close[0], 0x88, "{io:?}: a Close frame: {close:?}");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1008, "{io:?}");
        steady.await.unwrap();
        trickle.abort();
        let (_, _, metrics) = http_get(addr, "/metrics").await;
        assert!(
            metrics.contains("ringws_slow_messages_total 1\n"),
            "{io:?}: {metrics}"
        );
        server.shutdown().unwrap();
    });
    futures_util::future::join_all(runs).await;
}

/// A large message that arrives slowly is not idle: any byte received counts
/// as hearing from the peer. A 4 MiB message trickled over three and a half
/// `--idle-timeout` periods (1 s) is echoed intact, with no Ping before it
/// and no Close 1001. Both backends at once.
#[tokio::test]
async fn a_large_message_arriving_over_several_idle_periods_is_echoed() {
    let runs = BACKENDS.map(|io| async move {
        let server = start(io, |c| c.idle_timeout = Duration::from_secs(1));
        let addr = server.local_addr();
        let payload: Vec<u8> = (0..4 << 20).map(|i| (i % 253) as u8).collect();
        let frame = masked(true, 2, &payload);
        let mut s = raw_upgrade(addr, &[]).await;
        let chunks = 35;
        for chunk in frame.chunks(frame.len().div_ceil(chunks)) {
            s.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let echo = read_frame(&mut s).await;
        assert_eq!((echo.fin, echo.opcode), (true, 2), "{io:?}: not the echo");
        assert!(echo.payload == payload, "{io:?}: echo differs");
        server.shutdown().unwrap();
    });
    futures_util::future::join_all(runs).await;
}
