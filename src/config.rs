//! The one configuration struct: command-line flags with environment fallbacks.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which I/O backend the workers run on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoMode {
    /// Probe io_uring at startup, then serve on the backend that measured
    /// better: epoll on the kernels measured so far (less memory per
    /// connection at the same CPU per message; see README).
    Auto,
    /// io_uring (ringws's own event loop on each worker's ring); exit with
    /// an error if the kernel or seccomp forbids it.
    Uring,
    /// epoll (ringws's own event loop on each worker's epoll instance).
    Epoll,
}

/// ringws: a thread-per-core WebSocket echo server (io_uring, with an epoll fallback).
///
/// Every option can also be set through the environment variable named in
/// brackets; a command-line flag wins over the environment.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ringws",
    version,
    about,
    long_about = None,
    after_help = "Transparent huge pages are off in this process unless MIMALLOC_ALLOW_THP is set (1: on), so RSS moves in 4 KiB pages, not 2 MiB ones."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RINGWS_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// TCP port to listen on (Knative sets PORT). 0 picks a free port.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// URL path that accepts WebSocket upgrades.
    #[arg(long, env = "RINGWS_PATH", default_value = "/ws")]
    pub path: String,

    /// Worker threads, each with its own runtime and SO_REUSEPORT listener
    /// [default: available parallelism, which honours cgroup CPU quotas].
    #[arg(long, env = "RINGWS_WORKERS")]
    pub workers: Option<NonZeroUsize>,

    /// I/O backend: `auto` prefers the backend that measured better (epoll:
    /// less memory per connection at the same CPU per message) and falls
    /// back to epoll when io_uring is unavailable.
    #[arg(long = "io", env = "RINGWS_IO", value_enum, default_value_t = IoMode::Auto)]
    pub io: IoMode,

    /// io_uring: receive buffers per worker, 32 KiB each, lent to whichever
    /// connection has bytes arriving (a power of two, at most 32768). An
    /// idle connection holds none; when all are in use, receives wait for
    /// one to come back (`ringws_receive_buffer_waits_total`). Pages of
    /// the buffers become resident as they are first used: 128 buffers
    /// are at most 4 MiB per worker.
    #[arg(long, env = "RINGWS_RECV_BUFFERS", default_value_t = 128, value_parser = parse_buffers)]
    pub recv_buffers: u16,

    /// Most WebSocket sessions open at once (whole process); further upgrades
    /// get 503 with Retry-After [default: the open-file limit minus 64, minus 8
    /// per worker].
    #[arg(long, env = "RINGWS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest message accepted, in bytes, summed over its fragments; bigger
    /// ones are answered with Close 1009.
    #[arg(long, env = "RINGWS_MAX_MESSAGE_SIZE", default_value_t = 16 << 20)]
    pub max_message_size: usize,

    /// Idle check period: a peer silent for a whole period gets a Ping; one
    /// still silent a period later is closed with 1001. `0s` disables.
    #[arg(long, env = "RINGWS_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Write-stall check period: a session whose writes make no progress
    /// for a whole period (a peer that sends but never reads) is closed. While
    /// a write waits the session reads nothing more, so such a peer costs at
    /// most one message plus the kernel's socket buffers. `0s` disables.
    #[arg(long, env = "RINGWS_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Time allowed for a connection's HTTP phase, from accept to the
    /// upgrade or the end of the response (slowloris defence).
    #[arg(long, env = "RINGWS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Longest HTTP request head (request line and headers), in bytes;
    /// longer ones are answered 431. The default, Node.js' own, holds 8 KB
    /// of cookies besides a browser's usual headers.
    #[arg(long, env = "RINGWS_MAX_REQUEST_HEADER_SIZE", default_value_t = 16 << 10)]
    pub max_request_header_size: usize,

    /// Most connections in their HTTP phase per worker; beyond it, the one
    /// pending longest is closed. With the header cap this bounds what
    /// unfinished requests hold: at most this many heads per worker.
    #[arg(long, env = "RINGWS_MAX_PENDING_HANDSHAKES", default_value_t = 1024)]
    pub max_pending_handshakes: usize,

    /// Time a session may take to answer our Close frame before TCP is closed;
    /// on drain, also how long a session may wait on a peer that does not read.
    #[arg(long, env = "RINGWS_CLOSE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for sessions to finish their
    /// close handshakes before exiting.
    #[arg(long, env = "RINGWS_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Most bytes all sessions together may hold in read buffers while frames
    /// arrive (`64MiB`, `1GiB` or bytes), split evenly between workers. At
    /// the limit, sessions that need more room are not read (TCP pushes back
    /// on their peers); if that lasts a second, the session whose incomplete
    /// frame is oldest is closed with 1013, one every 100 ms while it lasts
    /// [default: a quarter of the cgroup memory limit, or 256 MiB without
    /// one].
    #[arg(long, env = "RINGWS_MAX_BUFFERED_BYTES", value_parser = parse_size)]
    pub max_buffered_bytes: Option<u64>,

    /// Least rate, in bytes per second (`1KiB` or bytes), at which an
    /// incomplete frame must keep arriving: one that grows by less over a
    /// whole 10-second window is closed with 1008. `0` disables.
    #[arg(long, env = "RINGWS_MIN_MESSAGE_RATE", default_value = "1KiB", value_parser = parse_size)]
    pub min_message_rate: u64,

    /// Most bytes a connection may have queued for its peer (what the
    /// handler sent and the peer has not read yet; `64KiB` or bytes). A send
    /// once this much is queued meets `--backpressure-policy`. An echoed
    /// message is not queued: it is sent from the read buffer, and the
    /// session reads nothing more until it is written.
    #[arg(long, env = "RINGWS_MAX_BACKPRESSURE", default_value = "64KiB", value_parser = parse_size)]
    pub max_backpressure: u64,

    /// What a send past `--max-backpressure` does: `close` the connection
    /// with 1008, or `drop` the message (the handler is told which).
    #[arg(long, env = "RINGWS_BACKPRESSURE_POLICY", value_enum, default_value_t = BackpressurePolicy::Close)]
    pub backpressure_policy: BackpressurePolicy,

    /// permessage-deflate (RFC 7692): `off`; `shared` (one compressor and
    /// one inflater per worker; an idle connection holds nothing of
    /// zlib's); or `dedicated` (the same, and each connection keeps the
    /// last `--deflate-window` bytes it was sent compressed, which the next
    /// message may refer to: smaller messages for that much memory per
    /// connection). Off by default: compressing costs CPU per message,
    /// which is worth it for text-heavy traffic paid by the byte, not for
    /// all.
    #[arg(long, env = "RINGWS_DEFLATE", value_enum, default_value_t = Deflate::Off)]
    pub deflate: Deflate,

    /// zlib level of what the server compresses, 1 (fastest) to 9. Level 1
    /// uses fixed Huffman codes: on ~1 KiB JSON it sends about 45 % more
    /// bytes than level 6 for about half the CPU; `dedicated` at level 1
    /// sends fewer bytes than `shared` at level 6 (docs/performance.md).
    #[arg(long, env = "RINGWS_DEFLATE_LEVEL", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub deflate_level: u32,

    /// With `--deflate dedicated`: how much of what each connection was
    /// sent compressed it keeps for the next message to refer back to (up
    /// to `32KiB`). Memory per connection, and CPU per message (the
    /// worker's compressor reads it in before each message), for fewer
    /// bytes on the wire (docs/performance.md).
    #[arg(long, env = "RINGWS_DEFLATE_WINDOW", default_value = "4KiB", value_parser = parse_window)]
    pub deflate_window: usize,

    /// Longest a WebSocket session lives (`9m`, `1h`; `0s` disables):
    /// past it (plus its jitter) it gets Close 1001 after the messages it
    /// has read are answered, as on drain, and its client reconnects,
    /// possibly to another pod. Behind an autoscaler this lets old pods and
    /// revisions empty; on Knative set it below the revision's
    /// `timeoutSeconds`, which cuts a connection without a Close frame
    /// (deploy/README.md). Checked once a second.
    #[arg(long, env = "RINGWS_MAX_LIFETIME", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_lifetime: Duration,

    /// Each session's lifetime is `--max-lifetime` plus a random part of up
    /// to this fraction of it (`0.1`: 10 %), drawn per connection, so that
    /// the clients of a pod do not all reconnect in the same second.
    #[arg(long, env = "RINGWS_MAX_LIFETIME_JITTER", default_value_t = 0.1, value_parser = parse_fraction)]
    pub max_lifetime_jitter: f64,

    /// Shares topics with every ringws process connected to this broker
    /// (`nats://HOST:PORT`; one connection per process). Without it, topics
    /// are this process's only.
    #[arg(long, env = "RINGWS_BACKPLANE")]
    pub backplane: Option<String>,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `ringws=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl Default for Config {
    /// The defaults of the command line, ignoring the environment.
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            path: "/ws".to_owned(),
            workers: None,
            io: IoMode::Auto,
            recv_buffers: 128,
            max_connections: None,
            max_message_size: 16 << 20,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_request_header_size: 16 << 10,
            max_pending_handshakes: 1024,
            max_buffered_bytes: None,
            min_message_rate: 1024,
            max_backpressure: 64 << 10,
            backpressure_policy: BackpressurePolicy::Close,
            deflate: Deflate::Off,
            deflate_level: 1,
            deflate_window: 4 << 10,
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_lifetime: Duration::ZERO,
            max_lifetime_jitter: 0.1,
            backplane: None,
            log: "info".to_owned(),
        }
    }
}

/// What a send past `--max-backpressure` does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackpressurePolicy {
    /// Close the connection with 1008: a peer that does not keep up is let go.
    Close,
    /// Drop the message: for feeds where a newer message replaces an older.
    Drop,
}

/// Whether and how messages are compressed (permessage-deflate).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Deflate {
    /// Decline every offer: messages go as they are.
    Off,
    /// Accept offers; compress each message on its own with the worker's
    /// compressor (no context takeover either way).
    Shared,
    /// Accept offers; compress with the worker's compressor, keeping each
    /// connection's context: its last 4 KiB sent compressed.
    Dedicated,
}

/// A `--recv-buffers`: a power of two from 1 to 32768 (the kernel's
/// largest buffer ring).
fn parse_buffers(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(n) if n.is_power_of_two() => Ok(n),
        _ => Err(format!("{text}: a power of two from 1 to 32768")),
    }
}

/// A `--deflate-window`: a size up to 32 KiB, deflate's farthest reach.
fn parse_window(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size > 32 << 10 {
        return Err(format!(
            "{size} bytes: at most 32KiB, deflate's farthest reach"
        ));
    }
    Ok(size as usize)
}

/// Parses a byte count: a number with an optional `KiB`, `MiB` or `GiB`
/// (also `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of 1,024) suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count such as 65536 or 64MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown unit in {text:?}: use KiB, MiB or GiB")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a fraction between 0 and 1 (`0.1`).
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "{text:?} is not a fraction between 0 and 1, such as 0.1"
        )),
    }
}

impl Config {
    /// Worker count: `--workers`, or the parallelism available to this process.
    pub fn worker_count(&self) -> usize {
        self.workers
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults_match_default_impl() {
        let parsed = Config::parse_from(["ringws"]);
        let default = Config::default();
        // PORT or RINGWS_* may be set in the environment running the tests.
        if std::env::vars().all(|(k, _)| k != "PORT" && !k.starts_with("RINGWS_")) {
            assert_eq!(parsed.port, default.port);
            assert_eq!(parsed.path, default.path);
            assert_eq!(parsed.max_message_size, default.max_message_size);
            assert_eq!(parsed.idle_timeout, default.idle_timeout);
            assert_eq!(parsed.write_timeout, default.write_timeout);
            assert_eq!(parsed.drain_timeout, default.drain_timeout);
            assert_eq!(parsed.io, default.io);
            assert_eq!(parsed.recv_buffers, default.recv_buffers);
            assert_eq!(parsed.max_lifetime, default.max_lifetime);
            assert_eq!(parsed.max_lifetime_jitter, default.max_lifetime_jitter);
            assert_eq!(
                parsed.max_request_header_size,
                default.max_request_header_size
            );
            assert_eq!(
                parsed.max_pending_handshakes,
                default.max_pending_handshakes
            );
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("8 kb"), Ok(8 << 10));
        assert!(parse_size("64XB").is_err());
        assert_eq!(parse_window("32KiB"), Ok(32 << 10));
        assert!(parse_window("33KiB").is_err());
        assert!(parse_size("MiB").is_err());
        let c = Config::parse_from(["ringws", "--max-buffered-bytes", "64MiB"]);
        assert_eq!(c.max_buffered_bytes, Some(64 << 20));
    }

    #[test]
    fn receive_buffers_are_a_power_of_two() {
        assert_eq!(parse_buffers("16"), Ok(16));
        assert_eq!(parse_buffers("32768"), Ok(32768));
        for bad in ["0", "100", "65536", "-1", "x"] {
            assert!(parse_buffers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_humantime() {
        let c = Config::parse_from(["ringws", "--drain-timeout", "1500ms", "--io", "epoll"]);
        assert_eq!(c.drain_timeout, Duration::from_millis(1500));
        assert_eq!(c.io, IoMode::Epoll);
    }

    #[test]
    fn lifetime_jitter_is_a_fraction() {
        let c = Config::parse_from([
            "ringws",
            "--max-lifetime",
            "9m",
            "--max-lifetime-jitter",
            "0.25",
        ]);
        assert_eq!(c.max_lifetime, Duration::from_secs(540));
        assert_eq!(c.max_lifetime_jitter, 0.25);
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(Config::try_parse_from(["ringws", "--max-lifetime-jitter", "2"]).is_err());
    }
}
