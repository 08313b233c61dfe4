//! Pieces every mode uses: the runtime, opening many connections with bounded
//! concurrency, the warm-up/measure timeline with its /proc samples, and
//! filling the report.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{Common, MsgArgs, Pids};
use crate::deflate;
use crate::payload::Payload;
use crate::procfs::{self, Cpu};
use crate::report::{Latency, RunReport};
use crate::stats;
use crate::ws::{self, Event, Source};

/// A current-thread runtime for one client thread, else a multi-thread one.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all()
        .thread_name("ringws-load")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Runs `open(i)` for `i` in `0..n`, at most `concurrency` at a time, until
/// `deadline`. Failures are counted as errors; the slot stays `None`.
pub async fn open_all<T, F, Fut>(
    n: usize,
    concurrency: usize,
    deadline: Instant,
    open: F,
) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0;
    let mut opened = 0usize;
    loop {
        while next < n && set.len() < concurrency.max(1) {
            let fut = open(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok((i, Ok(v))))) => {
                out[i] = Some(v);
                opened += 1;
            }
            Ok(Some(Ok((i, Err(e))))) => stats::error(format!("connection {i}: {e}")),
            Ok(Some(Err(e))) => stats::error(format!("connection task: {e}")),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                stats::error(format!(
                    "time limit reached while connecting: {opened} of {n} connections open \
                     (raise --duration, or lower -c)"
                ));
                break;
            }
        }
    }
    out
}

/// Server CPU and RSS at one instant: summed over the server's processes
/// when `--server-pid` names several.
#[derive(Clone, Copy, Debug)]
pub struct ServerSample {
    pub cpu: Cpu,
    pub rss: u64,
    /// Each process's CPU time (ns), in `--server-pid` order.
    pub each_ns: [u64; Pids::MAX],
    pub processes: usize,
}

pub fn sample_server(pids: Option<Pids>) -> Result<Option<ServerSample>, String> {
    let Some(pids) = pids else { return Ok(None) };
    let mut sample: Option<ServerSample> = None;
    for (i, &pid) in pids.as_slice().iter().enumerate() {
        let cpu = procfs::cpu(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
        let rss = procfs::rss(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
        let s = sample.get_or_insert(ServerSample {
            cpu: Cpu {
                user_ns: 0,
                sys_ns: 0,
                at: cpu.at,
            },
            rss: 0,
            each_ns: [0; Pids::MAX],
            processes: 0,
        });
        s.cpu.user_ns += cpu.user_ns;
        s.cpu.sys_ns += cpu.sys_ns;
        s.rss += rss;
        s.each_ns[i] = cpu.total_ns();
        s.processes += 1;
    }
    Ok(sample)
}

fn sample_broker(pid: Option<u32>) -> Result<Option<Cpu>, String> {
    pid.map(|pid| procfs::cpu(pid).map_err(|e| format!("--broker-pid {pid}: {e}")))
        .transpose()
}

/// The samples that bound the measured window.
pub struct Window {
    pub server: Option<(ServerSample, ServerSample)>,
    /// The broker's CPU (`--broker-pid`, fanout), apart from the server's.
    pub broker: Option<(Cpu, Cpu)>,
    pub client: Option<(Cpu, Cpu)>,
    /// Busy CPU time of the whole machine.
    pub host: Option<(u64, u64)>,
    pub elapsed: Duration,
}

/// Warm-up, then the measured window: switches the phase and samples the
/// server (and this process) at both ends.
pub async fn run_window(c: &Common) -> Result<Window, String> {
    run_window_with(c, None).await
}

/// [`run_window`], sampling a broker process's CPU as well.
pub async fn run_window_with(c: &Common, broker: Option<u32>) -> Result<Window, String> {
    stats::set_phase(stats::WARMUP);
    tokio::time::sleep(c.warmup).await;
    let s0 = sample_server(c.server_pid)?;
    let b0 = sample_broker(broker)?;
    let c0 = procfs::own_cpu().ok();
    let h0 = procfs::host_busy_ns().ok();
    let t0 = std::time::Instant::now();
    stats::set_phase(stats::MEASURE);
    tokio::time::sleep(c.duration).await;
    stats::set_phase(stats::DONE);
    let elapsed = t0.elapsed();
    let s1 = sample_server(c.server_pid)?;
    let b1 = sample_broker(broker)?;
    let c1 = procfs::own_cpu().ok();
    let h1 = procfs::host_busy_ns().ok();
    Ok(Window {
        server: s0.zip(s1),
        broker: b0.zip(b1),
        client: c0.zip(c1),
        host: h0.zip(h1),
        elapsed,
    })
}

pub fn latency(h: &Histogram<u64>) -> Option<Latency> {
    if h.is_empty() {
        return None;
    }
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    Some(Latency {
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: (h.mean() / 100.0).round() / 10.0,
    })
}

/// A report with the common fields filled in.
pub fn base_report(mode: &str, c: &Common, url: String, conns: usize, size: usize) -> RunReport {
    RunReport {
        tool: "ringws-load".into(),
        mode: mode.into(),
        server: c.server_name.clone(),
        scenario: c.scenario.clone(),
        url,
        conns: conns as u64,
        size: size as u64,
        threads: c.threads.max(1) as u64,
        warmup_s: c.warmup.as_secs_f64(),
        ..Default::default()
    }
}

/// Server CPU per unit of work, plus CPU % and RSS (and each process's CPU %
/// when there are several), client CPU %, and the error counters. The
/// broker's CPU, if sampled, is left out of "other processes"; the caller
/// reports it.
pub fn fill_window(r: &mut RunReport, w: &Window, units: u64, per_handshake: bool) {
    let secs = w.elapsed.as_secs_f64();
    r.window_s = (secs * 1000.0).round() / 1000.0;
    if let Some((a, b)) = &w.server {
        let user = b.cpu.user_ns.saturating_sub(a.cpu.user_ns) as f64;
        let sys = b.cpu.sys_ns.saturating_sub(a.cpu.sys_ns) as f64;
        let wall = b.cpu.at.duration_since(a.cpu.at).as_secs_f64();
        r.server_cpu_pct = Some(((user + sys) / 1e9 / wall * 1000.0).round() / 10.0);
        r.server_rss_start = Some(a.rss);
        r.server_rss_end = Some(b.rss);
        if a.processes > 1 {
            let each = (0..a.processes).map(|i| {
                let ns = b.each_ns[i].saturating_sub(a.each_ns[i]) as f64;
                (ns / 1e9 / wall * 1000.0).round() / 10.0
            });
            r.server_cpu_pct_each = Some(each.collect());
        }
        if units > 0 {
            let n = units as f64;
            if per_handshake {
                let f = |v: f64| (v / n / 100.0).round() / 10.0;
                r.server_cpu_us_per_handshake = Some(f(user + sys));
                r.server_user_us_per_handshake = Some(f(user));
                r.server_sys_us_per_handshake = Some(f(sys));
            } else {
                r.server_cpu_ns_per_msg = Some(((user + sys) / n).round());
                r.server_user_ns_per_msg = Some((user / n).round());
                r.server_sys_ns_per_msg = Some((sys / n).round());
            }
        }
    }
    let pct = |ns: f64| (ns / 1e9 / secs * 1000.0).round() / 10.0;
    if let Some((a, b)) = &w.client {
        let client = b.total_ns().saturating_sub(a.total_ns()) as f64;
        r.client_cpu_pct = Some(pct(client));
        if let Some((h0, h1)) = w.host {
            let server = w.server.map_or(0, |(s0, s1)| {
                s1.cpu.total_ns().saturating_sub(s0.cpu.total_ns())
            });
            let broker = w
                .broker
                .map_or(0, |(b0, b1)| b1.total_ns().saturating_sub(b0.total_ns()));
            let other = h1.saturating_sub(h0) as f64 - client - (server + broker) as f64;
            r.other_cpu_pct = Some(pct(other.max(0.0)));
        }
    }
    finish(r);
}

/// The `--payload` and `--deflate` fields (null when not given).
pub fn fill_msg(r: &mut RunReport, m: &MsgArgs) {
    if m.payload != Payload::Pattern {
        r.payload = Some(m.payload.name().into());
    }
    if m.deflate {
        let (offered, agreed, answer) = deflate::summary();
        r.deflate_offered = Some(offered);
        r.deflate_conns = Some(agreed);
        r.deflate_answers_differ = Some(answer.as_ref().is_some_and(|a| a.1));
        r.deflate_answer = answer.map(|a| a.0);
        r.deflate_level = Some(u64::from(m.deflate_level));
        if agreed > 0 && agreed < offered {
            r.first_error.get_or_insert_with(|| {
                format!(
                    "permessage-deflate declined on {} of {offered} connections",
                    offered - agreed
                )
            });
        }
    }
}

/// Error counters and the verdict.
pub fn finish(r: &mut RunReport) {
    r.mismatches = stats::mismatches();
    r.errors = stats::errors();
    r.first_error = stats::first_error();
    r.ok = r.mismatches == 0 && r.errors == 0;
}

/// Waits for the tasks to finish on their own for up to `grace`, then aborts
/// the rest.
pub async fn wind_down(set: &mut JoinSet<()>, grace: Duration) {
    let deadline = Instant::now() + grace;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, set.join_next()).await {}
    set.abort_all();
    while set.join_next().await.is_some() {}
}

/// Checks an echoed `payload` against the next message the connection is
/// waiting for: takes that message's send record from `pending` (an echo of
/// nothing sent is an error), counts a mismatch if the bytes differ, and
/// moves `seq` on. Returns the send record (a send time).
pub fn check_echo<S: Source + ?Sized, T>(
    tx: &mut S,
    payload: &[u8],
    pending: &mut VecDeque<T>,
    seq: &mut u32,
) -> Result<T, String> {
    let Some(sent) = pending.pop_front() else {
        return Err("server sent a message that was not sent to it".into());
    };
    if !tx.verify(payload, *seq) {
        stats::mismatch(format!(
            "echo of message {seq} differs ({} bytes back, {} sent)",
            payload.len(),
            tx.size()
        ));
    }
    *seq = seq.wrapping_add(1);
    Ok(sent)
}

/// Handles an event other than an echoed message: answers a Ping (queued in
/// `out`), ignores a Pong, and ends the connection on a Close: cleanly
/// (`Ok(true)`) if ours was sent (`closing`), as an error otherwise.
/// `Ok(false)`: go on.
pub fn on_control(
    ev: Event<'_>,
    out: &mut Vec<u8>,
    key: [u8; 4],
    closing: bool,
) -> Result<bool, String> {
    match ev {
        Event::Data(_) => unreachable!("echoed messages are the caller's"),
        Event::Ping(data) => ws::push_control(out, ws::OP_PONG, data, key),
        Event::Pong => {}
        Event::Close(_) if closing => return Ok(true),
        Event::Close(code) => return Err(format!("server sent Close {code:?}")),
    }
    Ok(false)
}
