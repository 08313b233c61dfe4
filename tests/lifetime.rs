//! `--max-lifetime`: a session older than its lifetime (plus its jitter)
//! gets Close 1001 after what it has read is answered, on both backends.

mod common;

use std::time::{Duration, Instant};

use common::probe::{self, metric, scrape};
use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn sessions_close_with_1001_at_their_jittered_lifetime() {
    const CLIENTS: usize = 20;
    for io in BACKENDS {
        let server = start(io, |c| {
            c.max_lifetime = Duration::from_secs(2);
            // 0 to 2 s more, drawn per connection.
            c.max_lifetime_jitter = 1.0;
        });
        let addr = server.local_addr();
        let started = Instant::now();
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            clients.push(tokio::spawn(async move {
                let mut s = raw_upgrade(addr, &[]).await;
                // Keeps talking until told to go: every message sent before
                // the Close is answered first.
                for k in 0.. {
                    let msg = format!("client {i} message {k}");
                    s.write_all(&masked(true, 1, msg.as_bytes())).await.unwrap();
                    let f = read_frame(&mut s).await;
                    if f.opcode == 8 {
                        assert_eq!(f.close_code(), Some(1001), "{io:?}");
                        assert_eq!(&f.payload[2..], b"connection lifetime reached");
                        return started.elapsed();
                    }
                    assert_eq!(f.payload, msg.as_bytes(), "{io:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                unreachable!()
            }));
        }
        let mut lived = Vec::new();
        for c in clients {
            lived.push(c.await.unwrap());
        }
        lived.sort();
        let (first, last) = (lived[0], lived[CLIENTS - 1]);
        // The worker's clock counts whole seconds: a lifetime may end up to
        // a second early or (between checks) late.
        assert!(first >= Duration::from_secs(1), "{io:?}: {lived:?}");
        assert!(last <= Duration::from_secs(6), "{io:?}: {lived:?}");
        assert!(
            last - first >= Duration::from_millis(500),
            "{io:?}: the jitter spreads the closes: {lived:?}"
        );
        let text = scrape(addr).await;
        assert_eq!(
            metric(&text, "ringws_lifetime_closes_total"),
            Some(CLIENTS as f64),
            "{io:?}"
        );
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn a_session_whose_reply_waits_closes_once_it_is_read() {
    for io in BACKENDS {
        let server = start(io, |c| {
            c.max_lifetime = Duration::from_secs(1);
            c.max_lifetime_jitter = 0.0;
            c.write_timeout = Duration::ZERO;
            c.close_timeout = Duration::from_secs(10);
        });
        let addr = server.local_addr();
        // An 8 MiB message whose echo the client does not read until the
        // lifetime has passed: with a small receive buffer, more than the
        // sockets take (loopback's send buffers grow to 4 MiB), so the
        // session's write waits meanwhile.
        let payload = pattern(1, 0, 8 << 20);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(32 << 10).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(upgrade_request(addr).as_bytes()).await.unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
        s.write_all(&masked(true, 2, &payload)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let f = read_frame(&mut s).await;
        assert_eq!(f.opcode, 2, "{io:?}");
        assert!(f.payload == payload, "{io:?}: the echo is whole");
        let f = read_frame(&mut s).await;
        assert_eq!(f.close_code(), Some(1001), "{io:?}: {f:?}");
        // The client answers; the server closes TCP.
        s.write_all(&masked(true, 8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        assert!(
            probe::closed_within(&mut s, Duration::from_secs(5))
                .await
                .is_some(),
            "{io:?}"
        );
        drop(s);
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn without_a_lifetime_sessions_stay() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        let mut s = raw_upgrade(addr, &[]).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        echo_once(&mut s, b"still here", "after 2.5 s").await;
        let text = scrape(addr).await;
        assert_eq!(metric(&text, "ringws_lifetime_closes_total"), Some(0.0));
        server.shutdown().unwrap();
    }
}
