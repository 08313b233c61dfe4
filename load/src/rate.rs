//! `rate`: open loop at a fixed total rate; latency from the intended send
//! time (coordinated omission corrected).
//!
//! Message `j` (over all connections) is due at `t0 + j / rate` and belongs to
//! connection `j % N`. One pacer task publishes how many messages are due and
//! wakes the connections that got new ones; a connection sends everything it
//! owes when woken, keeps each message's intended time, and measures the
//! echo against it. If the connection cannot write (server not reading), the
//! owed messages queue up and their latency keeps growing, as it should.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::cli::RateArgs;
use crate::common;
use crate::report::RunReport;
use crate::stats;
use crate::target::Target;
use crate::ws::{self, Conn, Event, Rng, Tx};

struct Shared {
    t0: Instant,
    /// Nanoseconds between two messages (over all connections).
    period_ns: f64,
    /// Messages due so far (over all connections).
    due: AtomicU64,
    /// Messages in the whole run (warm-up + window).
    total: u64,
    n: u64,
    /// The window, as intended-send offsets from `t0`.
    window_ns: (u64, u64),
    wake: Vec<Notify>,
    size: usize,
    text: bool,
}

impl Shared {
    fn due_for(&self, c: u64, due: u64) -> u64 {
        if due > c {
            (due - c - 1) / self.n + 1
        } else {
            0
        }
    }

    fn intended_ns(&self, c: u64, m: u64) -> u64 {
        self.at_ns(c + m * self.n)
    }

    /// Intended send time of message `j` (over all connections).
    fn at_ns(&self, j: u64) -> u64 {
        (j as f64 * self.period_ns) as u64
    }

    /// The first message due at or after `ns` (or `total`), computed with the
    /// same rounding as the send times themselves.
    fn first_due_at(&self, ns: u64) -> u64 {
        let (mut lo, mut hi) = (0, self.total);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at_ns(mid) < ns {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

pub fn run(a: RateArgs) -> Result<RunReport, String> {
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    if a.connections == 0 {
        return Err("-c must be at least 1".into());
    }
    if !(a.rate.is_finite() && a.rate > 0.0) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    let rt = common::runtime(a.common.threads)?;
    rt.block_on(async move {
        let rx_cap = (a.size + 14 + 4096).clamp(16 << 10, 4 << 20);
        let deadline = tokio::time::Instant::now() + a.common.duration.max(Duration::from_secs(5));
        let conns = common::open_all(a.connections, a.connect_concurrency, deadline, |_| {
            let target = target.clone();
            async move { ws::connect(&target, None, rx_cap, &mut Rng::new()).await }
        })
        .await;
        let conns: Vec<Conn> = conns.into_iter().flatten().collect();
        if conns.is_empty() {
            return Err(format!(
                "no connection could be opened: {}",
                stats::first_error().unwrap_or_default()
            ));
        }
        let n = conns.len() as u64;
        let warm = a.common.warmup.as_nanos() as u64;
        let end = warm + a.common.duration.as_nanos() as u64;
        let period_ns = 1e9 / a.rate;
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            period_ns,
            due: AtomicU64::new(0),
            total: (end as f64 / period_ns).ceil() as u64,
            n,
            window_ns: (warm, end),
            wake: (0..n).map(|_| Notify::new()).collect(),
            size: a.size,
            text: a.text,
        });
        let mut tasks = JoinSet::new();
        for (c, conn) in conns.into_iter().enumerate() {
            let shared = shared.clone();
            tasks.spawn(async move {
                if let Err(e) = connection(conn, c as u64, &shared).await {
                    stats::error(format!("connection {c}: {e}"));
                }
            });
        }
        let pacer = tokio::spawn(pacer(shared.clone()));
        let window = common::run_window(&a.common).await?;
        // Messages due in the window may still be on their way back.
        common::wind_down(&mut tasks, Duration::from_secs(2)).await;
        pacer.abort();

        let shard = stats::collect();
        let mut r = common::base_report("rate", &a.common, target.url(), a.connections, a.size);
        let secs = window.elapsed.as_secs_f64();
        r.rate_target = Some(a.rate);
        // Due in the window by the schedule, whether or not the client got
        // to queue them (it holds back when the server falls behind).
        let due_in_window = shared.first_due_at(end) - shared.first_due_at(warm);
        r.sent = Some(due_in_window);
        let unanswered = due_in_window.saturating_sub(shard.done);
        r.unanswered = Some(unanswered);
        r.msgs = Some(shard.done);
        r.msgs_per_s = Some((shard.done as f64 / secs).round());
        r.bytes_per_s = Some((shard.done as f64 * a.size as f64 / secs).round());
        r.lat_us = common::latency(&shard.hist);
        r.send_lag_us = common::latency(&shard.lag);
        common::fill_window(&mut r, &window, shard.done, false);
        if unanswered > 0 {
            r.errors += 1;
            r.first_error.get_or_insert_with(|| {
                format!("{unanswered} messages due in the window were not echoed by 2 s after it (the server fell behind the rate)")
            });
            r.ok = false;
        }
        if shard.done == 0 {
            r.ok = false;
        }
        Ok(r)
    })
}

/// Publishes the number of messages due and wakes their connections; spins
/// (yielding to the runtime) within 2 ms of the next deadline, since tokio's
/// timer has millisecond granularity.
async fn pacer(s: Arc<Shared>) {
    let mut cur = 0u64;
    loop {
        let now_ns = s.t0.elapsed().as_nanos() as f64;
        let due = ((now_ns / s.period_ns) as u64 + 1).min(s.total);
        if due > cur {
            s.due.store(due, Ordering::Release);
            if due - cur >= s.n {
                s.wake.iter().for_each(Notify::notify_one);
            } else {
                for j in cur..due {
                    s.wake[(j % s.n) as usize].notify_one();
                }
            }
            cur = due;
        }
        if cur >= s.total {
            return;
        }
        let next_ns = cur as f64 * s.period_ns;
        if next_ns - now_ns > 2e6 {
            let at = s.t0 + Duration::from_nanos((next_ns - 1e6) as u64);
            tokio::time::sleep_until(at.into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Most bytes of frames queued for one connection before the socket takes them.
const MAX_BACKLOG: usize = 256 << 10;

async fn connection(conn: Conn, c: u64, s: &Shared) -> Result<(), String> {
    let Conn {
        mut stream, mut rx, ..
    } = conn;
    let mut tx = Tx::new(s.size, s.text, &mut Rng::new());
    let mine = s.due_for(c, s.total);
    let mut out: Vec<u8> = Vec::with_capacity(4 * tx.frame_len() + 64);
    let mut pos = 0usize;
    let mut intended: VecDeque<u64> = VecDeque::new();
    let (mut sent, mut expect_seq) = (0u64, 0u32);
    let mut latencies: Vec<u64> = Vec::new();
    let mut lags: Vec<u64> = Vec::new();
    let (win_start, win_end) = s.window_ns;
    let (mut rd, mut wr) = stream.split();
    let mut closing = false;

    enum Wake {
        Read(std::io::Result<usize>),
        Wrote(std::io::Result<usize>),
        Due,
    }
    loop {
        // Queue what is due, but no more than MAX_BACKLOG bytes: a server that
        // falls behind must not make this process grow without bound. The
        // messages held back keep their intended send times.
        if sent < mine && out.len() - pos < MAX_BACKLOG {
            let due = s.due_for(c, s.due.load(Ordering::Acquire));
            if sent < due {
                let now_ns = s.t0.elapsed().as_nanos() as u64;
                while sent < due && out.len() - pos < MAX_BACKLOG {
                    let t = s.intended_ns(c, sent);
                    tx.push(&mut out, sent as u32);
                    intended.push_back(t);
                    if t >= win_start && t < win_end {
                        lags.push(now_ns.saturating_sub(t));
                    }
                    sent += 1;
                }
                if !lags.is_empty() {
                    stats::with_shard(|sh| {
                        for &l in &lags {
                            sh.lag.saturating_record(l);
                        }
                    });
                    lags.clear();
                }
            }
        }
        if pos < out.len() {
            match wr.try_write(&out[pos..]) {
                Ok(n) => pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("write: {e}")),
            }
            if pos == out.len() {
                out.clear();
                pos = 0;
            }
        }
        if sent == mine && intended.is_empty() && !closing {
            // All echoed: close (Close frame, then wait for the server's).
            closing = true;
            ws::push_close(&mut out, 1000, tx.key);
            continue;
        }
        let wake = tokio::select! {
            biased;
            r = rd.read(rx.space()) => Wake::Read(r),
            w = wr.write(&out[pos..]), if pos < out.len() => Wake::Wrote(w),
            _ = s.wake[c as usize].notified(), if sent < mine => Wake::Due,
        };
        match wake {
            Wake::Wrote(w) => pos += w.map_err(|e| format!("write: {e}"))?,
            Wake::Due => {}
            Wake::Read(r) => {
                let n = r.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return if closing {
                        Ok(())
                    } else {
                        Err("server closed the connection".into())
                    };
                }
                rx.filled(n);
                let now_ns = s.t0.elapsed().as_nanos() as u64;
                while let Some(ev) = rx.next_event()? {
                    match ev {
                        Event::Data(payload) => {
                            let t = common::check_echo(
                                &mut tx,
                                payload,
                                &mut intended,
                                &mut expect_seq,
                            )?;
                            if t >= win_start && t < win_end {
                                latencies.push(now_ns.saturating_sub(t));
                            }
                        }
                        other => {
                            if common::on_control(other, &mut out, tx.key, closing)? {
                                return Ok(());
                            }
                        }
                    }
                }
                stats::record_done(&mut latencies);
            }
        }
    }
}
