//! A chat with rooms: open `/` in a browser, pick a name and a room, talk.
//! Each room is a topic (`/ws?room=NAME`); a message goes to everyone in
//! the room, the sender included, as `{"from": …, "text": …}` JSON. Run
//! several instances with `--backplane nats://HOST:PORT` and the rooms span
//! them all (README, "Topics across pods"; deploy/chat/ on Knative).
//!
//! `cargo run --release --example chat`, then open http://localhost:8080/.

use ringws::{Accept, Conn, Handler, Message, Page, Refuse, Request};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

/// The web client, served at `/`.
const PAGE: &str = include_str!("page.html");

/// Longest room or user name, in bytes.
const NAME_MAX: usize = 32;

#[derive(Clone)]
struct Chat;

/// A member: their room and name.
struct Member {
    room: String,
    name: String,
}

impl Handler for Chat {
    type State = Member;

    fn upgrade(&self, req: &Request<'_>) -> Result<Accept<Member>, Refuse> {
        let param = |key: &str| {
            req.query()?
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(decode)
        };
        let room = param("room").unwrap_or_else(|| "lobby".to_owned());
        let name = param("name").unwrap_or_else(|| "anonymous".to_owned());
        let valid =
            |s: &str| !s.is_empty() && s.len() <= NAME_MAX && !s.chars().any(char::is_control);
        if !valid(&room) || !valid(&name) {
            return Err(Refuse::new(
                400,
                "room and name: 1 to 32 bytes, no control characters",
            ));
        }
        Ok(Accept::new(Member { room, name }))
    }

    fn open(&self, conn: &mut Conn<'_, Member>) {
        let room = conn.state().room.clone();
        conn.subscribe(&room);
        let joined = json(&conn.state().name, "joined the room", true);
        conn.publish_text(&room, &joined);
    }

    fn message(&self, conn: &mut Conn<'_, Member>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            conn.close(1003, "text messages only");
            return;
        };
        let line = json(&conn.state().name, text, false);
        let room = conn.state().room.clone();
        conn.publish_text(&room, &line);
        conn.send_text(&line);
    }

    fn page(&self, path: &str) -> Option<Page> {
        (path == "/").then(|| Page::html(PAGE))
    }
}

/// `{"from":NAME,"text":TEXT,"event":BOOL}`, with both strings escaped.
fn json(from: &str, text: &str, event: bool) -> String {
    let mut out = String::with_capacity(from.len() + text.len() + 40);
    out.push_str("{\"from\":");
    quote(&mut out, from);
    out.push_str(",\"text\":");
    quote(&mut out, text);
    out.push_str(if event { ",\"event\":true}" } else { "}" });
    out
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Decodes `%XX` and `+` of a query value (an invalid escape is kept).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn main() -> std::process::ExitCode {
    ringws::run(Chat)
}
