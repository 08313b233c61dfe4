//! A peer that never reads, while a `Sender` streams messages at it: the
//! sender meets `--max-backpressure`, the connection closes with 1008, and
//! the process's RSS stays bounded. Alone in its test binary, so that no
//! other test's memory blurs the RSS.

mod common;

use std::time::{Duration, Instant};

use common::probe::{RssPeak, metric, rss_kib_of, scrape};
use common::*;
use ringws::{Accept, Config, Conn, Handler, Message, Refuse, Request, Sent};
use tokio::io::AsyncWriteExt;

/// On its first message, streams 8 KiB binary messages to the connection
/// from another thread until a send is refused, then reports how many
/// were queued and how the last one fared.
#[derive(Clone)]
struct Streamer(std::sync::mpsc::Sender<(u64, Sent)>);

impl Handler for Streamer {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn message(&self, conn: &mut Conn<'_, ()>, _msg: Message<'_>) {
        let sender = conn.sender();
        let report = self.0.clone();
        std::thread::spawn(move || {
            let chunk = [3u8; 8 << 10];
            let start = Instant::now();
            let mut n = 0;
            let last = loop {
                match sender.send_binary(&chunk) {
                    Sent::Queued => n += 1,
                    other => break other,
                }
                if start.elapsed() > Duration::from_secs(20) {
                    break Sent::Queued;
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            let _ = report.send((n, last));
        });
    }
}

#[tokio::test]
async fn a_peer_that_never_reads_meets_the_backpressure_cap() {
    for io in BACKENDS {
        let (tx, rx) = std::sync::mpsc::channel();
        let config = Config {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            io,
            max_backpressure: 256 << 10,
            ..Config::default()
        };
        let server = ringws::Server::bind(config)
            .unwrap()
            .start_with(Streamer(tx))
            .unwrap();
        let addr = server.local_addr();
        let mut s = raw_upgrade(addr, &[]).await;
        let before = rss_kib_of(std::process::id()).unwrap();
        let peak = RssPeak::start(std::process::id());
        s.write_all(&masked(true, 1, b"stream")).await.unwrap();
        // This client never reads again.
        let (n, last) =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
                .await
                .unwrap()
                .expect("the sender reports");
        assert_eq!(last, Sent::Closing, "{io:?}: the sender was not stopped");
        // What was accepted: the cap, one message over it, and what the
        // kernel's socket buffers took on the way to a peer that never reads.
        let accepted = n * (8 << 10);
        let grown = peak.stop().saturating_sub(before);
        eprintln!("{io:?}: {accepted} B accepted, RSS grew {grown} KiB at most");
        assert!(
            accepted < (256 << 10) + (16 << 20),
            "{io:?}: {accepted} B accepted"
        );
        // Unbounded, the sender would have queued ~800 MB in its 20 s.
        assert!(grown < 16 << 10, "{io:?}: RSS grew {grown} KiB");
        let text = scrape(addr).await;
        assert_eq!(
            metric(&text, "ringws_backpressure_closes_total"),
            Some(1.0),
            "{io:?}"
        );
        drop(s);
        server.shutdown().unwrap();
    }
}
