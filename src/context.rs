//! What a worker's connections share: the process-wide state ([`Shared`]),
//! the worker's own ([`Worker`]), and a session's place in both
//! ([`SessionSlot`]).
//!
//! Every layer of a connection (the HTTP phase, the session) reaches its
//! worker through here, and nothing here knows those layers: this module
//! imports only the leaves that make up a worker's state.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;

use crate::budget::Budget;
use crate::buffers::BufferPool;
use crate::config::Config;
use crate::deflate::{Deflater, Inflater};
use crate::drain::Drain;
use crate::handler::{Backpressure, Echo, Handler, Mailbox};
use crate::handshakes::Handshakes;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::pubsub::{Hub, LocalTopics};
use crate::sessions::{Lifetime, LocalSessions, Pace};

/// State shared by all workers.
#[derive(Debug)]
pub struct Shared {
    /// The configuration the server was started with.
    pub(crate) config: Config,
    /// Counters and gauges.
    pub(crate) metrics: Arc<Metrics>,
    /// The drain switch.
    pub(crate) drain: Drain,
    /// Effective `--max-connections`.
    pub(crate) max_connections: usize,
    /// Each worker's share of `--max-buffered-bytes` ([`buffered_share`]).
    pub(crate) buffered_share: usize,
    /// Topics: which workers have subscribers, and their inboxes.
    pub(crate) hub: Arc<Hub>,
}

/// State a worker's connections share (never crosses threads).
pub struct Worker<H: Handler = Echo> {
    /// The application: this worker's clone of the server's handler.
    pub(crate) handler: H,
    /// Where a callback's sends are framed: lent to one callback at a time,
    /// and kept by the session if the callback sent anything (the next
    /// callback then starts with a buffer from the pool).
    pub(crate) out: RefCell<BytesMut>,
    /// The limits of what a session may queue for its peer.
    pub(crate) backpressure: Backpressure,
    /// The mailboxes of the sessions that gave out a `Sender`, by key.
    pub(crate) mailboxes: RefCell<HashMap<usize, Arc<Mailbox>>>,
    /// Process-wide state.
    pub(crate) shared: Arc<Shared>,
    /// This worker's counters (this thread is their only writer).
    pub(crate) metrics: Arc<WorkerMetrics>,
    /// This worker's open sessions.
    pub(crate) sessions: LocalSessions,
    /// Read buffers lent to sessions while they have bytes to parse.
    pub(crate) buffers: BufferPool,
    /// Connections in their HTTP phase, oldest first.
    pub(crate) handshakes: Handshakes,
    /// This worker's share of `--max-buffered-bytes`.
    pub(crate) budget: Budget,
    /// Whether the housekeeping's frequent jobs have work (raised by the
    /// sessions' table and the budget).
    pub(crate) pace: Rc<Pace>,
    /// This worker's subscribers and their queues.
    pub(crate) topics: LocalTopics,
    /// permessage-deflate: the worker's one inflater and compressor, used
    /// by one message at a time (shared mode).
    pub(crate) inflater: RefCell<Inflater>,
    pub(crate) deflater: Rc<RefCell<Deflater>>,
}

/// A session's place in `--max-connections` and in its worker's table;
/// released when dropped, however the session ends.
pub struct SessionSlot<H: Handler = Echo> {
    worker: Rc<Worker<H>>,
    key: usize,
}

impl<H: Handler> SessionSlot<H> {
    /// Takes a place whose global count the caller has already incremented.
    pub(crate) fn new(worker: Rc<Worker<H>>) -> Self {
        let key = worker.sessions.enter();
        worker.metrics.sessions.add(1);
        SessionSlot { worker, key }
    }

    /// The session's key in its worker's [`LocalSessions`](LocalSessions).
    pub fn key(&self) -> usize {
        self.key
    }

    /// The worker the session runs on.
    pub fn worker(&self) -> &Rc<Worker<H>> {
        &self.worker
    }
}

impl<H: Handler> Drop for SessionSlot<H> {
    fn drop(&mut self) {
        let w = &self.worker;
        w.shared
            .metrics
            .open_sessions
            .fetch_sub(1, Ordering::AcqRel);
        w.topics.leave(self.key);
        w.sessions.leave(self.key);
    }
}

impl<H: Handler> Worker<H> {
    /// Worker `id`'s state, serving `handler`.
    pub(crate) fn new(shared: Arc<Shared>, id: usize, handler: H) -> Rc<Worker<H>> {
        let pace = Rc::new(Pace::default());
        let config = &shared.config;
        // Workers (and processes) draw different jitters.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ id as u64;
        let lifetime = Lifetime::new(config.max_lifetime, config.max_lifetime_jitter, seed);
        let backpressure = Backpressure::of(config);
        let deflater = Rc::new(RefCell::new(Deflater::new(
            config.deflate_level,
            config.deflate_window,
        )));
        let topics = LocalTopics::new(
            id,
            shared.hub.clone(),
            backpressure.cap,
            backpressure.drop,
            shared.metrics.workers[id].clone(),
            deflater.clone(),
        );
        Rc::new(Worker {
            handler,
            out: RefCell::default(),
            backpressure,
            topics,
            mailboxes: RefCell::default(),
            metrics: shared.metrics.workers[id].clone(),
            handshakes: Handshakes::new(shared.config.max_pending_handshakes),
            budget: Budget::new(shared.buffered_share, pace.clone()),
            sessions: LocalSessions::new(lifetime, pace.clone()),
            pace,
            shared,
            buffers: Default::default(),
            inflater: RefCell::default(),
            deflater,
        })
    }

    /// A one-worker context with the default configuration, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(handler: H) -> Rc<Worker<H>> {
        let config = Config::default();
        let (buffered_share, _) = crate::budget::buffered_share(&config, 1, None);
        Worker::new(
            Arc::new(Shared {
                config,
                metrics: Arc::new(Metrics::new(1, crate::io::Backend::Epoll)),
                drain: Drain::default(),
                max_connections: usize::MAX,
                buffered_share,
                hub: Arc::new(Hub::new(1)),
            }),
            0,
            handler,
        )
    }
}
