//! Serving single connections in-process, without listeners or threads:
//! the same HTTP phase and session as a worker, over any stream (an
//! in-memory duplex, a socket). For benchmarks, fuzzing and tests.
//!
//! Everything runs on the calling thread: use it inside a current-thread
//! tokio runtime (or `tokio::task::LocalSet`).

use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::drain::Drain;
use crate::io::{Backend, Stream};
use crate::metrics::Metrics;
use crate::server::Shared;
use crate::worker::{self, Worker};

/// One worker's context, detached from any server.
pub struct Standalone {
    worker: Rc<Worker>,
}

impl Standalone {
    /// A context with `config`'s limits (its addresses and worker count are
    /// ignored). `--max-connections` defaults to unlimited.
    pub fn new(config: Config) -> Self {
        let max_connections = config.max_connections.unwrap_or(usize::MAX);
        let (buffered_share, _) = crate::server::buffered_share(&config, 1, None);
        let shared = Arc::new(Shared {
            config,
            metrics: Arc::new(Metrics::new(1, Backend::Epoll)),
            drain: Drain::default(),
            max_connections,
            buffered_share,
        });
        Standalone {
            worker: Worker::standalone(shared),
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
    pub(crate) fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }

    /// The counters of this context.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.worker.shared.metrics
    }
}
