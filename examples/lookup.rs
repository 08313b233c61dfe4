//! Asynchronous work from a handler. Callbacks run on the worker's thread
//! and must not wait, and an epoll worker runs no tokio runtime at all; so
//! the application keeps a tokio runtime of its own (here one thread), hands
//! it the work, and answers through the connection's `Sender` when the work
//! is done. This works the same on both backends.
//!
//! Each text message is a key; the answer is `key=value` from a table,
//! found after a simulated 10 ms of I/O (a database or HTTP call in real
//! life), or `key?` when absent.
//!
//! `cargo run --release --example lookup`, then
//! `npx wscat -c ws://localhost:8080/ws` and send `knative`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ringws::{Accept, Conn, Handler, Message, Refuse, Request, Sent};

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

#[derive(Clone)]
struct Lookup {
    runtime: tokio::runtime::Handle,
    table: Arc<HashMap<&'static str, &'static str>>,
}

impl Handler for Lookup {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn message(&self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let Message::Text(key) = msg else {
            conn.close(1003, "send text keys");
            return;
        };
        let key = key.to_owned();
        let sender = conn.sender();
        let table = self.table.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let answer = match table.get(key.as_str()) {
                Some(value) => format!("{key}={value}"),
                None => format!("{key}?"),
            };
            if sender.send_text(&answer) == Sent::Closing {
                // The connection has gone meanwhile: nothing to do.
            }
        });
    }
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lookup")
        .enable_all()
        .build()
        .expect("the application's runtime");
    let table = HashMap::from([
        ("knative", "serverless on Kubernetes"),
        ("ringws", "a WebSocket server"),
        ("rfc", "6455"),
    ]);
    ringws::run(Lookup {
        runtime: runtime.handle().clone(),
        table: Arc::new(table),
    })
}
