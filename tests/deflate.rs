//! permessage-deflate (`--deflate shared` and `dedicated`) on both
//! backends, with frames compressed and inflated here as a client does:
//! negotiation, compressed messages in one frame and in fragments, what a
//! handler sends, context kept in dedicated mode, the decompression bomb
//! (1009) and the protocol errors (1002, 1007).

mod common;

use std::time::{Duration, Instant};

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use ringws::{
    Accept, Config, Conn, Deflate, Handler, IoMode, Message, Refuse, Request, RunningServer,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Echoes in place, except `json N`, answered with N bytes of JSON sent by
/// the handler (compressed when long enough), `later N` the same from
/// another thread through a `Sender`, then `done`; `sub` subscribes to topic
/// `t` (answered `subscribed`), `pub N` publishes N bytes of JSON to it.
#[derive(Clone)]
struct Json;

impl Handler for Json {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn message(&self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        if let Message::Text(text) = msg {
            if let Some(n) = text.strip_prefix("json ") {
                conn.send_text(&json(n.parse().unwrap()));
                return;
            }
            if let Some(n) = text.strip_prefix("pub ") {
                conn.publish_text("t", &json(n.parse().unwrap()));
                return;
            }
            if let Some(n) = text.strip_prefix("later ") {
                let (sender, n) = (conn.sender(), n.parse().unwrap());
                std::thread::spawn(move || {
                    sender.send_text(&json(n));
                    sender.send_text("done");
                });
                return;
            }
            if text == "sub" {
                conn.subscribe("t");
                conn.send_text("subscribed");
                return;
            }
        }
        conn.reply_in_place();
    }
}

/// A JSON array of exactly `len` bytes (at least 2).
fn json(len: usize) -> String {
    let len = len.max(2);
    let mut s = String::from("[");
    while s.len() + 40 < len {
        s.push_str("{\"user\":\"ana\",\"text\":\"hello there\"},");
    }
    s.push_str(&"x".repeat(len - s.len() - 1));
    s.push(']');
    s
}

fn server(io: IoMode, deflate: Deflate, tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        io,
        workers: std::num::NonZeroUsize::new(2),
        close_timeout: Duration::from_secs(1),
        deflate,
        ..Config::default()
    };
    tweak(&mut config);
    ringws::Server::bind(config)
        .unwrap()
        .start_with(Json)
        .unwrap()
}

/// Upgrades with `offer` in Sec-WebSocket-Extensions; returns the stream
/// and the answer, if any.
async fn connect(server: &RunningServer, offer: &str) -> (TcpStream, Option<String>) {
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = upgrade_request(addr).replace(
        "\r\n\r\n",
        &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"),
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let answer = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-extensions: "))
        .map(str::to_owned);
    (s, answer)
}

/// Deflates `payload` as a client with no context takeover does: a
/// stand-alone stream, its sync-flush tail removed.
fn deflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, bits);
    let mut out = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 22);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len(), "all of it inflated");
    out
}

/// A client frame with RSV1 set (compressed).
fn compressed(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = masked(fin, opcode, payload);
    f[0] |= 0x40;
    f
}

/// Reads one server frame: (RSV1, opcode, payload).
async fn read(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let (first, payload) = read_frame_bits(s).await;
    assert_eq!(first & 0x30, 0, "RSV2/RSV3");
    assert_eq!(first & 0x80, 0x80, "unfragmented");
    (first & 0x40 != 0, first & 0x0f, payload)
}

/// Reads a message, inflating it if it is compressed.
async fn read_message(s: &mut TcpStream, bits: u8) -> (bool, u8, Vec<u8>) {
    let (rsv1, opcode, payload) = read(s).await;
    let payload = if rsv1 {
        inflate(&payload, bits)
    } else {
        payload
    };
    (rsv1, opcode, payload)
}

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The shortest message the server compresses in shared mode at level 1
/// (in dedicated mode: 64 bytes).
const SHARED_MIN: usize = 512;

#[tokio::test]
async fn offers_are_answered_only_when_enabled() {
    for io in BACKENDS {
        let off = server(io, Deflate::Off, |_| {});
        let (_, answer) = connect(&off, "permessage-deflate; client_max_window_bits").await;
        assert_eq!(answer, None, "{io:?}");
        off.shutdown().unwrap();

        let on = server(io, Deflate::Shared, |_| {});
        let (mut s, answer) = connect(&on, "permessage-deflate; client_max_window_bits").await;
        assert_eq!(answer.as_deref(), Some(ANSWER), "{io:?}");
        // Uncompressed messages still go both ways.
        s.write_all(&masked(true, 1, b"plain")).await.unwrap();
        assert_eq!(read(&mut s).await, (false, 1, b"plain".to_vec()));
        let (_, answer) = connect(&on, "permessage-deflate; server_max_window_bits=10").await;
        assert_eq!(
            answer.as_deref(),
            Some(&*format!("{ANSWER}; server_max_window_bits=9")),
            "{io:?}"
        );
        // A malformed offer is declined; the handshake still succeeds.
        let (_, answer) = connect(&on, "permessage-deflate; server_max_window_bits=99").await;
        assert_eq!(answer, None, "{io:?}");
        on.shutdown().unwrap();
    }
}

#[tokio::test]
async fn compressed_messages_round_trip() {
    for io in BACKENDS {
        let server = server(io, Deflate::Shared, |_| {});
        let (mut s, _) = connect(&server, "permessage-deflate").await;
        for len in [1, 200, 600, 5_000, 200_000] {
            let text = json(len.max(2));
            // Echo in place: the same compressed bytes come back.
            let sent = deflate(text.as_bytes(), 15);
            s.write_all(&compressed(true, 1, &sent)).await.unwrap();
            let (rsv1, opcode, payload) = read(&mut s).await;
            assert!(rsv1 && opcode == 1, "{io:?} {len}");
            assert_eq!(payload, sent, "{io:?} {len}");
            // In fragments: joined, inflated, answered with a copy the
            // server compresses itself.
            let (a, b) = sent.split_at(sent.len() / 2);
            s.write_all(&compressed(false, 1, a)).await.unwrap();
            s.write_all(&masked(true, 0, b)).await.unwrap();
            let (rsv1, _, got) = read_message(&mut s, 15).await;
            assert_eq!(rsv1, text.len() >= SHARED_MIN, "{io:?} {len}");
            assert_eq!(got, text.as_bytes(), "{io:?} {len}");
            // Sent by the handler: compressed from 512 bytes on (level 1).
            s.write_all(&masked(true, 1, format!("json {len}").as_bytes()))
                .await
                .unwrap();
            let (rsv1, _, got) = read_message(&mut s, 15).await;
            assert_eq!(rsv1, len >= SHARED_MIN, "{io:?} {len}");
            assert_eq!(got, json(len).as_bytes(), "{io:?} {len}");
        }
        // From another thread, through a Sender: compressed all the same.
        for len in [50, 20_000] {
            s.write_all(&masked(true, 1, format!("later {len}").as_bytes()))
                .await
                .unwrap();
            let (rsv1, _, got) = read_message(&mut s, 15).await;
            assert_eq!(rsv1, len >= SHARED_MIN, "{io:?} {len}");
            assert_eq!(got, json(len).as_bytes(), "{io:?} {len}");
            assert_eq!(read(&mut s).await, (false, 1, b"done".to_vec()), "{io:?}");
        }
        // A narrow window: what the server compresses fits 10 bits.
        let (mut s, _) = connect(&server, "permessage-deflate; server_max_window_bits=10").await;
        let text = json(100_000);
        s.write_all(&compressed(true, 1, &deflate(text.as_bytes(), 15)))
            .await
            .unwrap();
        let (rsv1, _, got) = read_message(&mut s, 10).await;
        assert!(rsv1);
        assert_eq!(got, text.as_bytes(), "{io:?}");
        server.shutdown().unwrap();
    }
}

/// Inflates `payload` with `client`'s inflater, which keeps its window
/// from message to message (a client with context takeover).
fn inflate_kept(client: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    let before = client.total_in();
    client
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid for a client that keeps its window");
    assert_eq!((client.total_in() - before) as usize, input.len());
    out
}

/// Reads a message as a client with context takeover: (RSV1, the bytes on
/// the wire, the message).
async fn read_kept(s: &mut TcpStream, client: &mut Decompress) -> (bool, usize, Vec<u8>) {
    let (rsv1, opcode, payload) = read(s).await;
    assert_eq!(opcode, 1);
    let wire = payload.len();
    let message = if rsv1 {
        inflate_kept(client, &payload)
    } else {
        payload
    };
    (rsv1, wire, message)
}

#[tokio::test]
async fn dedicated_mode_keeps_context_across_every_way_a_message_is_sent() {
    for io in BACKENDS {
        let server = server(io, Deflate::Dedicated, |_| {});
        let (mut publisher, _) = connect(&server, "x-none").await;
        for (offer, bits) in [
            ("permessage-deflate; client_max_window_bits", 15),
            ("permessage-deflate; server_max_window_bits=10", 10),
        ] {
            let (mut s, answer) = connect(&server, offer).await;
            let answer = answer.expect("accepted");
            assert!(!answer.contains("server_no_context_takeover"), "{answer}");
            let mut client = Decompress::new_with_window_bits(false, bits);
            s.write_all(&masked(true, 1, b"sub")).await.unwrap();
            assert_eq!(read(&mut s).await, (false, 1, b"subscribed".to_vec()));
            for round in 0..4 {
                let what = format!("{io:?} {offer} round {round}");
                // From the handler: the second copy of a message refers
                // back to the first.
                let mut wire = Vec::new();
                for _ in 0..2 {
                    s.write_all(&masked(true, 1, b"json 2000")).await.unwrap();
                    let (rsv1, n, got) = read_kept(&mut s, &mut client).await;
                    assert!(rsv1, "{what}");
                    assert_eq!(got, json(2000).as_bytes(), "{what}");
                    wire.push(n);
                }
                // (64 and 42 bytes: the array repeats itself, so the first
                // copy is small already; in later rounds both refer back.)
                if bits == 15 && round == 0 {
                    assert!(wire[1] < wire[0], "{what}: {wire:?} bytes");
                }
                // Through a Sender, from another thread.
                s.write_all(&masked(true, 1, b"later 900")).await.unwrap();
                let (_, _, got) = read_kept(&mut s, &mut client).await;
                assert_eq!(got, json(900).as_bytes(), "{what}");
                assert_eq!(read(&mut s).await, (false, 1, b"done".to_vec()), "{what}");
                // Published: compressed once, on its own.
                publisher
                    .write_all(&masked(true, 1, b"pub 700"))
                    .await
                    .unwrap();
                let (rsv1, _, got) = read_kept(&mut s, &mut client).await;
                assert!(rsv1, "{what}");
                assert_eq!(got, json(700).as_bytes(), "{what}");
                // Its own compressed message, echoed (in place when the
                // window is wide, compressed again when narrow).
                let text = json(3000 + round);
                s.write_all(&compressed(true, 1, &deflate(text.as_bytes(), 15)))
                    .await
                    .unwrap();
                let (_, _, got) = read_kept(&mut s, &mut client).await;
                assert_eq!(got, text.as_bytes(), "{what}");
                // In fragments, then a short one, sent plain.
                let sent = deflate(text.as_bytes(), 15);
                let (a, b) = sent.split_at(sent.len() / 2);
                s.write_all(&compressed(false, 1, a)).await.unwrap();
                s.write_all(&masked(true, 0, b)).await.unwrap();
                let (_, _, got) = read_kept(&mut s, &mut client).await;
                assert_eq!(got, text.as_bytes(), "{what}");
                s.write_all(&masked(true, 1, b"json 60")).await.unwrap();
                let (rsv1, _, got) = read_kept(&mut s, &mut client).await;
                assert!(!rsv1, "{what}");
                assert_eq!(got, json(60).as_bytes(), "{what}");
            }
        }
        // The client may forbid it: then the server's messages stand alone.
        let (mut s, answer) =
            connect(&server, "permessage-deflate; server_no_context_takeover").await;
        assert_eq!(answer.as_deref(), Some(ANSWER));
        for _ in 0..2 {
            s.write_all(&masked(true, 1, b"json 2000")).await.unwrap();
            let (rsv1, _, got) = read_message(&mut s, 15).await;
            assert!(rsv1);
            assert_eq!(got, json(2000).as_bytes(), "{io:?}");
        }
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn subscribers_get_a_publish_compressed_or_not_as_they_agreed() {
    for io in BACKENDS {
        let server = server(io, Deflate::Shared, |_| {});
        let mut subscribers = Vec::new();
        for offer in [
            "permessage-deflate",
            "x-unknown",
            "permessage-deflate; server_max_window_bits=10",
        ] {
            for _ in 0..3 {
                let (mut s, answer) = connect(&server, offer).await;
                s.write_all(&masked(true, 1, b"sub")).await.unwrap();
                assert_eq!(read(&mut s).await, (false, 1, b"subscribed".to_vec()));
                subscribers.push((s, answer.is_some(), offer.contains("bits=10")));
            }
        }
        let (mut publisher, _) = connect(&server, "permessage-deflate").await;
        for len in [20, 5_000, 100_000] {
            publisher
                .write_all(&masked(true, 1, format!("pub {len}").as_bytes()))
                .await
                .unwrap();
            for (s, deflate, narrow) in &mut subscribers {
                let bits = if *narrow { 10 } else { 15 };
                let (rsv1, opcode, got) = read_message(s, bits).await;
                assert_eq!(
                    (rsv1, opcode),
                    (*deflate && len >= SHARED_MIN, 1),
                    "{io:?} {len}"
                );
                assert_eq!(got, json(len).as_bytes(), "{io:?} {len}");
            }
        }
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn a_bomb_is_answered_1009_before_it_is_inflated() {
    for io in BACKENDS {
        let server = server(io, Deflate::Shared, |c| c.max_message_size = 4 << 20);
        // 1 GiB of zeros in ~1 MiB: the deflate blocks of 1 MiB of zeros
        // (a literal 0, then matches at distance 1), sync-flushed, so they
        // end on a byte boundary and can follow each other 1,024 times.
        let block = deflate(&vec![0u8; 1 << 20], 15);
        let block = [&block[..], &[0, 0, 0xff, 0xff]].concat();
        let bomb = block.repeat(1024);
        // Within --max-message-size as it arrives: the limit must stop
        // the inflating.
        assert!(bomb.len() < 4 << 20, "{}", bomb.len());
        let (mut s, _) = connect(&server, "permessage-deflate").await;
        let t0 = Instant::now();
        // The server closes before it has read all of it.
        let _ = s
            .write_all(&compressed(true, 2, &bomb[..bomb.len() - 4]))
            .await;
        expect_close(&mut s, 1009).await;
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn compression_errors_close_the_connection() {
    for io in BACKENDS {
        let on = server(io, Deflate::Shared, |_| {});
        let off = server(io, Deflate::Off, |_| {});
        let hello = deflate(b"hello hello hello", 15);
        let bad_utf8 = deflate(b"\xff\xfe not text", 15);
        let (a, b) = hello.split_at(3);
        let cases: [(&RunningServer, Vec<u8>, u16); 5] = [
            // RSV1 without the extension.
            (&off, compressed(true, 1, &hello), 1002),
            // RSV1 on a continuation frame.
            (
                &on,
                [compressed(false, 1, a), compressed(true, 0, b)].concat(),
                1002,
            ),
            // RSV1 on a control frame.
            (&on, compressed(true, 9, b"ping"), 1002),
            // Not deflate.
            (&on, compressed(true, 2, b"\xff\xff\xff\xff"), 1007),
            // Text that is not UTF-8 once inflated.
            (&on, compressed(true, 1, &bad_utf8), 1007),
        ];
        for (server, bytes, code) in cases {
            let (mut s, _) = connect(server, "permessage-deflate").await;
            s.write_all(&bytes).await.unwrap();
            expect_close(&mut s, code).await;
        }
        on.shutdown().unwrap();
        off.shutdown().unwrap();
    }
}
