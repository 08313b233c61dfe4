//! Probes for the tests of what hostile clients can make ringws hold
//! (`tests/hostile.rs`, `tests/pending_cost.rs`): the open-file limit,
//! `/metrics` values, connections closed by the server, and the peak RSS
//! of a process sampled from a thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Raises this process's soft open-file limit to the hard limit (the
/// tests hold thousands of client sockets).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// This process's soft open-file limit.
pub fn fd_limit() -> u64 {
    // SAFETY: getrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur
    }
}

/// The body of a `/metrics` scrape (one connection of its own).
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, _, body) = super::http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// The value of the metric line `NAME VALUE` in a scrape, where `name`
/// includes its labels (`ringws_handshake_failures_total{reason="x"}`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok()
    })
}

/// `ringws_handshake_failures_total{reason="REASON"}`, 0 when absent.
pub fn handshake_failures(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("ringws_handshake_failures_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// The `ringws_handshake_failures_total` and `ringws_connections` lines of
/// a scrape, for assertion messages.
pub fn failure_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.starts_with("ringws_handshake_failures_total")
                || l.starts_with("ringws_connections")
                || l.starts_with("ringws_budget")
                || l.starts_with("ringws_buffered")
        })
        .collect()
}

/// Reads until the server closes TCP (EOF or reset). `Some(bytes read)`
/// if it did within `limit` (at most the first 64 KiB are kept), `None`
/// if the connection was still open then.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if got.len() < 64 << 10 {
                        got.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

/// Resident set size of process `pid` in KiB, `None` once it is gone.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 10 ms from a thread of its own (so a busy
/// test runtime does not make it miss the peak) and keeps the largest.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib_of(pid).unwrap_or(0)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib_of(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        RssPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The largest RSS seen so far, KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns the largest RSS seen, KiB.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.peak_kib()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.halt();
    }
}
