//! Counters kept per worker and summed when `/metrics` is scraped.
//!
//! Each worker thread owns one [`WorkerMetrics`] and is its only writer, so an
//! increment is a plain load and store on a cache line no other thread writes
//! (no locked instruction on the per-message path). A scrape on any thread
//! reads every worker's counters with relaxed loads and sums them.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::io::Backend;

/// A counter with a single writer thread: increments are not atomic
/// read-modify-writes, so only the owning worker may call [`LocalCounter::add`].
#[derive(Debug, Default)]
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    /// Adds `n`. Must only be called from the thread that owns this counter.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The current value, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Why a request to the WebSocket path did not become a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not a GET request.
    Method,
    /// No `Upgrade: websocket` (answered 426).
    NotUpgrade,
    /// `Connection` header without the `upgrade` token.
    ConnectionHeader,
    /// `Sec-WebSocket-Version` missing or not 13 (answered 426).
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64.
    Key,
    /// Not HTTP/1.1.
    HttpVersion,
    /// `--max-connections` reached (answered 503).
    Capacity,
    /// The server is draining (answered 503).
    Draining,
    /// The HTTP phase (request and response) did not end within
    /// `--handshake-timeout`.
    Timeout,
    /// The request head is longer than `--max-request-header-size` (answered 431).
    HeaderTooLarge,
    /// More than 100 header lines (`http::MAX_HEADERS`) (answered 431).
    TooManyHeaders,
    /// Closed to make room under `--max-pending-handshakes`: it had been in
    /// its HTTP phase longest.
    PendingLimit,
    /// The handler refused the upgrade (`Handler::upgrade`).
    Refused,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [HandshakeFailure; 13] = [
        HandshakeFailure::Method,
        HandshakeFailure::NotUpgrade,
        HandshakeFailure::ConnectionHeader,
        HandshakeFailure::Version,
        HandshakeFailure::Key,
        HandshakeFailure::HttpVersion,
        HandshakeFailure::Capacity,
        HandshakeFailure::Draining,
        HandshakeFailure::Timeout,
        HandshakeFailure::HeaderTooLarge,
        HandshakeFailure::TooManyHeaders,
        HandshakeFailure::PendingLimit,
        HandshakeFailure::Refused,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Method => "method",
            HandshakeFailure::NotUpgrade => "not_upgrade",
            HandshakeFailure::ConnectionHeader => "connection_header",
            HandshakeFailure::Version => "version",
            HandshakeFailure::Key => "key",
            HandshakeFailure::HttpVersion => "http_version",
            HandshakeFailure::Capacity => "capacity",
            HandshakeFailure::Draining => "draining",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::HeaderTooLarge => "header_too_large",
            HandshakeFailure::TooManyHeaders => "too_many_headers",
            HandshakeFailure::PendingLimit => "pending_limit",
            HandshakeFailure::Refused => "refused",
        }
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// TCP connections accepted.
    pub accepted: LocalCounter,
    /// WebSocket sessions started (101 sent).
    pub sessions: LocalCounter,
    /// Data frames received (text, binary, continuation).
    pub frames_in: LocalCounter,
    /// Payload bytes received in data frames.
    pub bytes_in: LocalCounter,
    /// Data frames echoed.
    pub frames_out: LocalCounter,
    /// Payload bytes echoed.
    pub bytes_out: LocalCounter,
    /// Close frames sent, by our choice or in reply.
    pub closes_sent: LocalCounter,
    /// Sessions closed because their writes stalled (`--write-timeout`).
    pub write_stalls: LocalCounter,
    /// Times a session was refused room to buffer more by the worker's
    /// share of `--max-buffered-bytes`, and waited unread.
    pub budget_waits: LocalCounter,
    /// Sessions closed with 1013 to make room in that budget.
    pub budget_closes: LocalCounter,
    /// Sessions closed with 1008 for an incomplete frame arriving slower than
    /// `--min-message-rate`.
    pub slow_messages: LocalCounter,
    /// Sessions closed with 1008 for a send past `--max-backpressure`.
    pub backpressure_closes: LocalCounter,
    /// Messages dropped past `--max-backpressure` (`--backpressure-policy drop`).
    pub backpressure_drops: LocalCounter,
    /// Sessions closed with 1001 at the end of `--max-lifetime`.
    pub lifetime_closes: LocalCounter,
    /// Handler callbacks that panicked (each closed its connection with 1011).
    pub handler_panics: LocalCounter,
    /// Bytes this worker's sessions hold in read buffers (a gauge, written
    /// by the worker's housekeeping).
    pub buffered_bytes: AtomicU64,
    /// Handshake failures, indexed like [`HandshakeFailure::ALL`].
    pub handshake_failures: [LocalCounter; HandshakeFailure::ALL.len()],
}

impl WorkerMetrics {
    /// Counts one failed handshake.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].add(1);
    }
}

/// Process-wide view: every worker's counters plus the shared gauges.
#[derive(Debug)]
pub struct Metrics {
    /// One entry per worker, in worker order.
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// WebSocket sessions open now (also the `--max-connections` count).
    pub open_sessions: AtomicUsize,
    /// The backend the workers run on.
    pub backend: Backend,
    /// The cross-pod backplane's counters, when `--backplane` is set.
    pub backplane: OnceLock<Arc<BackplaneMetrics>>,
}

/// What the backplane counts; read by `/metrics`.
#[derive(Debug, Default)]
pub struct BackplaneMetrics {
    /// Connected to the broker now.
    pub up: AtomicBool,
    /// Publishes sent to the broker.
    pub forwarded: AtomicU64,
    /// Publishes that could not be forwarded (broker down, or the channel
    /// to the backplane thread full).
    pub not_forwarded: AtomicU64,
    /// Messages received from the broker and delivered here.
    pub received: AtomicU64,
    /// Messages from the broker that were not a valid frame, dropped.
    pub invalid: AtomicU64,
}

impl Metrics {
    /// Fresh counters for `workers` workers on `backend`.
    pub fn new(workers: usize, backend: Backend) -> Self {
        Metrics {
            workers: (0..workers).map(|_| Arc::default()).collect(),
            open_sessions: AtomicUsize::new(0),
            backend,
            backplane: OnceLock::new(),
        }
    }

    fn sum(&self, f: impl Fn(&WorkerMetrics) -> &LocalCounter) -> u64 {
        self.workers.iter().map(|w| f(w).get()).sum()
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::with_capacity(2048);
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Scrape(Arc<Metrics>);

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        let open = m.open_sessions.load(Relaxed) as i64;
        gauge(
            &mut enc,
            "ringws_sessions_open",
            "WebSocket sessions open now.",
            open,
        )?;
        counter(
            &mut enc,
            "ringws_sessions",
            "WebSocket sessions started.",
            m.sum(|w| &w.sessions),
        )?;
        counter(
            &mut enc,
            "ringws_connections_accepted",
            "TCP connections accepted.",
            m.sum(|w| &w.accepted),
        )?;
        counter(
            &mut enc,
            "ringws_messages_received",
            "Data frames received.",
            m.sum(|w| &w.frames_in),
        )?;
        counter(
            &mut enc,
            "ringws_received_bytes",
            "Payload bytes received.",
            m.sum(|w| &w.bytes_in),
        )?;
        counter(
            &mut enc,
            "ringws_messages_sent",
            "Data frames echoed.",
            m.sum(|w| &w.frames_out),
        )?;
        counter(
            &mut enc,
            "ringws_sent_bytes",
            "Payload bytes echoed.",
            m.sum(|w| &w.bytes_out),
        )?;
        counter(
            &mut enc,
            "ringws_closes_sent",
            "Close frames sent.",
            m.sum(|w| &w.closes_sent),
        )?;
        counter(
            &mut enc,
            "ringws_write_stalls",
            "Sessions closed because the peer stopped reading (--write-timeout).",
            m.sum(|w| &w.write_stalls),
        )?;
        let buffered: u64 = m
            .workers
            .iter()
            .map(|w| w.buffered_bytes.load(Relaxed))
            .sum();
        gauge(
            &mut enc,
            "ringws_buffered_bytes",
            "Bytes held in sessions' read buffers (bounded by --max-buffered-bytes).",
            i64::try_from(buffered).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut enc,
            "ringws_budget_waits",
            "Times a session waited, unread, for room under --max-buffered-bytes.",
            m.sum(|w| &w.budget_waits),
        )?;
        counter(
            &mut enc,
            "ringws_budget_closes",
            "Sessions closed with 1013 to make room under --max-buffered-bytes.",
            m.sum(|w| &w.budget_closes),
        )?;
        counter(
            &mut enc,
            "ringws_slow_messages",
            "Sessions closed with 1008: a frame arrived slower than --min-message-rate.",
            m.sum(|w| &w.slow_messages),
        )?;
        counter(
            &mut enc,
            "ringws_backpressure_closes",
            "Sessions closed with 1008: a send found --max-backpressure bytes queued.",
            m.sum(|w| &w.backpressure_closes),
        )?;
        counter(
            &mut enc,
            "ringws_backpressure_drops",
            "Messages dropped: a send found --max-backpressure bytes queued (policy drop).",
            m.sum(|w| &w.backpressure_drops),
        )?;
        if m.backend == Backend::Uring {
            counter(
                &mut enc,
                "ringws_receive_buffer_waits",
                "Receives that found every provided buffer of their worker in use and waited \
                 for one (--recv-buffers).",
                crate::io::uring::buffer_waits(),
            )?;
        }
        if let Some(b) = m.backplane.get() {
            gauge(
                &mut enc,
                "ringws_backplane_up",
                "1 while connected to the --backplane broker.",
                i64::from(b.up.load(Relaxed)),
            )?;
            for (name, help, value) in [
                (
                    "ringws_backplane_forwarded",
                    "Publishes sent to the broker.",
                    &b.forwarded,
                ),
                (
                    "ringws_backplane_not_forwarded",
                    "Publishes not sent to the broker (down, or its queue full).",
                    &b.not_forwarded,
                ),
                (
                    "ringws_backplane_received",
                    "Messages from the broker delivered here.",
                    &b.received,
                ),
                (
                    "ringws_backplane_invalid",
                    "Messages from the broker dropped as malformed frames.",
                    &b.invalid,
                ),
            ] {
                counter(&mut enc, name, help, value.load(Relaxed))?;
            }
        }
        counter(
            &mut enc,
            "ringws_lifetime_closes",
            "Sessions closed with 1001 at the end of --max-lifetime (plus jitter).",
            m.sum(|w| &w.lifetime_closes),
        )?;
        counter(
            &mut enc,
            "ringws_handler_panics",
            "Handler callbacks that panicked; each closed its own connection with 1011.",
            m.sum(|w| &w.handler_panics),
        )?;

        let proto = ConstCounter::new(0u64);
        let mut fam = enc.encode_descriptor(
            "ringws_handshake_failures",
            "Requests to the WebSocket path that did not become a session, by reason.",
            None,
            proto.metric_type(),
        )?;
        for (i, why) in HandshakeFailure::ALL.iter().enumerate() {
            let labels = [("reason", why.label())];
            let c = ConstCounter::new(m.sum(|w| &w.handshake_failures[i]));
            c.encode(fam.encode_family(&labels.as_slice())?)?;
        }

        let info = ConstGauge::new(1i64);
        let mut fam = enc.encode_descriptor(
            "ringws_backend",
            "The I/O backend in use (label), always 1.",
            None,
            info.metric_type(),
        )?;
        let labels = [("backend", m.backend.name())];
        info.encode(fam.encode_family(&labels.as_slice())?)?;
        gauge(
            &mut enc,
            "ringws_workers",
            "Worker threads.",
            m.workers.len() as i64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_workers() {
        let m = Arc::new(Metrics::new(2, Backend::Epoll));
        m.workers[0].frames_in.add(3);
        m.workers[1].frames_in.add(4);
        m.workers[1].handshake_failed(HandshakeFailure::Key);
        m.open_sessions.store(5, Relaxed);
        let text = m.render();
        assert!(
            text.contains("ringws_messages_received_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("ringws_handshake_failures_total{reason=\"key\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ringws_sessions_open 5\n"), "{text}");
        assert!(
            text.contains("ringws_backend{backend=\"epoll\"} 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
