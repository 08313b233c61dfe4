//! The counter handler, apart from its `main` so that `tests/alloc.rs`
//! counts its allocations.

use std::io::Write;

use ringws::{Accept, Conn, Handler, Message, Refuse, Request};

/// Answers each message with the number of messages its connection has
/// sent, as text, formatted on the stack: answering allocates nothing.
#[derive(Clone)]
pub struct Counter;

impl Handler for Counter {
    type State = u64;

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<u64>, Refuse> {
        Ok(Accept::new(0))
    }

    fn message(&self, conn: &mut Conn<'_, u64>, _msg: Message<'_>) {
        *conn.state() += 1;
        let mut text = [0u8; 20];
        let mut cursor = &mut text[..];
        write!(cursor, "{}", conn.state()).expect("20 digits hold a u64");
        let len = 20 - cursor.len();
        conn.send_text(std::str::from_utf8(&text[..len]).expect("digits"));
    }
}
