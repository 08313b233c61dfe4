//! One run's results: the JSON object printed with `--json`, and the small
//! human table.

use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One run. Every key is always present (null when it does not apply), so
/// the schema is the same for every mode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunReport {
    pub tool: String,
    pub mode: String,
    /// `--server-name` and `--scenario`, for `ringws-load report`.
    pub server: Option<String>,
    pub scenario: Option<String>,
    pub url: String,
    pub conns: u64,
    pub size: u64,
    pub inflight: Option<u64>,
    pub threads: u64,
    pub warmup_s: f64,
    /// Length of the measured window (idle: the hold).
    pub window_s: f64,

    /// Server CPU per echoed message (echo, rate), nanoseconds.
    pub server_cpu_ns_per_msg: Option<f64>,
    pub server_user_ns_per_msg: Option<f64>,
    pub server_sys_ns_per_msg: Option<f64>,
    /// Server CPU per handshake cycle (churn), microseconds.
    pub server_cpu_us_per_handshake: Option<f64>,
    pub server_user_us_per_handshake: Option<f64>,
    pub server_sys_us_per_handshake: Option<f64>,
    /// Server CPU time over the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    pub server_rss_start: Option<u64>,
    pub server_rss_end: Option<u64>,
    /// With several `--server-pid`s: each process's CPU over the window, %
    /// of one core, in the order given (the figures above are their sums).
    pub server_cpu_pct_each: Option<Vec<f64>>,

    /// Echoes received in the window (rate: of messages due in the window).
    pub msgs: Option<u64>,
    pub msgs_per_s: Option<f64>,
    /// Payload bytes echoed per second (each direction).
    pub bytes_per_s: Option<f64>,
    pub lat_us: Option<Latency>,

    /// Rate mode: the target rate, messages due in the window, and how many
    /// of those were never echoed before the grace period ended.
    pub rate_target: Option<f64>,
    pub sent: Option<u64>,
    pub unanswered: Option<u64>,
    /// Rate mode: how late the client queued messages for sending after
    /// their intended send time (its own pacing error, or back-pressure from
    /// a server that fell behind; included in lat_us).
    pub send_lag_us: Option<Latency>,

    /// Fanout: messages published in the window (each done when the
    /// publisher's own copy came back; `msgs` is this × (listeners + 1),
    /// the messages delivered, which `server_cpu_ns_per_msg` divides by),
    /// messages the listeners received in the window (≈ published ×
    /// listeners: a cross-check), how often the publisher waited for the
    /// slowest listener rather than for its window, and that limit.
    pub published: Option<u64>,
    pub published_per_s: Option<f64>,
    pub listener_msgs: Option<u64>,
    pub lag_stalls: Option<u64>,
    pub max_lag: Option<u64>,
    /// Fanout with `--listen-addr`: the second server's URL and the
    /// listeners on it (the rest, and the publisher, are on `url`).
    pub listen_url: Option<String>,
    pub listen_conns: Option<u64>,
    /// Fanout with `--broker-pid`: the broker's CPU over the window per
    /// delivered message and per publish (ns), and % of one core; not
    /// included in the server figures.
    pub broker_cpu_ns_per_msg: Option<f64>,
    pub broker_cpu_ns_per_publish: Option<f64>,
    pub broker_cpu_pct: Option<f64>,

    /// Churn: open/upgrade/echo/close cycles completed in the window.
    pub handshakes: Option<u64>,
    pub handshakes_per_s: Option<f64>,
    /// Churn: cycles where the server did not close TCP within 1 s of the
    /// close handshake (the client closed it).
    pub close_timeouts: Option<u64>,

    /// Idle: connections upgraded and echoed once, still open at the end of
    /// the hold, and worker processes used.
    pub connected: Option<u64>,
    pub alive_end: Option<u64>,
    pub processes: Option<u64>,
    /// Idle: server RSS before any connection (after one warm-up connection
    /// came and went) and at the end of the hold.
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub bytes_per_conn: Option<f64>,
    /// Idle with `--steps`: (connections open, server RSS) after each step,
    /// from (0, rss_before), and the least-squares line through them: bytes
    /// per further connection, the RSS it gives at 0 connections, and R².
    pub rss_steps: Option<Vec<(u64, u64)>>,
    pub rss_slope_bytes_per_conn: Option<f64>,
    pub rss_intercept: Option<f64>,
    pub rss_fit_r2: Option<f64>,
    /// Idle: kernel slab growth per connection. Both ends of each loopback
    /// connection live in this kernel, so this counts a client and a server
    /// socket; `kernel_slab_top` lists the caches that grew most (bytes per
    /// connection).
    pub kernel_slab_bytes_per_conn: Option<f64>,
    pub kernel_slab_top: Option<Vec<(String, i64)>>,
    /// Idle: TCP socket-buffer memory growth per connection (sockstat).
    pub tcp_mem_bytes_per_conn: Option<f64>,
    /// Why a kernel figure is missing, when it is.
    pub kernel_note: Option<String>,

    /// Echo and idle with `--payload`: what the messages carried ("json";
    /// null for the default pattern).
    pub payload: Option<String>,
    /// Echo and idle with `--deflate` (null without): connections that
    /// offered permessage-deflate and those whose server agreed, the first
    /// answer (`Sec-WebSocket-Extensions`; null when every server declined)
    /// and whether some connection got a different one, and the client's
    /// zlib level.
    pub deflate_offered: Option<u64>,
    pub deflate_conns: Option<u64>,
    pub deflate_answer: Option<String>,
    pub deflate_answers_differ: Option<bool>,
    pub deflate_level: Option<u64>,
    /// Echo with `--deflate` or `--payload`: frame bytes on the wire
    /// (headers and mask included, compressed when it was) per data message
    /// the client sent in the window, and per data message it received in
    /// the window.
    pub wire_tx_bytes_per_msg: Option<f64>,
    pub wire_rx_bytes_per_msg: Option<f64>,

    /// This process's CPU over the window, % of one core (near 100 means the
    /// load generator, not the server, was the limit).
    pub client_cpu_pct: Option<f64>,
    /// CPU used during the window by everything but the server and this
    /// process (all CPUs, % of one core): above a few %, other work shared
    /// the machine and the figures are suspect.
    pub other_cpu_pct: Option<f64>,
    pub mismatches: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// No mismatch and no error.
    pub ok: bool,
}

/// 1234567 → "1,234,567".
pub fn int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn num(v: f64) -> String {
    if v.is_finite() && v >= 0.0 {
        int(v.round() as u64)
    } else {
        format!("{v:.0}")
    }
}

pub fn bytes(v: f64) -> String {
    let a = v.abs();
    let sign = if v < 0.0 { "-" } else { "" };
    if a >= (1 << 30) as f64 {
        format!("{sign}{:.2} GiB", a / (1u64 << 30) as f64)
    } else if a >= (1 << 20) as f64 {
        format!("{sign}{:.1} MiB", a / (1u64 << 20) as f64)
    } else if a >= 10240.0 {
        format!("{sign}{:.1} KiB", a / 1024.0)
    } else {
        format!("{sign}{a:.0} B")
    }
}

/// Microseconds: one decimal below 100, else a whole number.
pub fn us(v: f64) -> String {
    if v < 100.0 { format!("{v:.1}") } else { num(v) }
}

impl RunReport {
    /// The human table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));

        if let (Some(c), Some(u), Some(s)) = (
            self.server_cpu_ns_per_msg,
            self.server_user_ns_per_msg,
            self.server_sys_ns_per_msg,
        ) {
            let procs = self.server_cpu_pct_each.as_ref().map_or(0, Vec::len);
            row(
                if self.mode == "fanout" {
                    "server CPU / delivered msg"
                } else {
                    "server CPU / msg"
                },
                format!(
                    "{} ns  (user {} / sys {}){}",
                    num(c),
                    num(u),
                    num(s),
                    if procs > 1 {
                        format!("; {procs} processes summed")
                    } else {
                        String::new()
                    }
                ),
            );
        }
        if let (Some(c), Some(u), Some(s)) = (
            self.server_cpu_us_per_handshake,
            self.server_user_us_per_handshake,
            self.server_sys_us_per_handshake,
        ) {
            row(
                "server CPU / handshake",
                format!("{c:.1} µs  (user {u:.1} / sys {s:.1})"),
            );
        }
        if let Some(b) = self.bytes_per_conn {
            row("server RSS / conn", bytes(b));
        }
        if let (Some(slope), Some(at0), Some(r2), Some(points)) = (
            self.rss_slope_bytes_per_conn,
            self.rss_intercept,
            self.rss_fit_r2,
            self.rss_steps.as_ref(),
        ) {
            row(
                "server RSS slope",
                format!(
                    "{} / further conn  (line through {} points, R² {r2:.4}; {} at 0 conns)",
                    bytes(slope),
                    points.len(),
                    bytes(at0)
                ),
            );
        }
        if let Some(p) = self.server_cpu_pct {
            let each = match &self.server_cpu_pct_each {
                Some(each) if each.len() > 1 => {
                    let each: Vec<String> = each.iter().map(|p| format!("{p:.0} %")).collect();
                    format!("  ({})", each.join(" + "))
                }
                _ => String::new(),
            };
            row("server CPU", format!("{p:.0} % of a core{each}"));
        }
        if let (Some(m), Some(p), Some(pct)) = (
            self.broker_cpu_ns_per_msg,
            self.broker_cpu_ns_per_publish,
            self.broker_cpu_pct,
        ) {
            row(
                "broker CPU",
                format!(
                    "{} ns / delivered msg, {} ns / publish, {pct:.0} % of a core \
                     (not in the server figure)",
                    num(m),
                    num(p)
                ),
            );
        } else if let Some(pct) = self.broker_cpu_pct {
            row("broker CPU", format!("{pct:.0} % of a core"));
        }
        if let (Some(second), Some(n)) = (&self.listen_url, self.listen_conns) {
            row(
                "listeners",
                format!(
                    "{} on {} (with the publisher), {} on {second}",
                    int(self.conns - n),
                    self.url,
                    int(n)
                ),
            );
        }
        if let (Some(p), Some(d)) = (self.published_per_s, self.msgs_per_s) {
            row(
                "throughput",
                format!(
                    "{} publishes/s → {} deliveries/s ({} copies each; {}/s payload)",
                    num(p),
                    num(d),
                    int(self.conns + 1),
                    bytes(self.bytes_per_s.unwrap_or(0.0))
                ),
            );
            row(
                "messages",
                format!(
                    "{} published in the window, {} received by listeners in it \
                     (expect ≈ {}); {} lag stalls (max lag {})",
                    int(self.published.unwrap_or(0)),
                    int(self.listener_msgs.unwrap_or(0)),
                    int(self.published.unwrap_or(0) * self.conns),
                    int(self.lag_stalls.unwrap_or(0)),
                    int(self.max_lag.unwrap_or(0)),
                ),
            );
        } else if let Some(m) = self.msgs_per_s {
            let bps = self.bytes_per_s.unwrap_or(0.0);
            row(
                "throughput",
                format!("{} msgs/s  ({}/s payload)", num(m), bytes(bps)),
            );
        }
        if let Some(offered) = self.deflate_offered {
            let agreed = self.deflate_conns.unwrap_or(0);
            row(
                "deflate",
                match &self.deflate_answer {
                    Some(answer) => format!(
                        "agreed on {} of {} connections: {answer}{}{}",
                        int(agreed),
                        int(offered),
                        if self.deflate_answers_differ == Some(true) {
                            " (and other answers)"
                        } else {
                            ""
                        },
                        self.deflate_level
                            .map_or(String::new(), |l| format!("; client level {l}")),
                    ),
                    None => format!("offered on {} connections, declined", int(offered)),
                },
            );
        }
        if let (Some(t), Some(r)) = (self.wire_tx_bytes_per_msg, self.wire_rx_bytes_per_msg) {
            let frame = |v: f64| format!("{v:.1} B");
            row(
                "wire bytes / msg",
                format!(
                    "client → server {}, server → client {}  ({} payload{})",
                    frame(t),
                    frame(r),
                    bytes(self.size as f64),
                    self.payload
                        .as_ref()
                        .map_or(String::new(), |p| format!(", {p}")),
                ),
            );
        }
        if let Some(r) = self.rate_target {
            row(
                "rate",
                format!(
                    "target {} msgs/s, {} due in window, {} unanswered",
                    num(r),
                    int(self.sent.unwrap_or(0)),
                    int(self.unanswered.unwrap_or(0))
                ),
            );
        }
        if let Some(h) = self.handshakes_per_s {
            row(
                "handshakes",
                format!(
                    "{} /s  ({} cycles, {} close timeouts)",
                    num(h),
                    int(self.handshakes.unwrap_or(0)),
                    int(self.close_timeouts.unwrap_or(0))
                ),
            );
        }
        if let Some(l) = &self.lat_us {
            let what = match self.mode.as_str() {
                "rate" => "latency µs (from intended send)",
                "fanout" => "publisher → own copy µs",
                "churn" => "cycle µs",
                _ => "latency µs",
            };
            row(
                what,
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    us(l.p50),
                    us(l.p90),
                    us(l.p99),
                    us(l.p999),
                    us(l.max)
                ),
            );
        }
        if let Some(l) = &self.send_lag_us {
            row(
                "client send lag µs",
                format!("p50 {}  p99 {}  max {}", us(l.p50), us(l.p99), us(l.max)),
            );
        }
        if let Some(c) = self.connected {
            row(
                "connections",
                format!(
                    "{} of {} open and {}, {} alive at the end{}",
                    int(c),
                    int(self.conns),
                    if self.size == 0 {
                        "silent (no message)"
                    } else {
                        "echoed"
                    },
                    int(self.alive_end.unwrap_or(0)),
                    match self.processes {
                        Some(p) if p > 1 => format!(" ({p} processes)"),
                        _ => String::new(),
                    }
                ),
            );
        }
        // Idle's before/after figures when present, else the window's ends.
        let rss = (self.rss_before.zip(self.rss_after))
            .or(self.server_rss_start.zip(self.server_rss_end));
        if let Some((b, a)) = rss {
            row(
                "server RSS",
                format!(
                    "{} → {} ({})",
                    bytes(b as f64),
                    bytes(a as f64),
                    bytes(a as f64 - b as f64)
                ),
            );
        }
        if self.mode == "idle" {
            match self.kernel_slab_bytes_per_conn {
                Some(k) => {
                    let top: Vec<String> = self
                        .kernel_slab_top
                        .iter()
                        .flatten()
                        .take(5)
                        .map(|(n, d)| format!("{n} {}", bytes(*d as f64)))
                        .collect();
                    row(
                        "kernel slab / conn",
                        format!("{}  (client + server socket; {})", bytes(k), top.join(", ")),
                    );
                }
                None => row(
                    "kernel slab / conn",
                    self.kernel_note
                        .clone()
                        .unwrap_or_else(|| "unreadable".into()),
                ),
            }
            if let Some(t) = self.tcp_mem_bytes_per_conn {
                row("TCP buffers / conn", bytes(t));
            }
        }
        if let Some(c) = self.client_cpu_pct {
            row("client CPU", format!("{c:.0} % of a core"));
        }
        if let Some(o) = self.other_cpu_pct {
            let warn = if o > 10.0 {
                "  ⚠ other work shared the machine: figures suspect"
            } else {
                ""
            };
            row("other processes", format!("{o:.0} % of a core{warn}"));
        }
        let mut checks = format!("{} mismatches, {} errors", self.mismatches, self.errors);
        if let Some(e) = &self.first_error {
            checks.push_str(&format!("; first: {e}"));
        }
        row("checks", checks);

        let title = format!(
            "ringws-load {}  {}  {} conns × {} B{}{}  window {:.1} s{}",
            self.mode,
            match &self.listen_url {
                Some(second) => format!("{} + {second}", self.url),
                None => self.url.clone(),
            },
            int(self.conns),
            int(self.size),
            self.inflight
                .map_or(String::new(), |k| if self.mode == "fanout" {
                    format!(" + 1 publisher, window {k}")
                } else {
                    format!(", {k} in flight")
                }),
            if self.threads > 1 {
                format!(", {} client threads", self.threads)
            } else {
                String::new()
            },
            self.window_s,
            if self.warmup_s > 0.0 && self.mode != "idle" {
                format!(" (+{:.1} s warm-up)", self.warmup_s)
            } else {
                String::new()
            },
        );
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("{title}\n");
        for (k, v) in rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(bytes(5564.0), "5564 B");
        assert_eq!(bytes(3.0 * 1048576.0), "3.0 MiB");
    }

    #[test]
    fn json_round_trips_with_nulls() {
        let r = RunReport {
            mode: "echo".into(),
            ok: true,
            ..Default::default()
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"msgs_per_s\":null"));
        let back: RunReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back.mode, "echo");
        assert!(!back.table().is_empty());
    }
}
