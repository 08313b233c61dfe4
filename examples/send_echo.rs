//! Echo by sending a copy: every message answered with `conn.send_text` or
//! `send_binary`, the path a handler's own messages take. With
//! `--deflate shared` or `dedicated` the server inflates what it receives
//! and compresses what it sends (`ringws` itself echoes in place, sending
//! a compressed message back as it came). `benches/deflate.sh` measures
//! compression with it.
//!
//! `cargo run --release --example send_echo -- --deflate dedicated`.

use ringws::{Accept, Conn, Handler, Message, Refuse, Request};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

#[derive(Clone)]
struct SendEcho;

impl Handler for SendEcho {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn message(&self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        match msg {
            Message::Text(text) => conn.send_text(text),
            Message::Binary(bytes) => conn.send_binary(bytes),
        };
    }
}

fn main() -> std::process::ExitCode {
    ringws::run(SendEcho)
}
