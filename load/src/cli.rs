//! Command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::payload::{JSON_MIN, Payload};

const ABOUT: &str = "Load generator for WebSocket echo servers on loopback (ringws benchmarks)";

const LONG_ABOUT: &str = "\
Load generator for WebSocket echo servers on this machine (ringws benchmarks).

It speaks just enough WebSocket (HTTP/1.1 upgrade, masked binary frames) to stay \
cheap, verifies every echo byte for byte, and only ever connects to loopback \
(127.0.0.0/8, [::1], localhost): any other target is refused. Every run is bounded \
by --duration.

The figure to compare servers by is the server's CPU time per message: give \
--server-pid and the server's utime and stime (/proc/PID/stat fields 14 and 15) \
are sampled at both ends of the measured window and divided by the messages \
echoed in it (several PIDs, comma-separated, for a server made of several \
processes: their CPU and RSS are summed). Throughput on a shared machine mostly measures the client; pin \
the server and this tool to different cores (taskset -c 0 / taskset -c 1).

Output: a small table on stdout. With --json, one JSON object (one line, the \
same keys for every mode, null where a figure does not apply) goes to stdout \
and the table to stderr.

Exit status: 0 when every echo matched and no connection failed, 1 otherwise \
(mismatch, connection error, server gone, time limit hit while connecting), 2 \
for a usage error.";

const AFTER: &str = "\
Examples:
  taskset -c 0 ringws --bind 127.0.0.1 --port 9001 --workers 1 --io epoll &
  taskset -c 1 ringws-load echo --url ws://127.0.0.1:9001/ws -c 100 -s 20 --server-pid $!
  ringws-load rate  --addr 127.0.0.1:9001 -c 100 --rate 100000 --server-pid PID
  ringws-load idle  --addr 127.0.0.1:9001 -c 15000 --hold 3s --server-pid PID
  ringws-load echo  --addr 127.0.0.1:9001 -c 10 -s 1KiB --payload json --deflate --server-pid PID
  ringws-load churn --addr 127.0.0.1:9001 -c 10 --server-pid PID
  ringws-load fanout --addr 127.0.0.1:9001 -c 1000 -s 20 --server-pid PID   # examples/room.rs
  ringws-load fanout --addr 127.0.0.1:9001 --listen-addr 127.0.0.1:9002 \
      --server-pid PID1,PID2 --broker-pid NATS_PID   # two rooms sharing topics (--backplane)
  benches/compare.sh     # all servers and scenarios, best of rounds, ratio table";

#[derive(Debug, Parser)]
#[command(name = "ringws-load", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Closed loop: N connections, K messages in flight on each; each echo
    /// is checked and answered with the next message.
    ///
    /// Reports server CPU per message (user/sys) first, then msgs/s, payload
    /// bytes/s and round-trip latency percentiles (HdrHistogram). Time
    /// between the first --warmup and the end of the window is measured.
    Echo(EchoArgs),
    /// Open loop at a fixed total rate spread evenly over N connections.
    ///
    /// Messages are sent on schedule whether or not earlier ones were
    /// echoed; latency runs from each message's intended send time, so a
    /// stalled server is charged for the whole stall (coordinated omission
    /// corrected, as wrk2 does). Messages due in the window that are not
    /// echoed within 2 s after it count as unanswered errors. The pacer
    /// spins near each deadline, so the client core stays busy. When the
    /// server falls behind, at most 256 KiB of frames are queued per
    /// connection; later messages wait, and their latency keeps growing.
    /// "client send lag" reports how late messages were queued.
    Rate(RateArgs),
    /// Open N connections, echo one message on each (none with
    /// --no-message), hold them all idle.
    ///
    /// Each connection is bound to its own source address in 127.0.0.0/8
    /// (IPv4 targets), so N is not bounded by ephemeral ports. Above
    /// --per-process connections, worker processes (this binary re-executed)
    /// each hold a share, because of the open-file limit. With --server-pid:
    /// server RSS once no connection is open (after one warm-up connection
    /// came and went) and at the end of the hold, and bytes per connection =
    /// ΔRSS / N. Kernel slab growth per connection comes from /proc/slabinfo
    /// when readable (root); it counts both ends of each connection.
    /// --duration bounds the connect phase, --hold the idle phase.
    Idle(IdleArgs),
    /// Open, upgrade, echo one message, close (Close frame, wait for the
    /// server's Close and its TCP close), repeat, over C concurrent loops.
    ///
    /// Reports handshakes/s and, with --server-pid, server CPU per
    /// handshake cycle (µs, user/sys). Source addresses are spread over
    /// 127.0.0.0/8 so TIME_WAIT sockets do not exhaust ephemeral ports.
    Churn(ChurnArgs),
    /// Pub/sub: N listeners subscribed to one topic, one publisher.
    ///
    /// For a server that publishes every message it receives to every
    /// connection of one topic, the sender included (ringws' `room`
    /// example). The N listeners are opened first and only read; then one
    /// publisher sends messages and keeps --window of them in flight,
    /// counting a message done when its own copy comes back. Each message
    /// carries its sequence number (first 8 bytes) and a fixed pattern;
    /// every listener checks every message it receives: content, and
    /// numbers strictly increasing without gaps. A Close from the server
    /// on a listener (e.g. 1008 when its queue overflowed) is an error. The
    /// publisher never runs more than --max-lag messages ahead of the
    /// slowest listener ("lag stalls" counts how often that, not the
    /// window, held it back). Reports server CPU per delivered message
    /// (published in the window × (N + 1)), then publishes/s and
    /// deliveries/s; latency is the publisher's, to its own copy.
    ///
    /// Two servers sharing the topic (e.g. two ringws processes linked by
    /// --backplane through one NATS server): --listen-addr puts every other
    /// listener on the second server, --server-pid takes both PIDs
    /// (comma-separated; the figure is their CPU summed), and --broker-pid
    /// reports the broker's CPU beside it, not in it.
    Fanout(FanoutArgs),
    /// Summarise JSON lines (from benches/compare.sh) into one markdown table:
    /// best of the rounds per server and scenario, with ratios to a baseline
    /// (and, from 3 rounds on, the median CPU per message beside the best).
    Report(ReportArgs),
}

#[derive(Clone, Debug, Args)]
pub struct Common {
    /// WebSocket URL (ws:// only; host must be loopback).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// HOST:PORT that replaces the URL's host and port (same loopback rule).
    #[arg(long)]
    pub addr: Option<String>,

    /// Length of the measured window (seconds, or e.g. 500ms). For idle it
    /// bounds the connect phase.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time run before the window and excluded from it.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Server process to sample: CPU (utime/stime) and RSS at both ends of
    /// the window. Several PIDs, comma-separated (at most 8), for a server
    /// made of several processes (e.g. two ringws linked by --backplane):
    /// their CPU and RSS are summed, and each one's CPU % is reported too.
    #[arg(long, value_name = "PID[,PID...]", value_parser = parse_pids)]
    pub server_pid: Option<Pids>,

    /// Client runtime threads (1 = tokio current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Server name recorded in the JSON (used by `report`).
    #[arg(long)]
    pub server_name: Option<String>,

    /// Scenario name recorded in the JSON (used by `report`).
    #[arg(long)]
    pub scenario: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,

    /// Payload bytes per message (accepts 16KiB, 1k, ...).
    #[arg(short = 's', long, default_value = "20", value_parser = parse_size)]
    pub size: usize,

    /// Messages in flight per connection.
    #[arg(short = 'k', long, default_value_t = 1)]
    pub inflight: usize,

    /// Send text frames instead of binary ones (the payload is ASCII).
    #[arg(long)]
    pub text: bool,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Take any message the server sends as the answer to the oldest one in
    /// flight, without comparing bytes: for servers that answer with
    /// messages of their own (e.g. ringws' `counter` example).
    #[arg(long)]
    pub any_reply: bool,

    #[command(flatten)]
    pub msg: MsgArgs,
}

/// What the messages carry, and compression (echo and idle).
#[derive(Clone, Debug, Args)]
pub struct MsgArgs {
    /// Offer permessage-deflate as Chromium does ("permessage-deflate;
    /// client_max_window_bits"). If the server accepts, every message sent
    /// is compressed (RSV1; context kept from message to message unless the
    /// answer says client_no_context_takeover; window per
    /// client_max_window_bits), and messages received with RSV1 are
    /// inflated (context kept unless server_no_context_takeover) before
    /// they are checked. The report gives the answer, the connections that
    /// agreed, and the frame bytes on the wire per message each way.
    #[arg(long)]
    pub deflate: bool,

    /// zlib level of the client's compressor with --deflate (6: zlib's
    /// default, what Chromium uses).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub deflate_level: u32,

    /// Payload of each message: "pattern" (fixed ASCII with the sequence
    /// number) or "json" (a chat/notification-like JSON object of exactly
    /// -s bytes, at least 160: sequence number, type, room, user name,
    /// timestamp and text of words drawn from a fixed vocabulary of ~300,
    /// seeded by the connection's number, so every message differs and
    /// every server gets the same ones; sent as text frames).
    #[arg(long, value_enum, default_value_t = Payload::Pattern)]
    pub payload: Payload,
}

impl MsgArgs {
    /// Whether messages are built per send (anything but the default).
    pub fn per_send(&self) -> bool {
        self.deflate || self.payload != Payload::Pattern
    }

    pub fn check(&self, size: usize) -> Result<(), String> {
        if self.payload == Payload::Json && size < JSON_MIN {
            return Err(format!("--payload json needs -s of at least {JSON_MIN}"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Args)]
pub struct RateArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,

    /// Payload bytes per message.
    #[arg(short = 's', long, default_value = "20", value_parser = parse_size)]
    pub size: usize,

    /// Total messages per second over all connections.
    #[arg(long)]
    pub rate: f64,

    /// Send text frames instead of binary ones.
    #[arg(long)]
    pub text: bool,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

#[derive(Clone, Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections to open and hold.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: usize,

    /// Payload bytes of the one message echoed on each connection.
    #[arg(short = 's', long, default_value = "20", value_parser = parse_size)]
    pub size: usize,

    /// How long to hold the connections once all are open.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Connections being opened at once (per process).
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,

    /// Most connections one process holds; above it, worker processes share
    /// them [default: the hard open-file limit minus 256].
    #[arg(long)]
    pub per_process: Option<usize>,

    /// Open the connections in this many equal steps, sampling the server's
    /// RSS after each (--hold after the step's connections echoed) and
    /// fitting RSS against connections by least squares: the slope is the
    /// memory each further connection costs, apart from what the server
    /// holds regardless. Needs --server-pid; one process only (at most
    /// --per-process connections).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub steps: u32,

    /// Open and hold the connections without sending anything on them
    /// (for servers whose messages would fan out, like the `room` example).
    #[arg(long)]
    pub no_message: bool,

    #[command(flatten)]
    pub msg: MsgArgs,

    /// Internal: run as worker I of N (set by the parent process).
    #[arg(long, hide = true, value_name = "I/N")]
    pub shard: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,

    /// Listeners (subscribers that only read); the publisher comes on top.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: usize,

    /// Payload bytes per message, at least 8 (accepts 16KiB, 1k, ...).
    #[arg(short = 's', long, default_value = "20", value_parser = parse_size)]
    pub size: usize,

    /// Messages in flight, counted by the publisher's own copies.
    #[arg(long, default_value_t = 1)]
    pub window: usize,

    /// Most messages the publisher may be ahead of the slowest listener
    /// [default: the window, or more, up to ~128 KiB of frames].
    #[arg(long)]
    pub max_lag: Option<usize>,

    /// Send text frames instead of binary ones (the payload is ASCII).
    #[arg(long)]
    pub text: bool,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// A second server (HOST:PORT, loopback) sharing the topic with the
    /// first, e.g. another ringws process on the same --backplane: the
    /// listeners alternate between the two (listener 0 on --addr/--url, 1
    /// here, 2 on --addr, ...: half on each, the first gets the odd one
    /// out) and the publisher is on the first, so half the listeners get
    /// every message through the broker. The URL's path is used on both.
    /// The first publish waits 200 ms after the last connection is open,
    /// for the second server's subscription to reach the broker. Give both
    /// servers' PIDs to --server-pid (PID1,PID2): the CPU per delivered
    /// message is then theirs summed.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen_addr: Option<String>,

    /// A broker process (e.g. the nats-server linking two servers) whose
    /// CPU over the window is reported on its own: per delivered message,
    /// per publish and % of a core. It is not counted in the server figure
    /// (nor as other processes' load).
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
}

#[derive(Clone, Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,

    /// Concurrent open/echo/close loops.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,

    /// Payload bytes of the message echoed on each connection.
    #[arg(short = 's', long, default_value = "20", value_parser = parse_size)]
    pub size: usize,
}

#[derive(Clone, Debug, Args)]
pub struct ReportArgs {
    /// JSON lines written by `--json` runs (with --server-name and --scenario).
    pub file: PathBuf,

    /// Server the ratios are relative to.
    #[arg(long, default_value = "fws-echo")]
    pub baseline: String,
}

/// Seconds ("6", "0.5") or a humantime duration ("500ms", "2s").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Process IDs to sample together (`--server-pid 12,34`): a fixed-size
/// list, so that it is `Copy` like the single PID it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pids {
    ids: [u32; Pids::MAX],
    len: usize,
}

impl Pids {
    pub const MAX: usize = 8;

    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len]
    }
}

/// One PID or several, comma-separated.
pub fn parse_pids(s: &str) -> Result<Pids, String> {
    let mut p = Pids {
        ids: [0; Pids::MAX],
        len: 0,
    };
    for part in s.split(',') {
        let part = part.trim();
        let id: u32 = part
            .parse()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| format!("bad PID {part:?} (want PID or PID,PID,...)"))?;
        if p.len == Pids::MAX {
            return Err(format!("at most {} PIDs", Pids::MAX));
        }
        if p.as_slice().contains(&id) {
            return Err(format!("PID {id} given twice"));
        }
        p.ids[p.len] = id;
        p.len += 1;
    }
    Ok(p)
}

/// Bytes, with an optional k/KiB/m/MiB suffix (all binary).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("bad size unit in {s:?} (use k or m)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_sizes_and_durations() {
        assert_eq!(parse_size("20").unwrap(), 20);
        assert_eq!(parse_size("16KiB").unwrap(), 16384);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert!(parse_size("1x").is_err());
        assert_eq!(parse_duration("6").unwrap(), Duration::from_secs(6));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn parses_pids() {
        assert_eq!(parse_pids("42").unwrap().as_slice(), &[42]);
        assert_eq!(parse_pids("42, 7").unwrap().as_slice(), &[42, 7]);
        for bad in ["", "x", "1,,2", "0", "3,3", "1,2,3,4,5,6,7,8,9"] {
            assert!(parse_pids(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from([
            "ringws-load",
            "fanout",
            "--server-pid",
            "10,11",
            "--listen-addr",
            "127.0.0.1:9002",
            "--broker-pid",
            "12",
        ])
        .unwrap();
        let Cmd::Fanout(a) = cli.cmd else {
            panic!("fanout")
        };
        assert_eq!(a.common.server_pid.unwrap().as_slice(), &[10, 11]);
        assert_eq!(a.listen_addr.as_deref(), Some("127.0.0.1:9002"));
        assert_eq!(a.broker_pid, Some(12));
    }
}
