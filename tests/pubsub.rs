//! Topics against a real server on both backends, two workers: every
//! subscriber on every worker receives each publish once, in order; a
//! publisher is left out of its own publish; senders and the server's
//! publisher publish from other threads; unsubscribed and closed
//! connections get nothing; a subscriber that does not read meets the
//! backpressure policy while the others get everything.

mod common;

use std::time::Duration;

use common::probe::{metric, scrape};
use common::*;
use ringws::{
    Accept, BackpressurePolicy, Config, Conn, Handler, IoMode, Message, Refuse, Request,
    RunningServer,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Subscribes each connection to the topic in its query (`?t=NAME`), and
/// acts on text commands:
/// - `pub TOPIC PAYLOAD`: publishes PAYLOAD to TOPIC (others only);
/// - `send TOPIC PAYLOAD`: the same through a `Sender`, from another thread;
/// - `unsub TOPIC`: unsubscribes, answers `unsubscribed`;
/// - anything else is answered with itself.
#[derive(Clone)]
struct Topics;

impl Handler for Topics {
    type State = String;

    fn upgrade(&self, req: &Request<'_>) -> Result<Accept<String>, Refuse> {
        let topic = req.query().and_then(|q| q.strip_prefix("t=")).unwrap_or("");
        Ok(Accept::new(topic.to_owned()))
    }

    fn open(&self, conn: &mut Conn<'_, String>) {
        let topic = conn.state().clone();
        if !topic.is_empty() {
            assert!(conn.subscribe(&topic));
            assert!(!conn.subscribe(&topic), "once");
        }
    }

    fn message(&self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            conn.reply_in_place();
            return;
        };
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("pub"), Some(topic), Some(payload)) => conn.publish_text(topic, payload),
            (Some("send"), Some(topic), Some(payload)) => {
                let (sender, topic, payload) =
                    (conn.sender(), topic.to_owned(), payload.to_owned());
                std::thread::spawn(move || sender.publish_text(&topic, &payload));
            }
            (Some("unsub"), Some(topic), None) => {
                assert!(conn.unsubscribe(topic));
                conn.send_text("unsubscribed");
            }
            _ => {
                conn.reply_in_place();
            }
        }
    }
}

fn server(io: IoMode, tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        io,
        workers: std::num::NonZeroUsize::new(2),
        close_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    tweak(&mut config);
    ringws::Server::bind(config)
        .unwrap()
        .start_with(Topics)
        .unwrap()
}

async fn join(server: &RunningServer, topic: &str) -> TcpStream {
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = upgrade_request(addr).replace("GET /ws ", &format!("GET /ws?t={topic} "));
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    // Subscribed once the first echo is back (`open` ran before it).
    echo_text(&mut s, "hello").await;
    s
}

async fn echo_text(s: &mut TcpStream, text: &str) {
    s.write_all(&masked(true, 1, text.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_text(s).await, text);
}

async fn read_text(s: &mut TcpStream) -> String {
    let f = read_frame(s).await;
    assert_eq!(f.opcode, 1, "{f:?}");
    String::from_utf8(f.payload).unwrap()
}

async fn command(s: &mut TcpStream, text: &str) {
    s.write_all(&masked(true, 1, text.as_bytes()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_thousand_subscribers_on_both_workers_get_every_message_in_order() {
    const LISTENERS: usize = 1000;
    const MESSAGES: usize = 50;
    for io in BACKENDS {
        let server = server(io, |_| {});
        let mut listeners = Vec::new();
        for _ in 0..LISTENERS {
            listeners.push(join(&server, "room").await);
        }
        // SO_REUSEPORT spread them over both workers.
        for (w, m) in server.metrics().workers.iter().enumerate() {
            assert!(
                m.sessions.get() >= 100,
                "{io:?}: worker {w} has {}",
                m.sessions.get()
            );
        }
        // Not subscribed: publishes only.
        let mut publisher = join(&server, "").await;
        for i in 0..MESSAGES {
            command(&mut publisher, &format!("pub room {i}")).await;
        }
        // Its commands are handled in order: once this echo is back, all
        // were published.
        echo_text(&mut publisher, "published").await;
        // From any thread, through the server's handle: to everyone.
        let handle = server.publisher();
        std::thread::spawn(move || handle.publish_text("room", "from the server"))
            .join()
            .unwrap();
        let tasks: Vec<_> = listeners
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    for i in 0..MESSAGES {
                        assert_eq!(read_text(&mut s).await, i.to_string(), "{io:?}");
                    }
                    assert_eq!(read_text(&mut s).await, "from the server");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // The publisher got nothing of it: its next frame is its echo.
        echo_text(&mut publisher, "still me").await;
        let text = scrape(server.local_addr()).await;
        let frames = metric(&text, "ringws_messages_sent_total").unwrap();
        assert!(
            frames >= (LISTENERS * (MESSAGES + 1)) as f64,
            "{io:?}: {frames} frames sent"
        );
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn a_publisher_is_left_out_and_senders_publish_from_other_threads() {
    for io in BACKENDS {
        let server = server(io, |_| {});
        let mut a = join(&server, "t").await;
        let mut b = join(&server, "t").await;
        command(&mut a, "pub t one").await;
        assert_eq!(read_text(&mut b).await, "one", "{io:?}");
        command(&mut a, "send t two").await;
        assert_eq!(read_text(&mut b).await, "two", "{io:?}");
        command(&mut b, "send t three").await;
        assert_eq!(read_text(&mut a).await, "three", "{io:?}");
        // Neither got its own: the next frame each reads is its echo.
        echo_text(&mut a, "a").await;
        echo_text(&mut b, "b").await;
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn unsubscribed_and_closed_connections_get_nothing() {
    for io in BACKENDS {
        let server = server(io, |_| {});
        let mut a = join(&server, "t").await;
        let mut b = join(&server, "t").await;
        let c = join(&server, "t").await;
        command(&mut b, "unsub t").await;
        assert_eq!(read_text(&mut b).await, "unsubscribed");
        drop(c);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut p = join(&server, "").await;
        command(&mut p, "pub t after").await;
        assert_eq!(read_text(&mut a).await, "after", "{io:?}");
        echo_text(&mut b, "nothing for b").await;
        // The last subscriber leaves; publishing to nobody is fine.
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        command(&mut p, "pub t nobody").await;
        echo_text(&mut p, "p").await;
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn a_subscriber_that_never_reads_meets_the_policy_and_the_others_get_everything() {
    // 8 MB: more than the sockets' buffers hold (loopback's send buffers
    // grow to 4 MiB).
    const MESSAGES: usize = 8000;
    for policy in [BackpressurePolicy::Close, BackpressurePolicy::Drop] {
        for io in BACKENDS {
            let server = server(io, |c| {
                c.backpressure_policy = policy;
                c.write_timeout = Duration::ZERO;
            });
            let addr = server.local_addr();
            // A small receive buffer, never read.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(16 << 10).unwrap();
            let mut slow = socket.connect(addr).await.unwrap();
            let req = upgrade_request(addr).replace("GET /ws ", "GET /ws?t=feed ");
            slow.write_all(req.as_bytes()).await.unwrap();
            assert!(read_head(&mut slow).await.starts_with("HTTP/1.1 101"));
            echo_text(&mut slow, "subscribed").await;
            let mut fast = join(&server, "feed").await;
            let mut publisher = join(&server, "").await;
            let payload = "x".repeat(1000);
            // The fast subscriber reads as it comes; the publisher keeps at
            // most 32 messages (32 KB) ahead of it, within its cap.
            let (progress, mut read) = tokio::sync::watch::channel(0);
            let reader = tokio::spawn(async move {
                for i in 0..MESSAGES {
                    let text = read_text(&mut fast).await;
                    assert_eq!(text[..text.find(' ').unwrap()], i.to_string());
                    progress.send_replace(i + 1);
                }
                fast
            });
            for i in 0..MESSAGES {
                read.wait_for(|&got| got + 32 > i).await.unwrap();
                command(&mut publisher, &format!("pub feed {i} {payload}")).await;
            }
            let _fast = reader.await.unwrap();
            let text = scrape(addr).await;
            let (closes, drops) = (
                metric(&text, "ringws_backpressure_closes_total").unwrap(),
                metric(&text, "ringws_backpressure_drops_total").unwrap(),
            );
            match policy {
                BackpressurePolicy::Close => assert_eq!((closes, drops), (1.0, 0.0), "{io:?}"),
                BackpressurePolicy::Drop => {
                    assert_eq!(closes, 0.0, "{io:?}");
                    assert!(drops > 0.0, "{io:?}");
                }
            }
            drop(slow);
            server.shutdown().unwrap();
        }
    }
}

#[tokio::test]
async fn a_burst_past_the_cap_in_one_read_reaches_subscribers_that_read() {
    // 8 × 16 KiB published from one read: twice the default cap of 64 KiB,
    // queued before any subscriber's session has had its turn to write.
    // The cap bounds what a socket has not taken, so subscribers that read
    // get all of it.
    const MESSAGES: usize = 8;
    for io in BACKENDS {
        let server = server(io, |_| {});
        let addr = server.local_addr();
        let mut listeners = Vec::new();
        for _ in 0..4 {
            listeners.push(join(&server, "burst").await);
        }
        let mut publisher = join(&server, "").await;
        let payload = "y".repeat(16 << 10);
        let mut burst = Vec::new();
        for i in 0..MESSAGES {
            burst.extend(masked(
                true,
                1,
                format!("pub burst {i} {payload}").as_bytes(),
            ));
        }
        publisher.write_all(&burst).await.unwrap();
        for l in &mut listeners {
            for i in 0..MESSAGES {
                assert_eq!(read_text(l).await, format!("{i} {payload}"), "{io:?}");
            }
        }
        let text = scrape(addr).await;
        for name in [
            "ringws_backpressure_closes_total",
            "ringws_backpressure_drops_total",
        ] {
            assert_eq!(metric(&text, name), Some(0.0), "{name} {io:?}");
        }
        server.shutdown().unwrap();
    }
}
