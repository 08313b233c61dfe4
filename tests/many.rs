//! Many concurrent sessions: 5,000 per backend, each echoing (own test binary,
//! so its file descriptors are not shared with other tests).

mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const SESSIONS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_sessions_each_backend() {
    for io in BACKENDS {
        let server = start(io, |_| {});
        let addr = server.local_addr();
        // Open them all (at most 200 handshakes in flight, to stay inside the backlog).
        let gate = Arc::new(Semaphore::new(200));
        let mut opening = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            let gate = gate.clone();
            opening.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                raw_upgrade(addr, &[]).await
            }));
        }
        let mut sockets = Vec::with_capacity(SESSIONS);
        for h in opening {
            sockets.push(h.await.expect("session opened"));
        }
        let (_, _, metrics) = http_get(addr, "/metrics").await;
        assert!(
            metrics.contains(&format!("ringws_sessions_open {SESSIONS}\n")),
            "{io:?}: {metrics}"
        );
        // Every session echoes its own message while all are open.
        let mut echoing = Vec::with_capacity(SESSIONS);
        for (i, mut s) in sockets.into_iter().enumerate() {
            echoing.push(tokio::spawn(async move {
                let msg = format!("session {i}");
                s.write_all(&masked(true, 1, msg.as_bytes())).await.unwrap();
                let f = read_frame(&mut s).await;
                assert_eq!(f.payload, msg.as_bytes());
                s
            }));
        }
        let mut sockets = Vec::with_capacity(SESSIONS);
        for h in echoing {
            sockets.push(h.await.expect("echo verified"));
        }
        // Close them all; the gauge returns to zero.
        for s in &mut sockets {
            s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
                .await
                .unwrap();
        }
        for mut s in sockets {
            let f = read_frame(&mut s).await;
            assert_eq!(f.close_code(), Some(1000), "{io:?}");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        }
        let mut open = String::new();
        for _ in 0..100 {
            let (_, _, metrics) = http_get(addr, "/metrics").await;
            if metrics.contains("ringws_sessions_open 0\n") {
                open.clear();
                break;
            }
            open = metrics;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(open.is_empty(), "{io:?}: sessions still open: {open}");
        server.shutdown().unwrap();
    }
}
