//! Echo semantics against an independent client (tokio-tungstenite), on both backends.

mod common;

use common::BACKENDS;
use futures_util::{SinkExt, StreamExt};
use ringws::IoMode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> Ws {
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, resp) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), Some(config), true)
            .await
            .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
        .await
        .expect("echo in time")
        .expect("stream open")
        .expect("message")
}

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(IoMode, Ws) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for io in BACKENDS {
        let server = common::start(io, |_| {});
        let ws = connect(server.local_addr()).await;
        test(io, ws).await;
        server.shutdown().unwrap();
    }
}

#[tokio::test]
async fn text_binary_and_empty() {
    each_backend(|io, mut ws| async move {
        for msg in [
            Message::text("hello, ringws"),
            Message::text(""),
            Message::text("κόσμε 𝄞"),
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::binary(Vec::new()),
        ] {
            ws.send(msg.clone()).await.unwrap();
            assert_eq!(next(&mut ws).await, msg, "{io:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn payload_lengths_up_to_the_limit() {
    each_backend(|io, mut ws| async move {
        for len in [125usize, 126, 127, 65535, 65536, 1 << 20, 16 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            ws.send(Message::binary(payload.clone())).await.unwrap();
            match next(&mut ws).await {
                Message::Binary(b) => assert!(b[..] == payload[..], "{io:?} {len}"),
                other => panic!("{io:?} {len}: {other:?}"),
            }
            let text = "é".repeat(len / 2);
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::text(text), "{io:?} {len}");
        }
    })
    .await;
}

#[tokio::test]
async fn fragmented_messages() {
    each_backend(|io, mut ws| async move {
        let parts = ["κό", "σμε", "", " 𝄞 end"];
        let text: String = parts.concat();
        // Split inside a code point as well: "κ" is 0xce 0xba.
        let bytes = text.as_bytes();
        let cuts = [&bytes[..1], &bytes[1..5], &bytes[5..5], &bytes[5..]];
        for (i, chunk) in cuts.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let f = Frame::message(chunk.to_vec(), opcode, i == cuts.len() - 1);
            ws.send(Message::Frame(f)).await.unwrap();
        }
        assert_eq!(next(&mut ws).await, Message::text(text), "{io:?}");

        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        for (i, chunk) in data.chunks(30_000).enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            };
            let last = (i + 1) * 30_000 >= data.len();
            ws.send(Message::Frame(Frame::message(chunk.to_vec(), opcode, last)))
                .await
                .unwrap();
        }
        assert_eq!(next(&mut ws).await, Message::binary(data), "{io:?}");
    })
    .await;
}

#[tokio::test]
async fn thousand_pipelined_messages_in_order() {
    each_backend(|io, mut ws| async move {
        for i in 0..1000 {
            ws.feed(Message::text(format!("message {i}")))
                .await
                .unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..1000 {
            assert_eq!(
                next(&mut ws).await,
                Message::text(format!("message {i}")),
                "{io:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn ping_gets_pong_with_same_payload() {
    each_backend(|io, mut ws| async move {
        ws.send(Message::Ping(b"are you there?"[..].into()))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(b"are you there?"[..].into()),
            "{io:?}"
        );
        // Pings interleaved with a fragmented message.
        ws.send(Message::Frame(Frame::message(
            b"ab".to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Ping(b"mid"[..].into())).await.unwrap();
        ws.send(Message::Frame(Frame::message(
            b"cd".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(b"mid"[..].into()),
            "{io:?}"
        );
        assert_eq!(next(&mut ws).await, Message::text("abcd"), "{io:?}");
    })
    .await;
}

#[tokio::test]
async fn close_handshake_answers_with_peer_code() {
    each_backend(|io, mut ws| async move {
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: Utf8Bytes::from_static("bye"),
        })))
        .await
        .unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4001, "{io:?}"),
            other => panic!("{io:?}: {other:?}"),
        }
        // Then the server closes TCP.
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .unwrap();
        assert!(
            end.is_none() || matches!(end, Some(Err(_))),
            "{io:?}: {end:?}"
        );
    })
    .await;
}
