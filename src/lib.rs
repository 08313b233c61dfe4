//! ringws: a thread-per-core WebSocket server for Knative, as a library.
//!
//! An application implements [`Handler`] (upgrade decision, open, message,
//! drained, error, close; the connection's state inline) and serves it with
//! [`run`] from its `main`, or [`Server::start_with`] in-process; the
//! `ringws` binary is `run(Echo)`. See [`handler`] for an example, and
//! `examples/` in the repository.
//!
//! Layout, one concern per module:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the one configuration struct (flags with env fallbacks) |
//! | [`server`] | backend choice, listeners, worker threads, start and stop |
//! | `context` | what a worker's connections share: process-wide state, the worker's own, a session's slot |
//! | `listener` | one SO_REUSEPORT listener per worker |
//! | `worker` | a worker's runtime, accept loop, session count, drain |
//! | [`io`] | the backends, each a per-worker event loop of ringws's own: io_uring (on its own ring: provided receive buffers, one `io_uring_enter` per round) and epoll (on its own epoll instance) |
//! | `http` | the HTTP phase: the request head (capped), then hyper: routes, probes, metrics, upgrade hand-off |
//! | `app` | a program's `main`: [`run`] parses the configuration, logs, serves, drains on SIGTERM |
//! | [`handler`] | the application's API: upgrade decisions, session events, sending; [`Echo`] |
//! | `frame` | server frames: the header's shortest length encoding |
//! | `dispatch` | calling the handler: a `Conn` per callback, panics caught |
//! | `budget` | a worker's share of `--max-buffered-bytes`: what read buffers may hold |
//! | `handshakes` | a worker's connections in their HTTP phase, oldest first, and their bound |
//! | [`upgrade`] | handshake validation and the accept key |
//! | `session` | the protocol engine on fastwebsockets: messages to the handler, its sends out; never knows the backend |
//! | [`utf8`] | incremental UTF-8 validation across fragments |
//! | [`metrics`] | per-worker counters summed on scrape |
//! | [`drain`] | the drain switch and its phases |
//! | `sessions` | a worker's table of open sessions and the ticks delivered through it |
//! | [`backplane`] | topics across processes: one NATS connection per process, on a thread of its own |
//! | `pubsub` | topics: subscribers per worker, a published message framed once and shared, other workers reached through their inboxes |
//! | [`timer`] | timers on either backend: the epoll loop's own, or tokio's |
//! | [`memory`] | huge pages off, and returning freed memory to the OS on quiet workers |
//!
//! Start an echo server in-process (tests do this):
//!
//! ```no_run
//! let config = ringws::Config { port: 0, ..Default::default() };
//! let server = ringws::Server::bind(config)?.start()?;
//! println!("ws://{}/ws", server.local_addr());
//! server.shutdown()?; // drain: Close 1001 to every session, then stop
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod app;
pub mod backplane;
mod budget;
mod buffers;
pub mod config;
mod context;
mod deflate;
mod dispatch;
pub mod drain;
mod frame;
pub mod handler;
mod handshakes;
mod http;
pub mod io;
mod listener;
pub mod memory;
pub mod metrics;
mod pubsub;
pub mod server;
mod session;
mod sessions;
pub mod standalone;
mod ticker;
pub mod timer;
pub mod upgrade;
pub mod utf8;
mod worker;

#[cfg(test)]
mod testing;

pub use app::{run, serve};
pub use config::{BackpressurePolicy, Config, Deflate, IoMode};
pub use handler::{Accept, Conn, Echo, Handler, Message, Page, Refuse, Request, Sender, Sent};
pub use io::Backend;
pub use pubsub::Publisher;
pub use server::{DrainHandle, Error, RunningServer, Server};
