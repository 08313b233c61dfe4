//! Each example in `examples/`, run as `cargo run --example NAME` would run
//! it (the binary `cargo test` builds), on both backends.

mod common;

use std::collections::HashSet;

use common::process::Launch;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IO: [&str; 2] = ["uring", "epoll"];

async fn text(s: &mut TcpStream) -> String {
    let f = read_frame(s).await;
    assert_eq!(f.opcode, 1, "{f:?}");
    String::from_utf8(f.payload).unwrap()
}

/// Upgrades with `target` and `extra` header lines; returns the stream and
/// the status.
async fn upgrade(addr: std::net::SocketAddr, target: &str, extra: &str) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head[9..12].parse().unwrap())
}

#[tokio::test]
async fn echo() {
    for io in IO {
        let server = Launch::example("echo", &["--io", io]).start();
        let mut s = raw_upgrade(server.addr, &[]).await;
        echo_once(&mut s, b"hello", io).await;
        echo_once(&mut s, &[7; 70_000], io).await;
    }
}

#[tokio::test]
async fn auth() {
    for io in IO {
        let server = Launch::example("auth", &["--io", io])
            .env("AUTH_TOKEN", "s3cret")
            .env("ALLOWED_ORIGINS", "https://app.example")
            .start();
        let addr = server.addr;
        let (mut s, status) = upgrade(addr, "/ws", "").await;
        assert_eq!(status, 401, "{io}");
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert_eq!(body, "a valid token is required\n");
        assert_eq!(upgrade(addr, "/ws?token=wrong", "").await.1, 401, "{io}");
        let origin = "Origin: https://evil.example\r\n";
        assert_eq!(
            upgrade(addr, "/ws?token=s3cret", origin).await.1,
            403,
            "{io}"
        );
        let (mut s, status) = upgrade(addr, "/ws?token=s3cret&user=ada", "").await;
        assert_eq!(status, 101, "{io}");
        assert_eq!(text(&mut s).await, "welcome, ada", "{io}");
        let bearer = "Authorization: Bearer s3cret\r\nOrigin: https://app.example\r\n";
        let (mut s, status) = upgrade(addr, "/ws", bearer).await;
        assert_eq!(status, 101, "{io}");
        assert_eq!(text(&mut s).await, "welcome, anonymous", "{io}");
        echo_once(&mut s, b"ok", io).await;
    }
}

#[tokio::test]
async fn lookup_answers_through_the_sender() {
    for io in IO {
        let server = Launch::example("lookup", &["--io", io]).start();
        let mut s = raw_upgrade(server.addr, &[]).await;
        s.write_all(&masked(true, 1, b"knative")).await.unwrap();
        assert_eq!(
            text(&mut s).await,
            "knative=serverless on Kubernetes",
            "{io}"
        );
        let mut want = HashSet::new();
        for key in ["rfc", "ringws", "nope"] {
            s.write_all(&masked(true, 1, key.as_bytes())).await.unwrap();
        }
        want.extend(["rfc=6455", "ringws=a WebSocket server", "nope?"].map(String::from));
        let got: HashSet<String> =
            [text(&mut s).await, text(&mut s).await, text(&mut s).await].into();
        assert_eq!(got, want, "{io}");
        s.write_all(&masked(true, 2, b"bin")).await.unwrap();
        expect_close(&mut s, 1003).await;
    }
}

#[tokio::test]
async fn rate_limit_closes_a_fast_sender_with_1008() {
    for io in IO {
        let server = Launch::example("rate_limit", &["--io", io])
            .env("RATE", "5")
            .start();
        let mut s = raw_upgrade(server.addr, &[]).await;
        // A burst of twice the rate is allowed, at once.
        for i in 0..10u8 {
            echo_once(&mut s, &[i; 10], io).await;
        }
        s.write_all(&masked(true, 2, b"one too many"))
            .await
            .unwrap();
        expect_close(&mut s, 1008).await;
    }
}

#[tokio::test]
async fn counter_answers_with_the_count() {
    for io in IO {
        let server = Launch::example("counter", &["--io", io]).start();
        let mut s = raw_upgrade(server.addr, &[]).await;
        for n in 1..=3 {
            s.write_all(&masked(true, 2, b"x")).await.unwrap();
            assert_eq!(text(&mut s).await, n.to_string(), "{io}");
        }
    }
}

#[tokio::test]
async fn room_sends_every_message_to_every_member_the_sender_included() {
    for io in IO {
        let server = Launch::example("room", &["--io", io]).start();
        let mut members = Vec::new();
        for _ in 0..4 {
            members.push(upgrade(server.addr, "/ws", "").await.0);
        }
        // Their sessions subscribe as they start.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for (i, from) in [0usize, 2].into_iter().enumerate() {
            let msg = format!("message {i} from {from}");
            members[from]
                .write_all(&masked(true, 1, msg.as_bytes()))
                .await
                .unwrap();
            for m in &mut members {
                assert_eq!(text(m).await, msg, "{io}");
            }
        }
        let mut bin = members.remove(3);
        bin.write_all(&masked(true, 2, &[1, 2, 3])).await.unwrap();
        for m in members.iter_mut().chain([&mut bin]) {
            let f = read_frame(m).await;
            assert_eq!((f.opcode, f.payload), (2, vec![1, 2, 3]), "{io}");
        }
    }
}

#[tokio::test]
async fn chat_serves_its_page_and_talks_in_rooms() {
    for io in IO {
        let server = Launch::example("chat", &["--io", io]).start();
        let (status, _, body) = http_get(server.addr, "/").await;
        assert_eq!(status, 200, "{io}");
        assert!(body.contains("ReconnectingSocket"), "{io}: the page");
        assert_eq!(http_get(server.addr, "/nothing").await.0, 404, "{io}");
        let (_, refused) = upgrade(server.addr, "/ws?room=", "").await;
        assert_eq!(refused, 400, "{io}: an empty room name");
        let (mut ann, s) = upgrade(server.addr, "/ws?room=a%20b&name=Ann", "").await;
        assert_eq!(s, 101);
        // Ann's own copy back: her session has joined (`open` ran first).
        ann.write_all(&masked(true, 1, b"first")).await.unwrap();
        assert_eq!(text(&mut ann).await, r#"{"from":"Ann","text":"first"}"#);
        let (mut bob, _) = upgrade(server.addr, "/ws?room=a+b&name=Bob", "").await;
        let (mut eve, _) = upgrade(server.addr, "/ws?room=elsewhere&name=Eve", "").await;
        assert_eq!(
            text(&mut ann).await,
            r#"{"from":"Bob","text":"joined the room","event":true}"#
        );
        bob.write_all(&masked(true, 1, "say \"hi\"".as_bytes()))
            .await
            .unwrap();
        let line = r#"{"from":"Bob","text":"say \"hi\""}"#;
        assert_eq!(text(&mut ann).await, line, "{io}");
        assert_eq!(text(&mut bob).await, line, "{io}: the sender too");
        eve.write_all(&masked(true, 1, b"alone")).await.unwrap();
        assert_eq!(text(&mut eve).await, r#"{"from":"Eve","text":"alone"}"#);
        ann.write_all(&masked(true, 1, b"next")).await.unwrap();
        assert_eq!(
            text(&mut bob).await,
            r#"{"from":"Ann","text":"next"}"#,
            "{io}: not Eve's"
        );
    }
}
