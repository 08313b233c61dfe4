//! Topics across processes through a real NATS server (`--backplane`): two
//! ringws servers, a client on each in the same room, on both backends.
//! Each message arrives once, in order; the broker is stopped mid-run and
//! local delivery goes on, the gauge drops and publishes are counted as not
//! forwarded; once it is back, forwarding resumes.
//!
//! Needs `nats-server` (Debian's package: `apt-get install nats-server`;
//! `.ci/run` installs it). Without it the tests say so and pass, unless
//! `RINGWS_REQUIRE_NATS=1` (set in CI), where they fail.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::probe::{metric, scrape};
use common::*;
use ringws::{Accept, Config, Conn, Handler, IoMode, Message, Refuse, Request, RunningServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A NATS server on 127.0.0.1, stopped when dropped.
struct Nats {
    child: Child,
    port: u16,
}

impl Nats {
    fn binary() -> Option<String> {
        [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .map(str::to_owned)
    }

    /// Starts one on `port` (0: one it picks), or `None` without a binary.
    fn start(port: u16) -> Option<Nats> {
        let Some(binary) = Nats::binary() else {
            assert!(
                std::env::var("RINGWS_REQUIRE_NATS").as_deref() != Ok("1"),
                "RINGWS_REQUIRE_NATS=1 but no nats-server (apt-get install nats-server)"
            );
            eprintln!("nats-server not found: skipping (apt-get install nats-server)");
            return None;
        };
        let port_arg = if port == 0 {
            "-1".to_owned()
        } else {
            port.to_string()
        };
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                break;
            }
        }
        // Its log goes on: keep reading it (a closed pipe would kill it).
        std::thread::spawn(move || lines.for_each(drop));
        Some(Nats {
            child,
            port: port.expect("nats-server says its port"),
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes each connection to the topic in its query (`?t=NAME`);
/// a text message `pub TOPIC PAYLOAD` publishes PAYLOAD to TOPIC; anything
/// else is answered with itself.
#[derive(Clone)]
struct Rooms;

impl Handler for Rooms {
    type State = ();

    fn upgrade(&self, req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        let _ = req;
        Ok(Accept::new(()))
    }

    fn open(&self, conn: &mut Conn<'_, ()>) {
        conn.subscribe("room");
    }

    fn message(&self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        match msg {
            Message::Text(text) if text.starts_with("pub ") => {
                conn.publish_text("room", &text[4..]);
            }
            _ => {
                conn.reply_in_place();
            }
        }
    }
}

fn server(io: IoMode, nats: &Nats) -> RunningServer {
    let config = Config {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        io,
        workers: std::num::NonZeroUsize::new(2),
        close_timeout: Duration::from_secs(1),
        backplane: Some(nats.url()),
        ..Config::default()
    };
    ringws::Server::bind(config)
        .unwrap()
        .start_with(Rooms)
        .unwrap()
}

async fn member(server: &RunningServer) -> TcpStream {
    let mut s = raw_upgrade(server.local_addr(), &[]).await;
    echo_text(&mut s, "joined").await;
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

async fn publish(s: &mut TcpStream, text: &str) {
    s.write_all(&masked(true, 1, format!("pub {text}").as_bytes()))
        .await
        .unwrap();
}

/// Waits until `name` on `server`'s `/metrics` satisfies `ok`.
async fn wait_metric(server: &RunningServer, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(&scrape(server.local_addr()).await, name);
        if value.is_some_and(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} = {value:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a publish from `from` reaches `to` through the broker (the
/// other process has subscribed there), draining the probes `from`'s
/// neighbours got.
async fn until_linked(from: &mut TcpStream, to: &mut TcpStream) {
    for i in 0.. {
        publish(from, &format!("probe {i}")).await;
        let got = tokio::time::timeout(Duration::from_millis(200), read_frame(to)).await;
        if let Ok(f) = got {
            assert_eq!(f.payload, format!("probe {i}").as_bytes());
            return;
        }
        assert!(i < 100, "never linked");
    }
}

/// Reads text frames, skipping probes, until `text`.
async fn skip_probes_until(s: &mut TcpStream, text: &str) {
    loop {
        let got = read_text(s).await;
        if got == text {
            return;
        }
        assert!(got.starts_with("probe"), "{got}");
    }
}

#[tokio::test]
async fn two_processes_share_a_room_and_survive_the_broker_going_away() {
    for io in BACKENDS {
        let Some(nats) = Nats::start(0) else {
            return;
        };
        let (one, two) = (server(io, &nats), server(io, &nats));
        wait_metric(&one, "ringws_backplane_up", |v| v == 1.0).await;
        wait_metric(&two, "ringws_backplane_up", |v| v == 1.0).await;
        let mut a = member(&one).await;
        let mut a2 = member(&one).await;
        let mut b = member(&two).await;
        until_linked(&mut a, &mut b).await;
        // a2 (beside a) got a's probes directly; skip them.
        a2.write_all(&masked(true, 1, b"sync")).await.unwrap();
        skip_probes_until(&mut a2, "sync").await;
        // In order, once, both ways.
        for i in 0..100 {
            publish(&mut a, &format!("a{i}")).await;
        }
        for i in 0..100 {
            publish(&mut b, &format!("b{i}")).await;
        }
        for i in 0..100 {
            assert_eq!(read_text(&mut b).await, format!("a{i}"), "{io:?}");
        }
        // a2 gets a's directly and b's through the broker, interleaved; each
        // publisher's in order.
        let mut got = Vec::new();
        for _ in 0..200 {
            got.push(read_text(&mut a2).await);
        }
        for who in ["a", "b"] {
            let from: Vec<String> = got.iter().filter(|m| m.starts_with(who)).cloned().collect();
            let want: Vec<String> = (0..100).map(|i| format!("{who}{i}")).collect();
            assert_eq!(from, want, "{io:?}");
        }
        for i in 0..100 {
            assert_eq!(read_text(&mut a).await, format!("b{i}"), "{io:?}");
        }
        // Nothing twice: the next frame each reads is its own echo.
        for s in [&mut a, &mut a2, &mut b] {
            echo_text(s, "nothing more").await;
        }

        // The broker goes away: local delivery goes on, the gauge drops,
        // publishes are counted as not forwarded.
        let port = nats.port;
        drop(nats);
        wait_metric(&one, "ringws_backplane_up", |v| v == 0.0).await;
        publish(&mut a, "while down").await;
        assert_eq!(read_text(&mut a2).await, "while down", "{io:?}");
        wait_metric(&one, "ringws_backplane_not_forwarded_total", |v| v >= 1.0).await;
        // It comes back on the same port: both reconnect and resubscribe.
        let nats = Nats::start(port).expect("restarts");
        wait_metric(&one, "ringws_backplane_up", |v| v == 1.0).await;
        wait_metric(&two, "ringws_backplane_up", |v| v == 1.0).await;
        until_linked(&mut a, &mut b).await;
        publish(&mut b, "after").await;
        // a2 got a's probes; then b's message.
        skip_probes_until(&mut a2, "after").await;
        drop((a, a2, b));
        one.shutdown().unwrap();
        two.shutdown().unwrap();
        drop(nats);
    }
}
