//! Echo as a handler of your own: every message answered with itself,
//! framed where it lies in the read buffer (no copy, no allocation), which
//! is what `ringws` itself runs (`ringws::Echo`).
//!
//! `cargo run --release --example echo`, then `npx wscat -c ws://localhost:8080/ws`.

use ringws::{Accept, Conn, Handler, Message, Refuse, Request};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

#[derive(Clone)]
struct Echo;

impl Handler for Echo {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn message(&self, conn: &mut Conn<'_, ()>, _msg: Message<'_>) {
        conn.reply_in_place();
    }
}

fn main() -> std::process::ExitCode {
    ringws::run(Echo)
}
