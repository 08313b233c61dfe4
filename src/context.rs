//! What a worker's connections share: the process-wide state ([`Shared`]),
//! the worker's own ([`Worker`]), and a session's place in both
//! ([`SessionSlot`]).
//!
//! Every layer of a connection (the HTTP phase, the session) reaches its
//! worker through here, and nothing here knows those layers: this module
//! imports only the leaves that make up a worker's state.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::budget::Budget;
use crate::buffers::BufferPool;
use crate::config::Config;
use crate::drain::Drain;
use crate::handshakes::Handshakes;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::sessions::LocalSessions;

/// State shared by all workers.
#[derive(Debug)]
pub struct Shared {
    /// The configuration the server was started with.
    pub config: Config,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// The drain switch.
    pub drain: Drain,
    /// Effective `--max-connections`.
    pub max_connections: usize,
    /// Each worker's share of `--max-buffered-bytes` ([`buffered_share`]).
    pub buffered_share: usize,
}

/// State a worker's connections share (never crosses threads).
#[derive(Debug)]
pub struct Worker {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// This worker's counters (this thread is their only writer).
    pub metrics: Arc<WorkerMetrics>,
    /// This worker's open sessions.
    pub sessions: LocalSessions,
    /// Read buffers lent to sessions while they have bytes to parse.
    pub buffers: BufferPool,
    /// Connections in their HTTP phase, oldest first.
    pub handshakes: Handshakes,
    /// This worker's share of `--max-buffered-bytes`.
    pub budget: Budget,
}

/// A session's place in `--max-connections` and in its worker's table;
/// released when dropped, however the session ends.
#[derive(Debug)]
pub struct SessionSlot {
    worker: Rc<Worker>,
    key: usize,
}

impl SessionSlot {
    /// Takes a place whose global count the caller has already incremented.
    pub(crate) fn new(worker: Rc<Worker>) -> Self {
        let key = worker.sessions.enter();
        worker.metrics.sessions.add(1);
        SessionSlot { worker, key }
    }

    /// The session's key in its worker's [`LocalSessions`](LocalSessions).
    pub fn key(&self) -> usize {
        self.key
    }

    /// The worker the session runs on.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let w = &self.worker;
        w.shared
            .metrics
            .open_sessions
            .fetch_sub(1, Ordering::AcqRel);
        w.sessions.leave(self.key);
    }
}

impl Worker {
    /// Worker `id`'s state.
    pub(crate) fn new(shared: Arc<Shared>, id: usize) -> Rc<Worker> {
        Rc::new(Worker {
            metrics: shared.metrics.workers[id].clone(),
            handshakes: Handshakes::new(shared.config.max_pending_handshakes),
            budget: Budget::new(shared.buffered_share),
            shared,
            sessions: Default::default(),
            buffers: Default::default(),
        })
    }

    /// A one-worker context with the default configuration, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Rc<Worker> {
        let config = Config::default();
        let (buffered_share, _) = crate::budget::buffered_share(&config, 1, None);
        Worker::new(
            Arc::new(Shared {
                config,
                metrics: Arc::new(Metrics::new(1, crate::io::Backend::Epoll)),
                drain: Drain::default(),
                max_connections: usize::MAX,
                buffered_share,
            }),
            0,
        )
    }
}
