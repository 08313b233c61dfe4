//! Authentication on upgrade: the token comes in the `token` query parameter
//! (browsers cannot set headers on a WebSocket) or an `Authorization: Bearer`
//! header, and must equal `AUTH_TOKEN` (default `secret`); otherwise `401`.
//! With `ALLOWED_ORIGINS` set (comma-separated), a browser's `Origin` must
//! be one of them (`403` otherwise). The user's name, from the `user`
//! parameter, is the connection's state.
//!
//! `AUTH_TOKEN=s3cret cargo run --release --example auth`, then
//! `npx wscat -c 'ws://localhost:8080/ws?token=s3cret&user=ada'`.

use std::sync::Arc;

use ringws::{Accept, Conn, Handler, Message, Refuse, Request};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

#[derive(Clone)]
struct Auth {
    token: Arc<str>,
    origins: Arc<[String]>,
}

/// The value of query parameter `name` (not percent-decoded).
fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

impl Handler for Auth {
    type State = String;

    fn upgrade(&self, req: &Request<'_>) -> Result<Accept<String>, Refuse> {
        if let Some(origin) = req.header("origin")
            && !self.origins.is_empty()
            && !self.origins.iter().any(|o| o == origin)
        {
            return Err(Refuse::new(403, "origin not allowed"));
        }
        let bearer = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = param(req.query(), "token").or(bearer);
        if token != Some(&*self.token) {
            return Err(Refuse::new(401, "a valid token is required"));
        }
        let user = param(req.query(), "user").unwrap_or("anonymous");
        Ok(Accept::new(user.to_owned()))
    }

    fn open(&self, conn: &mut Conn<'_, String>) {
        let greeting = format!("welcome, {}", conn.state());
        conn.send_text(&greeting);
    }

    fn message(&self, conn: &mut Conn<'_, String>, _msg: Message<'_>) {
        conn.reply_in_place();
    }
}

fn main() -> std::process::ExitCode {
    let origins: Vec<String> = std::env::var("ALLOWED_ORIGINS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    ringws::run(Auth {
        token: std::env::var("AUTH_TOKEN")
            .unwrap_or_else(|_| "secret".into())
            .into(),
        origins: origins.into(),
    })
}
