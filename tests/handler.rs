//! The handler API against a real server on both backends: the order and
//! data of callbacks, upgrade decisions (refusal, subprotocols), messages
//! of the handler's own, closes asked by the handler, backpressure and
//! panics.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::probe::{handshake_failures, metric, scrape};
use common::*;
use ringws::{
    Accept, Config, Conn, Handler, IoMode, Message, Refuse, Request, RunningServer, Sent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Records every callback as "ID EVENT", answers messages with a counter,
/// and acts on some text messages (see `message`).
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<String>>>,
    next_id: Arc<AtomicU64>,
}

/// A connection's state: its id and its message count.
struct State {
    id: u64,
    count: u64,
}

impl Recorder {
    fn log(&self, id: u64, event: String) {
        self.events.lock().unwrap().push(format!("{id} {event}"));
    }

    /// The events of connection `id`, in order.
    fn of(&self, id: u64) -> Vec<String> {
        let prefix = format!("{id} ");
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }
}

impl Handler for Recorder {
    type State = State;

    fn upgrade(&self, req: &Request<'_>) -> Result<Accept<State>, Refuse> {
        if !req.query().is_some_and(|q| q.contains("token=good")) {
            return Err(Refuse::new(401, "a token is required"));
        }
        assert!(req.peer_addr().is_some_and(|a| a.ip().is_loopback()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut accept = Accept::new(State { id, count: 0 });
        if req.query().is_some_and(|q| q.contains("protocol=bogus")) {
            accept = accept.protocol("bogus");
        } else if let Some(p) = req.protocols().find(|p| *p == "chat.v2") {
            accept = accept.protocol(p);
        }
        self.log(id, format!("upgrade {}", req.path()));
        Ok(accept)
    }

    fn open(&self, conn: &mut Conn<'_, State>) {
        let id = conn.state().id;
        assert!(conn.peer_addr().is_some_and(|a| a.ip().is_loopback()));
        self.log(id, "open".into());
        conn.send_text(&format!("hello {id}"));
    }

    fn message(&self, conn: &mut Conn<'_, State>, msg: Message<'_>) {
        let state = conn.state();
        state.count += 1;
        let (id, count) = (state.id, state.count);
        match msg {
            Message::Text("panic") => panic!("the handler panics on purpose"),
            Message::Text("close") => {
                conn.send_text("bye now");
                conn.close(4000, "bye");
            }
            Message::Text("later") => {
                // From another thread, after the callback has returned.
                let sender = conn.sender();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        assert_eq!(sender.send_text(&format!("later {i}")), Sent::Queued);
                    }
                    sender.close(4001, "done later");
                });
            }
            Message::Text("big") => {
                self.log(id, "big".into());
                conn.send_binary(&vec![5u8; 4 << 20]);
            }
            Message::Text("flood") => {
                let chunk = [7u8; 8 << 10];
                let mut n = 0;
                let last = loop {
                    match conn.send_binary(&chunk) {
                        Sent::Queued => n += 1,
                        other => break other,
                    }
                };
                self.log(id, format!("flood {n} {last:?}"));
            }
            Message::Text(text) => {
                self.log(id, format!("text {text}"));
                conn.send_text(&format!("{count}:{text}"));
            }
            Message::Binary(bytes) => {
                self.log(id, format!("binary {}", bytes.len()));
                conn.send_text(&format!("{count}:{}", bytes.len()));
            }
        }
    }

    fn drained(&self, conn: &mut Conn<'_, State>) {
        let id = conn.state().id;
        self.log(id, "drained".into());
    }

    fn error(&self, state: &mut State, error: &ringws::handler::Error) {
        self.log(state.id, format!("error {}", error.code()));
    }

    fn close(&self, state: &mut State, code: u16, reason: &str) {
        self.log(state.id, format!("close {code} {reason}"));
    }
}

fn start(io: IoMode, handler: Recorder, tweak: impl FnOnce(&mut Config)) -> RunningServer {
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
        .expect("bind")
        .start_with(handler)
        .expect("start")
}

/// Sends an upgrade request for `target` with `extra` header lines; returns
/// the stream and the response head.
async fn upgrade(addr: std::net::SocketAddr, target: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Opens a session with a good token; returns it and its id (from the
/// greeting `open` sends).
async fn session(addr: std::net::SocketAddr) -> (TcpStream, u64) {
    let (mut s, head) = upgrade(addr, "/ws?token=good", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let hello = read_frame(&mut s).await;
    let text = String::from_utf8(hello.payload).unwrap();
    let id = text
        .strip_prefix("hello ")
        .expect("greeting")
        .parse()
        .unwrap();
    (s, id)
}

async fn text_reply(s: &mut TcpStream) -> String {
    let f = read_frame(s).await;
    assert_eq!((f.fin, f.opcode), (true, 1), "{f:?}");
    String::from_utf8(f.payload).unwrap()
}

/// Waits until connection `id` has logged `n` events (callbacks run on the
/// server's threads).
async fn events(rec: &Recorder, id: u64, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let got = rec.of(id);
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rec.of(id)
}

#[tokio::test]
async fn callbacks_fire_in_order_with_the_right_data() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |_| {});
        let addr = server.local_addr();
        let (mut s, id) = session(addr).await;
        s.write_all(&masked(true, 1, b"one")).await.unwrap();
        assert_eq!(text_reply(&mut s).await, "1:one", "{io:?}");
        s.write_all(&masked(true, 2, &[1; 300])).await.unwrap();
        assert_eq!(text_reply(&mut s).await, "2:300", "{io:?}");
        // A fragmented message reaches the handler whole.
        s.write_all(&masked(false, 1, b"fra")).await.unwrap();
        s.write_all(&masked(true, 0, b"gmented")).await.unwrap();
        assert_eq!(text_reply(&mut s).await, "3:fragmented", "{io:?}");
        s.write_all(&masked(true, 8, &[0x03, 0xe8, b'o', b'k']))
            .await
            .unwrap();
        let f = read_frame(&mut s).await;
        assert_eq!((f.opcode, f.close_code()), (8, Some(1000)), "{io:?}");
        let got = events(&rec, id, 6).await;
        assert_eq!(
            got,
            [
                "upgrade /ws",
                "open",
                "text one",
                "binary 300",
                "text fragmented",
                "close 1000 ok"
            ],
            "{io:?}"
        );

        // A connection lost without a Close: error 1006, then close.
        let (s, id) = session(addr).await;
        drop(s);
        let got = events(&rec, id, 4).await;
        assert_eq!(
            got[2..],
            ["error 1006", "close 1006 connection lost"],
            "{io:?}"
        );
        // A protocol error: error 1002, then close.
        let (mut s, id) = session(addr).await;
        s.write_all(&frame(true, 1, b"unmasked", None))
            .await
            .unwrap();
        expect_close(&mut s, 1002).await;
        let got = events(&rec, id, 4).await;
        assert_eq!(got[2], "error 1002", "{io:?}");
        assert!(got[3].starts_with("close 1002 "), "{io:?} {got:?}");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn a_refused_upgrade_answers_the_status_and_opens_no_session() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |_| {});
        let addr = server.local_addr();
        let (mut s, head) = upgrade(addr, "/ws?token=bad", "").await;
        assert!(head.starts_with("HTTP/1.1 401"), "{io:?} {head}");
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert_eq!(body, "a token is required\n", "{io:?}");
        assert!(rec.events.lock().unwrap().is_empty(), "{io:?}");
        let text = scrape(addr).await;
        assert_eq!(handshake_failures(&text, "refused"), 1.0, "{io:?}");
        assert_eq!(metric(&text, "ringws_sessions_total"), Some(0.0), "{io:?}");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn the_handler_selects_a_subprotocol_the_client_offered() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |_| {});
        let addr = server.local_addr();
        let offer = "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n";
        let (_s, head) = upgrade(addr, "/ws?token=good", offer).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{io:?} {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: chat.v2\r\n"),
            "{io:?} {head}"
        );
        // Nothing offered: no subprotocol in the answer.
        let (_s, head) = upgrade(addr, "/ws?token=good", "").await;
        assert!(
            !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
            "{head}"
        );
        // One the client did not offer: 500, no session.
        let (_s, head) = upgrade(addr, "/ws?token=good&protocol=bogus", offer).await;
        assert!(head.starts_with("HTTP/1.1 500"), "{io:?} {head}");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn the_handler_closes_after_what_it_sent() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |_| {});
        let (mut s, id) = session(server.local_addr()).await;
        s.write_all(&masked(true, 1, b"close")).await.unwrap();
        assert_eq!(text_reply(&mut s).await, "bye now", "{io:?}");
        let f = read_frame(&mut s).await;
        assert_eq!((f.opcode, f.close_code()), (8, Some(4000)), "{io:?}");
        assert_eq!(&f.payload[2..], b"bye", "{io:?}");
        let got = events(&rec, id, 3).await;
        assert_eq!(got[2..], ["close 4000 bye"], "{io:?}");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn a_panicking_handler_closes_only_its_connection_with_1011() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |c| {
            c.workers = std::num::NonZeroUsize::new(1)
        });
        let addr = server.local_addr();
        let (mut bystander, _) = session(addr).await;
        let (mut s, id) = session(addr).await;
        s.write_all(&masked(true, 1, b"panic")).await.unwrap();
        expect_close(&mut s, 1011).await;
        // The other session on the same worker goes on.
        bystander
            .write_all(&masked(true, 1, b"still"))
            .await
            .unwrap();
        assert_eq!(text_reply(&mut bystander).await, "1:still", "{io:?}");
        let text = scrape(addr).await;
        assert_eq!(
            metric(&text, "ringws_handler_panics_total"),
            Some(1.0),
            "{io:?}"
        );
        // No callback after the panic.
        assert_eq!(rec.of(id), ["upgrade /ws", "open"], "{io:?}");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn sends_past_the_backpressure_cap_close_or_drop() {
    for io in BACKENDS {
        for drop in [false, true] {
            let rec = Recorder::default();
            let server = start(io, rec.clone(), |c| {
                c.max_backpressure = 64 << 10;
                if drop {
                    c.backpressure_policy = ringws::BackpressurePolicy::Drop;
                }
            });
            let addr = server.local_addr();
            let (mut s, id) = session(addr).await;
            s.write_all(&masked(true, 1, b"flood")).await.unwrap();
            // 8 KiB messages (and 4 bytes of header each) until more than
            // 64 KiB is queued: 8 of them.
            for i in 0..8 {
                let f = read_frame(&mut s).await;
                assert_eq!((f.opcode, f.payload.len()), (2, 8 << 10), "{io:?} {i}");
            }
            let got = events(&rec, id, 3).await;
            let text = scrape(addr).await;
            if drop {
                assert_eq!(got[2], "flood 8 Dropped", "{io:?}");
                assert_eq!(metric(&text, "ringws_backpressure_drops_total"), Some(1.0));
                // The session goes on.
                s.write_all(&masked(true, 1, b"after")).await.unwrap();
                assert_eq!(text_reply(&mut s).await, "2:after", "{io:?}");
            } else {
                assert_eq!(got[2], "flood 8 Closing", "{io:?}");
                expect_close(&mut s, 1008).await;
                let text = scrape(addr).await;
                assert_eq!(metric(&text, "ringws_backpressure_closes_total"), Some(1.0));
            }
            server.shutdown().unwrap();
        }
    }
}

#[tokio::test]
async fn what_waited_for_the_peer_is_followed_by_drained() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |_| {});
        let (mut s, id) = session(server.local_addr()).await;
        // 4 MiB in one message: more than the socket buffers take at once,
        // so the write waits for this client to read.
        s.write_all(&masked(true, 1, b"big")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let f = read_frame(&mut s).await;
        assert_eq!((f.opcode, f.payload.len()), (2, 4 << 20), "{io:?}");
        let got = events(&rec, id, 4).await;
        assert_eq!(got[2..], ["big", "drained"], "{io:?}");
        // Nothing waited for this one: no drained.
        s.write_all(&masked(true, 1, b"small")).await.unwrap();
        assert_eq!(text_reply(&mut s).await, "2:small", "{io:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(rec.of(id)[4..], ["text small"], "{io:?}");
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn messages_from_another_thread_arrive_in_order() {
    for io in BACKENDS {
        let rec = Recorder::default();
        let server = start(io, rec.clone(), |_| {});
        let (mut s, id) = session(server.local_addr()).await;
        s.write_all(&masked(true, 1, b"later")).await.unwrap();
        for i in 0..100 {
            assert_eq!(text_reply(&mut s).await, format!("later {i}"), "{io:?}");
        }
        let f = read_frame(&mut s).await;
        assert_eq!((f.opcode, f.close_code()), (8, Some(4001)), "{io:?}");
        let got = events(&rec, id, 3).await;
        assert_eq!(got[2..], ["close 4001 done later"], "{io:?}");
        server.shutdown().unwrap();
    }
}
