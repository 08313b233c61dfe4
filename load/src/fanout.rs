//! `fanout`: pub/sub load. N listeners subscribe (they only read); one
//! publisher sends numbered messages and keeps `--window` of them in flight,
//! counted by its own copies (the server sends every published message to
//! the whole topic, the sender included). Every listener checks every
//! message: content, and sequence numbers strictly increasing without gaps.
//!
//! The listeners are opened first, the publisher last, so that every
//! listener is subscribed before message 0. The publisher also never runs
//! more than `--max-lag` messages ahead of the slowest listener, so a client
//! that cannot keep up slows the publisher down instead of growing the
//! server's per-subscriber queues until it closes them (a Close frame on a
//! listener is reported as an error all the same). How often that limit,
//! rather than the window, held the publisher back is reported as "lag
//! stalls".
//!
//! With `--listen-addr`, listeners alternate between two servers that share
//! the topic (two ringws processes on one `--backplane` broker): the
//! publisher and the even-numbered listeners are on the first, the odd ones
//! on the second, which gets every message through the broker. The checks
//! are the same, so a message lost, repeated or reordered on the way
//! through the broker is an error on the listeners of the second server.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::cli::FanoutArgs;
use crate::common;
use crate::report::RunReport;
use crate::stats::{self, DONE, MEASURE};
use crate::target::Target;
use crate::ws::{self, Conn, Event, Rng, Tx};

/// "No final count yet": the publisher has not stopped.
const OPEN_END: u64 = u64::MAX;

/// What the publisher and the listeners share.
struct Shared {
    listeners: u32,
    size: usize,
    window: usize,
    max_lag: u64,
    text: bool,
    /// `done[k % ring]`: listeners that have received message k.
    done: Vec<AtomicU32>,
    /// Woken when a message has reached every listener.
    progress: Notify,
    /// Messages received by listeners inside the window.
    listener_msgs: AtomicU64,
    /// Listeners that received every message sent and closed cleanly.
    complete: AtomicUsize,
    /// Times the publisher had room in its window but waited for listeners.
    lag_stalls: AtomicU64,
    /// Messages the publisher sent in all (set once it stops).
    total: watch::Sender<u64>,
}

impl Shared {
    fn slot(&self, seq: u64) -> &AtomicU32 {
        &self.done[(seq % self.done.len() as u64) as usize]
    }

    /// Whether message `seq` may be sent: the one `max_lag` before it has
    /// reached every listener.
    fn may_send(&self, seq: u64) -> bool {
        seq < self.max_lag
            || self.slot(seq - self.max_lag).load(Ordering::Acquire) >= self.listeners
    }
}

pub fn run(a: FanoutArgs) -> Result<RunReport, String> {
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    // The second server, if any: same URL path, its own address.
    let second = match a.listen_addr.as_deref() {
        Some(addr) => Some(Arc::new(Target::parse(&a.common.url, Some(addr))?)),
        None => None,
    };
    if second.as_ref().is_some_and(|s| s.addr == target.addr) {
        return Err("--listen-addr is the first server's address".into());
    }
    let split = second.is_some();
    let on_second = move |i: usize| split && i % 2 == 1;
    if a.connections == 0 || a.window == 0 {
        return Err("-c and --window must be at least 1".into());
    }
    if a.size < 8 {
        return Err("-s must be at least 8: the sequence number lives in the first 8 bytes".into());
    }
    let listeners = u32::try_from(a.connections).map_err(|_| "-c too large")?;
    let frame = a.size + 14;
    // Default: the window, and at least ~128 KiB of frames per listener.
    let max_lag = a
        .max_lag
        .unwrap_or_else(|| a.window.max((128 << 10) / frame))
        .max(1) as u64;
    let ring = (max_lag as usize + a.window + 2).next_power_of_two();
    let rt = common::runtime(a.common.threads)?;
    rt.block_on(async move {
        let rx_cap = (2 * frame + 4096).clamp(16 << 10, 4 << 20);
        let deadline = tokio::time::Instant::now() + a.common.duration.max(Duration::from_secs(10));
        let conns =
            common::open_all(a.connections, a.connect_concurrency, deadline, |i| {
                let target = match &second {
                    Some(s) if on_second(i) => s.clone(),
                    _ => target.clone(),
                };
                async move {
                    ws::connect(&target, target.source(i as u64), rx_cap, &mut Rng::new()).await
                }
            })
            .await;
        let conns: Vec<(usize, Conn)> = conns
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i, c)))
            .collect();
        if conns.len() < a.connections {
            return Err(format!(
                "{} of {} listeners could not be opened: {}",
                a.connections - conns.len(),
                a.connections,
                stats::first_error().unwrap_or_default()
            ));
        }
        // The publisher last: every listener's upgrade has been answered, so
        // it is subscribed before the first message.
        let publisher = ws::connect(
            &target,
            target.source(a.connections as u64),
            (a.window * frame + 4096).clamp(16 << 10, 4 << 20),
            &mut Rng::new(),
        )
        .await
        .map_err(|e| format!("publisher: {e}"))?;
        if second.is_some() {
            // The second server subscribes on the broker when its first
            // listener comes, asynchronously: give that time to land.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let (total, total_rx) = watch::channel(OPEN_END);
        let shared = Arc::new(Shared {
            listeners,
            size: a.size,
            window: a.window,
            max_lag,
            text: a.text,
            done: (0..ring).map(|_| AtomicU32::new(0)).collect(),
            progress: Notify::new(),
            listener_msgs: AtomicU64::new(0),
            complete: AtomicUsize::new(0),
            lag_stalls: AtomicU64::new(0),
            total,
        });
        let mut tasks = JoinSet::new();
        for (i, conn) in conns {
            let shared = shared.clone();
            let total_rx = total_rx.clone();
            let server = match &second {
                Some(s) if on_second(i) => format!(" (on {}, through the broker)", s.addr),
                _ => String::new(),
            };
            tasks.spawn(async move {
                match listener(conn, &shared, total_rx).await {
                    Ok(()) => {
                        shared.complete.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => stats::error(format!("listener {i}{server}: {e}")),
                }
            });
        }
        {
            let shared = shared.clone();
            tasks.spawn(async move {
                if let Err(e) = publish(publisher, &shared).await {
                    stats::error(format!("publisher: {e}"));
                    // Listeners would otherwise wait for messages never sent.
                    shared.total.send_replace(0);
                }
            });
        }
        let window = common::run_window_with(&a.common, a.broker_pid).await?;
        common::wind_down(&mut tasks, Duration::from_secs(5)).await;

        let shard = stats::collect();
        let published = shard.done;
        let copies = u64::from(listeners) + 1;
        let delivered = published * copies;
        let mut r = common::base_report("fanout", &a.common, target.url(), a.connections, a.size);
        r.inflight = Some(a.window as u64);
        let secs = window.elapsed.as_secs_f64();
        r.published = Some(published);
        r.published_per_s = Some((published as f64 / secs).round());
        r.msgs = Some(delivered);
        r.msgs_per_s = Some((delivered as f64 / secs).round());
        r.bytes_per_s = Some((delivered as f64 * a.size as f64 / secs).round());
        r.listener_msgs = Some(shared.listener_msgs.load(Ordering::Relaxed));
        r.lag_stalls = Some(shared.lag_stalls.load(Ordering::Relaxed));
        r.max_lag = Some(max_lag);
        if let Some(s) = &second {
            r.listen_url = Some(s.url());
            r.listen_conns = Some((0..a.connections).filter(|&i| on_second(i)).count() as u64);
        }
        if let Some((b0, b1)) = window.broker {
            let ns = b1.total_ns().saturating_sub(b0.total_ns()) as f64;
            let wall = b1.at.duration_since(b0.at).as_secs_f64();
            r.broker_cpu_pct = Some((ns / 1e9 / wall * 1000.0).round() / 10.0);
            if published > 0 {
                r.broker_cpu_ns_per_msg = Some((ns / delivered as f64).round());
                r.broker_cpu_ns_per_publish = Some((ns / published as f64).round());
            }
        }
        r.lat_us = common::latency(&shard.hist);
        let incomplete = a.connections - shared.complete.load(Ordering::Relaxed);
        if incomplete > 0 && stats::errors() == 0 {
            stats::error(format!(
                "{incomplete} listeners did not receive every message before the end"
            ));
        }
        common::fill_window(&mut r, &window, delivered, false);
        if published == 0 {
            r.ok = false;
        }
        Ok(r)
    })
}

/// The sequence number in a payload's first 8 bytes (lower-case hex).
fn seq_of(payload: &[u8]) -> Option<u32> {
    let hex = std::str::from_utf8(payload.get(..8)?).ok()?;
    u32::from_str_radix(hex, 16).ok()
}

/// One subscriber: reads, checks every message, counts it, and closes once
/// it has every message the publisher sent.
async fn listener(conn: Conn, p: &Shared, mut total: watch::Receiver<u64>) -> Result<(), String> {
    let Conn {
        mut stream, mut rx, ..
    } = conn;
    // Only its plain pattern is used (to check); its key masks our Close.
    let tx = Tx::new(p.size, p.text, &mut Rng::new());
    let mut out: Vec<u8> = Vec::new();
    let mut expect = 0u64;
    let mut closing = false;
    let mut end = OPEN_END;
    loop {
        if !closing && expect >= end {
            closing = true;
            ws::push_close(&mut out, 1000, tx.key);
        }
        if !out.is_empty() {
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            out.clear();
        }
        let n = tokio::select! {
            biased;
            r = stream.read(rx.space()) => r.map_err(|e| format!("read: {e}"))?,
            c = total.changed(), if end == OPEN_END => {
                if c.is_err() {
                    return Err("publisher gone".into());
                }
                end = *total.borrow_and_update();
                continue;
            }
        };
        if n == 0 {
            return if closing {
                Ok(())
            } else {
                Err(format!(
                    "server closed the connection after {expect} messages"
                ))
            };
        }
        rx.filled(n);
        let phase = stats::phase();
        let mut got = 0u64;
        while let Some(ev) = rx.next_event()? {
            match ev {
                Event::Data(payload) => {
                    let seq = match seq_of(payload) {
                        Some(s) => u64::from(s),
                        None => {
                            stats::mismatch(format!(
                                "message {expect} carries no sequence number ({} bytes)",
                                payload.len()
                            ));
                            expect
                        }
                    };
                    if seq != expect {
                        stats::error(format!(
                            "expected message {expect}, received {seq} ({})",
                            if seq > expect {
                                "gap"
                            } else {
                                "out of order or repeated"
                            }
                        ));
                    }
                    if !tx.verify(payload, seq as u32) {
                        stats::mismatch(format!(
                            "message {seq} differs ({} bytes received, {} sent)",
                            payload.len(),
                            p.size
                        ));
                    }
                    if seq >= expect {
                        // Everything up to `seq` counts as passed by this
                        // listener, gaps included, so the publisher goes on.
                        for s in expect..=seq {
                            if p.slot(s).fetch_add(1, Ordering::AcqRel) + 1 == p.listeners {
                                p.progress.notify_one();
                            }
                        }
                        expect = seq + 1;
                    }
                    got += 1;
                }
                Event::Close(code) if !closing => {
                    return Err(format!(
                        "server sent Close {code:?} after {expect} messages \
                         (1008: the server's queue for this subscriber passed its limit)"
                    ));
                }
                other => {
                    if common::on_control(other, &mut out, tx.key, closing)? {
                        return Ok(());
                    }
                }
            }
        }
        if phase == MEASURE {
            p.listener_msgs.fetch_add(got, Ordering::Relaxed);
        }
        if expect > end {
            return Err(format!("received {expect} messages, {end} were sent"));
        }
    }
}

/// The publisher: keeps `window` messages in flight, each done when its own
/// copy comes back, never more than `max_lag` ahead of the slowest listener.
async fn publish(conn: Conn, p: &Shared) -> Result<(), String> {
    let Conn {
        mut stream, mut rx, ..
    } = conn;
    let mut tx = Tx::new(p.size, p.text, &mut Rng::new());
    let mut out: Vec<u8> = Vec::with_capacity(p.window * tx.frame_len() + 64);
    let mut pos = 0usize;
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(p.window);
    let (mut next, mut expect) = (0u64, 0u64);
    let mut latencies: Vec<u64> = Vec::with_capacity(p.window.min(1024));
    let (mut rd, mut wr) = stream.split();
    let mut stopped = false;
    let mut closing = false;
    let mut was_gated = false;
    loop {
        let mut gated = false;
        if stats::phase() == DONE {
            if !stopped {
                stopped = true;
                p.total.send_replace(next);
            }
        } else {
            let now = Instant::now();
            while sent_at.len() < p.window {
                if !p.may_send(next) {
                    gated = true;
                    if !was_gated {
                        p.lag_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                // The slot is reused: every listener is past message next - ring.
                p.slot(next).store(0, Ordering::Release);
                tx.push(&mut out, next as u32);
                next += 1;
                sent_at.push_back(now);
            }
        }
        was_gated = gated;
        if stopped && sent_at.is_empty() && !closing {
            closing = true;
            ws::push_close(&mut out, 1000, tx.key);
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
        let progress = p.progress.notified();
        let n = tokio::select! {
            biased;
            r = rd.read(rx.space()) => r.map_err(|e| format!("read: {e}"))?,
            w = wr.write(&out[pos..]), if pos < out.len() => {
                pos += w.map_err(|e| format!("write: {e}"))?;
                continue;
            }
            _ = progress, if gated => continue,
            // The phase changes without any message: look again now and then.
            _ = tokio::time::sleep(Duration::from_millis(50)), if gated || sent_at.is_empty() => {
                continue;
            }
        };
        if n == 0 {
            return if closing {
                Ok(())
            } else {
                Err("server closed the connection".into())
            };
        }
        rx.filled(n);
        let now = Instant::now();
        let phase = stats::phase();
        while let Some(ev) = rx.next_event()? {
            match ev {
                Event::Data(payload) => {
                    let mut seq32 = expect as u32;
                    let t = common::check_echo(&mut tx, payload, &mut sent_at, &mut seq32)?;
                    expect += 1;
                    if phase == MEASURE {
                        latencies.push(now.duration_since(t).as_nanos() as u64);
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

#[cfg(test)]
mod tests {
    use super::seq_of;

    #[test]
    fn reads_the_sequence_number() {
        assert_eq!(seq_of(b"0000002aabc"), Some(42));
        assert_eq!(seq_of(b"ffffffff"), Some(u32::MAX));
        assert_eq!(seq_of(b"0000002"), None);
        assert_eq!(seq_of(b"xyz00000abc"), None);
    }
}
