//! Per-connection state: a token bucket per connection. Each connection may
//! send `RATE` messages a second (default 10) with bursts of twice that;
//! one that sends faster is closed with 1008 (policy violation). Messages
//! within the limit are echoed.
//!
//! `RATE=5 cargo run --release --example rate_limit`

use std::time::Instant;

use ringws::{Accept, Conn, Handler, Message, Refuse, Request};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

#[derive(Clone)]
struct RateLimit {
    rate: f64,
}

/// A connection's bucket: tokens left, and when it was last filled.
struct Bucket {
    tokens: f64,
    filled: Instant,
}

impl Handler for RateLimit {
    type State = Bucket;

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<Bucket>, Refuse> {
        Ok(Accept::new(Bucket {
            tokens: 2.0 * self.rate,
            filled: Instant::now(),
        }))
    }

    fn message(&self, conn: &mut Conn<'_, Bucket>, _msg: Message<'_>) {
        let bucket = conn.state();
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.filled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(2.0 * self.rate);
        bucket.filled = now;
        if bucket.tokens < 1.0 {
            conn.close(1008, "message rate over the limit");
            return;
        }
        bucket.tokens -= 1.0;
        conn.reply_in_place();
    }
}

fn main() -> std::process::ExitCode {
    let rate = std::env::var("RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10.0);
    ringws::run(RateLimit { rate })
}
