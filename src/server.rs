//! Starting and stopping the server: backend choice, listeners, worker
//! threads, drain.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::budget::buffered_share;
use crate::config::{Config, IoMode};
use crate::context::Shared;
use crate::drain::Drain;
use crate::handler::{Echo, Handler};
use crate::io::{Backend, Choice, UringUnavailable};
use crate::metrics::Metrics;
use crate::{io as backends, listener, worker};

/// File descriptors kept back from `--max-connections`' default for the
/// process (standard streams, signals, plain HTTP connections such as probes
/// and scrapes)...
const FD_RESERVE: usize = 64;
/// ... and for each worker: seven on io_uring (its listener, its runtime's
/// epoll instances, waker and signal receiver, its ring and its ticker's
/// timerfd), four on epoll (listener, epoll instance, eventfd, timerfd), as
/// counted in `/proc/PID/fd` with 1, 2 and 4 workers; the larger plus one.
const FD_RESERVE_PER_WORKER: usize = 8;

/// Why the server could not start.
#[derive(Debug)]
pub enum Error {
    /// `--io uring` was asked for and io_uring is unavailable.
    Uring(UringUnavailable),
    /// Binding the listeners or starting a worker failed.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Uring(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// A bound server, not yet serving.
pub struct Server {
    shared: Arc<Shared>,
    choice: Choice,
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
}

/// Raises the soft open-file limit to the hard limit; returns the new limit.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

impl Server {
    /// Chooses the backend, raises the open-file limit and binds one
    /// listener per worker. Logs the backend (and why, after a fallback).
    pub fn bind(config: Config) -> Result<Server, Error> {
        let choice = backends::choose(config.io, config.recv_buffers).map_err(Error::Uring)?;
        match (&choice.fallback, config.io, choice.backend) {
            (Some(why), _, _) => tracing::warn!("io_uring unavailable, serving on epoll: {why}"),
            (None, IoMode::Auto, Backend::Epoll) => tracing::info!(
                "io_uring is available; --io auto prefers epoll, which holds less memory per \
                 connection at the same CPU per message (README, Performance); --io uring \
                 overrides"
            ),
            _ => {}
        }
        let nofile = raise_nofile_limit();
        let workers = config.worker_count();
        let capacity = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(FD_RESERVE + FD_RESERVE_PER_WORKER * workers);
        let max_connections = config.max_connections.unwrap_or(capacity);
        let (buffered_share, warning) =
            buffered_share(&config, workers, crate::memory::cgroup_memory_limit());
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        let listeners = listener::bind(SocketAddr::new(config.bind, config.port), workers)?;
        let local_addr = listeners[0].local_addr()?;
        tracing::info!(
            %local_addr,
            backend = %choice.backend,
            ring_flags = choice.uring.map_or("", |r| r.flags.name()),
            recv_buffers = choice.uring.map_or(0, |r| r.buffers),
            workers,
            open_files = nofile,
            max_connections,
            buffered_bytes = buffered_share * workers,
            "ringws listening on ws://{local_addr}{}",
            config.path
        );
        if max_connections > capacity {
            tracing::warn!(
                max_connections,
                capacity,
                "--max-connections exceeds what the open-file limit allows"
            );
        }
        let metrics = Arc::new(Metrics::new(workers, choice.backend));
        let hub = Arc::new(crate::pubsub::Hub::new(workers));
        if let Some(url) = &config.backplane {
            let counters = Arc::new(crate::metrics::BackplaneMetrics::default());
            let _ = metrics.backplane.set(counters.clone());
            let backplane = crate::backplane::start(url, &hub, counters)?;
            hub.bridge(Box::new(backplane));
            tracing::info!(url, "topics are shared through the backplane");
        }
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                metrics,
                drain: Drain::default(),
                max_connections,
                buffered_share,
                hub,
            }),
            choice,
            listeners,
            local_addr,
        })
    }

    /// The address the listeners are bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend the workers will run on.
    pub fn backend(&self) -> Backend {
        self.choice.backend
    }

    /// Starts one thread per worker. Each builds its runtime first; only when
    /// all have does any start accepting, so a worker that cannot get a
    /// runtime (e.g. out of file descriptors) fails the start, with its
    /// error, instead of racing workers that already consume descriptors.
    pub fn start(self) -> io::Result<RunningServer> {
        self.start_with(Echo)
    }

    /// Starts serving `handler` (each worker runs a clone of it), as
    /// [`Server::start`] does [`Echo`].
    pub fn start_with<H: Handler>(self, handler: H) -> io::Result<RunningServer> {
        let workers = self.listeners.len();
        let gate = Arc::new(StartGate::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let mut threads = Vec::with_capacity(workers);
        for (id, listener) in self.listeners.into_iter().enumerate() {
            let shared = self.shared.clone();
            let choice = self.choice.clone();
            let gate = gate.clone();
            let ready = ready_tx.clone();
            let handler = handler.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringws-w{id}"))
                .spawn(move || {
                    let runtime = match backends::Runtime::new(&choice) {
                        Ok(rt) => {
                            let _ = ready.send(Ok(()));
                            rt
                        }
                        Err(e) => {
                            let msg = format!("worker {id}: cannot build its runtime: {e}");
                            let _ = ready.send(Err(io::Error::new(e.kind(), msg)));
                            return Err(e);
                        }
                    };
                    if !gate.wait() {
                        return Ok(());
                    }
                    let res = worker::run(id, &runtime, listener, shared.clone(), handler);
                    if let Err(e) = &res {
                        tracing::error!(worker = id, error = %e, "worker failed; draining");
                        shared.drain.start();
                    }
                    res
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut failed = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(_) => {
                    failed.get_or_insert(io::Error::other("a worker thread exited early"));
                }
            }
        }
        gate.open(failed.is_none());
        if let Some(e) = failed {
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(RunningServer {
            shared: self.shared,
            threads,
            local_addr: self.local_addr,
            backend: self.choice.backend,
        })
    }
}

/// Holds workers between building their runtimes and serving, until all
/// are ready (go) or one failed (stop).
#[derive(Default)]
struct StartGate {
    decision: Mutex<Option<bool>>,
    decided: Condvar,
}

impl StartGate {
    /// Blocks until decided; true means serve.
    fn wait(&self) -> bool {
        let mut d = self.decision.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(go) = *d {
                return go;
            }
            d = self.decided.wait(d).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open(&self, go: bool) {
        *self.decision.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        self.decided.notify_all();
    }
}

/// A server whose workers are running.
pub struct RunningServer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addr: SocketAddr,
    backend: Backend,
}

/// Starts the drain of a running server from any thread.
#[derive(Clone, Debug)]
pub struct DrainHandle(Arc<Shared>);

impl DrainHandle {
    /// Enters the draining phase (see [`crate::drain`]); idempotent.
    pub fn drain(&self) {
        self.0.drain.start();
    }
}

impl RunningServer {
    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend the workers run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// A handle that publishes to the server's topics from any thread.
    pub fn publisher(&self) -> crate::Publisher {
        crate::Publisher(self.shared.hub.clone())
    }

    /// A handle that starts the drain.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle(self.shared.clone())
    }

    /// Starts the drain and waits for it to finish.
    pub fn shutdown(self) -> io::Result<()> {
        self.shared.drain.start();
        self.join()
    }

    /// Waits until every worker has stopped (after a drain, or on error).
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}
