//! Serving single connections in-process, without listeners or threads:
//! the same HTTP phase and session as a worker, over any stream (an
//! in-memory duplex, a socket). For benchmarks, fuzzing and tests.
//!
//! Everything runs on the calling thread: use it inside a current-thread
//! tokio runtime (or `tokio::task::LocalSet`).

use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::context::{Shared, Worker};
use crate::drain::Drain;
use crate::handler::{Echo, Handler};
use crate::io::{Backend, Stream};
use crate::metrics::Metrics;
use crate::worker;

/// One worker's context, detached from any server, serving handler `H`
/// ([`Echo`] unless made [`Standalone::with_handler`]).
pub struct Standalone<H: Handler = Echo> {
    worker: Rc<Worker<H>>,
}

impl Standalone<Echo> {
    /// An echo server's context with `config`'s limits (its addresses and
    /// worker count are ignored). `--max-connections` defaults to unlimited.
    pub fn new(config: Config) -> Self {
        Standalone::with_handler(config, Echo)
    }
}

impl<H: Handler> Standalone<H> {
    /// A context serving `handler`, with `config`'s limits.
    pub fn with_handler(config: Config, handler: H) -> Self {
        let max_connections = config.max_connections.unwrap_or(usize::MAX);
        let (buffered_share, _) = crate::budget::buffered_share(&config, 1, None);
        let shared = Arc::new(Shared {
            config,
            metrics: Arc::new(Metrics::new(1, Backend::Epoll)),
            drain: Drain::default(),
            max_connections,
            buffered_share,
            hub: Arc::new(crate::pubsub::Hub::new(1)),
        });
        Standalone {
            worker: Worker::new(shared, 0, handler),
        }
    }

    /// Serves `io` as a worker serves an accepted connection: HTTP until it
    /// closes or upgrades, then the WebSocket session, to its end.
    pub async fn serve<S: Stream>(&self, io: S) {
        if let Some(session) = worker::upgrade(io, &self.worker).await {
            session.await;
        }
    }

    /// The worker this context runs connections on.
    #[cfg(test)]
    pub(crate) fn worker(&self) -> &Rc<Worker<H>> {
        &self.worker
    }

    /// The counters of this context.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.worker.shared.metrics
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A busy session keeps its empty read buffer between messages, and
    /// gives it back to the pool when the worker reclaims it.
    #[test]
    fn held_buffer_returns_to_the_pool_on_reclaim() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let standalone = super::Standalone::new(Default::default());
            let worker = standalone.worker().clone();
            let (mut client, server) = tokio::io::duplex(4096);
            tokio::task::spawn_local(async move { standalone.serve(server).await });
            client
                .write_all(
                    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                      Sec-WebSocket-Version: 13\r\n\r\n",
                )
                .await
                .unwrap();
            let mut response = Vec::new();
            while !response.ends_with(b"\r\n\r\n") {
                response.push(client.read_u8().await.unwrap());
            }
            assert!(response.starts_with(b"HTTP/1.1 101"));
            for round in 0..3 {
                let mask = [1, 2, 3, 4];
                let mut frame = vec![0x82, 0x80 | 5];
                frame.extend_from_slice(&mask);
                frame.extend(b"hello".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
                client.write_all(&frame).await.unwrap();
                let mut echo = [0u8; 7];
                client.read_exact(&mut echo).await.unwrap();
                assert_eq!(&echo, b"\x82\x05hello");
                // Let the session reach its next read, which would block.
                tokio::task::yield_now().await;
                assert_eq!(worker.buffers.pooled(), 0, "round {round}: kept");
            }
            worker.sessions.reclaim();
            tokio::task::yield_now().await;
            assert_eq!(worker.buffers.pooled(), 1, "given back");
        });
    }
}
