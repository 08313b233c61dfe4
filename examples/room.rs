//! The pub/sub benchmark handler, with fixed semantics any load client can
//! drive: every connection on the WebSocket path joins one topic, and every
//! text or binary message received is published, unchanged, to every
//! connection of the topic, the sender included (its own copy is the
//! in-place reply; the others get the shared frame).
//!
//! `cargo run --release --example room`, then
//! `target/release/ringws-load fanout --url ws://127.0.0.1:8080/ws`.

use ringws::{Accept, Conn, Handler, Message, Refuse, Request};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

/// The one topic.
const ROOM: &str = "room";

#[derive(Clone)]
struct Room;

impl Handler for Room {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn open(&self, conn: &mut Conn<'_, ()>) {
        conn.subscribe(ROOM);
    }

    fn message(&self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        match msg {
            Message::Text(text) => conn.publish_text(ROOM, text),
            Message::Binary(bytes) => conn.publish_binary(ROOM, bytes),
        }
        conn.reply_in_place();
    }
}

fn main() -> std::process::ExitCode {
    ringws::run(Room)
}
