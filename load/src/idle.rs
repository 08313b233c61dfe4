//! `idle`: open N connections, echo once on each (or not: `--no-message`),
//! hold them, and measure the server's memory per connection.
//!
//! Above `--per-process` connections (the open-file limit), the parent
//! re-executes this binary as workers (`idle --shard I/N`), each holding a
//! share. A worker prints `READY {json}` once its share is open, waits for a
//! line (or EOF) on stdin, checks which connections are still alive, prints
//! `DONE {json}` and exits.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{IdleArgs, MsgArgs};
use crate::common;
use crate::deflate::{self, Deflater};
use crate::payload::Messages;
use crate::procfs;
use crate::report::RunReport;
use crate::stats;
use crate::target::Target;
use crate::ws::{self, Conn, Event, Rng, Source, Tx};

/// Source-address index of the warm-up connection (far from 0..N).
const WARMUP_SOURCE: u64 = 16_000_000;

/// What a worker reports to its parent.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ShardReport {
    connected: u64,
    alive: u64,
    errors: u64,
    mismatches: u64,
    first_error: Option<String>,
    /// With --deflate: connections that offered it, that agreed, and the
    /// first answer.
    #[serde(default)]
    deflate_offered: u64,
    #[serde(default)]
    deflate_agreed: u64,
    #[serde(default)]
    deflate_answer: Option<String>,
}

impl ShardReport {
    fn new(connected: u64) -> Self {
        let (offered, agreed, answer) = deflate::summary();
        ShardReport {
            connected,
            alive: 0,
            errors: stats::errors(),
            mismatches: stats::mismatches(),
            first_error: stats::first_error(),
            deflate_offered: offered,
            deflate_agreed: agreed,
            deflate_answer: answer.map(|a| a.0),
        }
    }
}

/// Connections held open.
struct Held {
    streams: Vec<TcpStream>,
}

impl Held {
    /// Connections the server has not closed (must run inside the runtime).
    fn alive(&self) -> u64 {
        let mut buf = [0u8; 256];
        self.streams
            .iter()
            .filter(|s| match s.try_read(&mut buf) {
                Err(e) => e.kind() == ErrorKind::WouldBlock,
                Ok(n) => n > 0,
            })
            .count() as u64
    }

    /// Sends a Close frame on each (best effort) and drops them.
    fn close(self, key: [u8; 4]) {
        let mut frame = Vec::new();
        ws::push_close(&mut frame, 1000, key);
        for s in self.streams {
            let _ = s.try_write(&frame);
        }
    }
}

/// Opens connections `range` (global indices: they pick the source
/// addresses), echoing one message on each.
async fn open(target: &Arc<Target>, range: Range<usize>, a: &IdleArgs) -> Held {
    let deadline = tokio::time::Instant::now() + a.common.duration;
    let first = range.start;
    let (size, no_message) = (a.size, a.no_message);
    let msg = Arc::new(a.msg.clone());
    let opened = common::open_all(range.len(), a.connect_concurrency, deadline, |i| {
        let target = target.clone();
        let msg = msg.clone();
        async move { open_one(&target, (first + i) as u64, size, no_message, &msg).await }
    })
    .await;
    Held {
        streams: opened.into_iter().flatten().collect(),
    }
}

/// Opens and upgrades one connection, then echoes one message on it unless
/// `no_message` (per `msg`: offering deflate, JSON payload). What the
/// connection compresses and inflates with is dropped once it echoed: only
/// the socket is held.
async fn open_one(
    target: &Target,
    index: u64,
    size: usize,
    no_message: bool,
    msg: &MsgArgs,
) -> Result<TcpStream, String> {
    let mut rng = Rng::new();
    let Conn {
        mut stream,
        mut rx,
        deflate,
    } = ws::connect_with(
        target,
        target.source(index),
        size + 64,
        &mut rng,
        msg.deflate,
    )
    .await?;
    if no_message {
        return Ok(stream);
    }
    let mut tx: Box<dyn Source + Send> = if msg.per_send() {
        let deflater = deflate
            .as_ref()
            .map(|a| Deflater::new(a, msg.deflate_level));
        Box::new(Messages::new(
            msg.payload,
            size,
            false,
            index,
            deflater,
            &mut rng,
        ))
    } else {
        Box::new(Tx::new(size, false, &mut rng))
    };
    let mut out = Vec::with_capacity(size + 14);
    tx.push(&mut out, 0);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    loop {
        while let Some(ev) = rx.next_event()? {
            match ev {
                Event::Data(payload) => {
                    if !tx.verify(payload, 0) {
                        stats::mismatch(format!(
                            "idle echo differs ({} bytes back)",
                            payload.len()
                        ));
                    }
                    return Ok(stream);
                }
                Event::Ping(_) | Event::Pong => {}
                Event::Close(code) => return Err(format!("server sent Close {code:?}")),
            }
        }
        let n = stream
            .read(rx.space())
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("server closed the connection before echoing".into());
        }
        rx.filled(n);
    }
}

/// Kernel-side figures sampled with the server's RSS.
struct KernelSample {
    slabs: Result<std::collections::HashMap<String, u64>, String>,
    tcp_mem: Result<u64, String>,
}

fn kernel_sample() -> KernelSample {
    KernelSample {
        slabs: procfs::slabs(),
        tcp_mem: procfs::tcp_mem(),
    }
}

pub fn run(a: IdleArgs) -> Result<RunReport, String> {
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    let n = a.connections;
    if n == 0 {
        return Err("-c must be at least 1".into());
    }
    a.msg.check(a.size)?;
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(_, hard)| hard);
    let per_process = a
        .per_process
        .unwrap_or((hard.min(1 << 20) as usize).saturating_sub(256))
        .max(1);
    let shards = n.div_ceil(per_process);
    let pid = a.common.server_pid;
    let rt = common::runtime(a.common.threads)?;

    // One connection comes and goes first, so that the baseline includes
    // whatever a server allocates once (buffers, pools, lazy statics).
    rt.block_on(async {
        match open_one(&target, WARMUP_SOURCE, a.size, a.no_message, &a.msg).await {
            Ok(s) => Held { streams: vec![s] }.close([1, 2, 3, 4]),
            Err(e) => stats::error(format!("warm-up connection: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    if stats::errors() > 0 {
        return Err(stats::first_error().unwrap_or_default());
    }
    deflate::reset_notes();
    let before = common::sample_server(pid)?;
    let kernel_before = kernel_sample();

    // Size 0 records (and the table says) that no message was sent.
    let size = if a.no_message { 0 } else { a.size };
    let mut r = common::base_report("idle", &a.common, target.url(), n, size);
    r.processes = Some(shards as u64);
    r.window_s = a.hold.as_secs_f64();
    let steps = a.steps as usize;
    if steps > 1 && (shards > 1 || pid.is_none()) {
        return Err(format!(
            "--steps needs --server-pid and at most --per-process ({per_process}) connections"
        ));
    }
    let (connected, alive, after, kernel_after);
    if shards == 1 {
        let mut held = Held {
            streams: Vec::with_capacity(n),
        };
        let mut points = (before.as_ref())
            .filter(|_| steps > 1)
            .map(|b| vec![(0, b.rss)]);
        for step in 1..=steps {
            let range = n * (step - 1) / steps..n * step / steps;
            held.streams
                .extend(rt.block_on(open(&target, range, &a)).streams);
            // Every step is held as long as the last: a server may return
            // transient (handshake) memory to the OS only a while later.
            rt.block_on(async { tokio::time::sleep(a.hold).await });
            if step < steps
                && let (Some(points), Some(s)) = (points.as_mut(), common::sample_server(pid)?)
            {
                points.push((held.streams.len() as u64, s.rss));
            }
        }
        connected = held.streams.len() as u64;
        after = common::sample_server(pid)?;
        kernel_after = kernel_sample();
        if let (Some(mut points), Some(a)) = (points, after.as_ref()) {
            points.push((connected, a.rss));
            if let Some((slope, at0, r2)) = fit_line(&points) {
                r.rss_slope_bytes_per_conn = Some(slope.round());
                r.rss_intercept = Some(at0.round());
                r.rss_fit_r2 = Some(r2);
            }
            r.rss_steps = Some(points);
        }
        alive = rt.block_on(async {
            let alive = held.alive();
            held.close([1, 2, 3, 4]);
            alive
        });
    } else {
        let mut workers = Workers::spawn(&a, &target, shards)?;
        let ready = workers.collect("READY", a.common.duration + Duration::from_secs(15))?;
        connected = ready.iter().map(|s| s.connected).sum();
        for s in &ready {
            absorb(s);
            deflate::absorb(
                s.deflate_offered,
                s.deflate_agreed,
                s.deflate_answer.clone(),
            );
        }
        std::thread::sleep(a.hold);
        after = common::sample_server(pid)?;
        kernel_after = kernel_sample();
        workers.release();
        let done = workers.collect("DONE", Duration::from_secs(30))?;
        alive = done.iter().map(|s| s.alive).sum();
        workers.wait();
    }

    r.connected = Some(connected);
    r.alive_end = Some(alive);
    if let (Some(b), Some(a)) = (before, after) {
        r.rss_before = Some(b.rss);
        r.rss_after = Some(a.rss);
        r.server_rss_start = Some(b.rss);
        r.server_rss_end = Some(a.rss);
        if connected > 0 {
            r.bytes_per_conn = Some(((a.rss as f64 - b.rss as f64) / connected as f64).round());
        }
    }
    let per_conn = |v: i64| (v as f64 / connected.max(1) as f64).round();
    match (&kernel_before.slabs, &kernel_after.slabs) {
        (Ok(b), Ok(a)) => {
            let (total, top) = procfs::slab_growth(b, a);
            r.kernel_slab_bytes_per_conn = Some(per_conn(total));
            r.kernel_slab_top = Some(
                top.into_iter()
                    .take(8)
                    .map(|(name, d)| (name, per_conn(d) as i64))
                    .collect(),
            );
        }
        (Err(e), _) | (_, Err(e)) => r.kernel_note = Some(e.clone()),
    }
    if let (Ok(b), Ok(a)) = (&kernel_before.tcp_mem, &kernel_after.tcp_mem) {
        r.tcp_mem_bytes_per_conn = Some(per_conn(*a as i64 - *b as i64));
    }
    common::finish(&mut r);
    common::fill_msg(&mut r, &a.msg);
    if connected < n as u64 || alive < connected {
        r.ok = false;
        if alive < connected {
            r.first_error.get_or_insert_with(|| {
                format!(
                    "{} connections were closed during the hold",
                    connected - alive
                )
            });
        }
    }
    Ok(r)
}

/// Least-squares line through `points` (x, y): slope, y at x = 0, and R²;
/// `None` unless the x values differ.
fn fit_line(points: &[(u64, u64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    let mean = |f: &dyn Fn(&(u64, u64)) -> f64| points.iter().map(f).sum::<f64>() / n;
    let (mx, my) = (mean(&|p| p.0 as f64), mean(&|p| p.1 as f64));
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 as f64 - my).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
        .sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some((slope, my - slope * mx, r2))
}

fn absorb(s: &ShardReport) {
    stats::absorb(s.errors, s.mismatches, s.first_error.clone());
}

/// Worker processes of a sharded idle run.
struct Workers {
    children: Vec<Child>,
    lines: mpsc::Receiver<(usize, String)>,
}

impl Workers {
    fn spawn(a: &IdleArgs, target: &Target, shards: usize) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
        let (send, lines) = mpsc::channel();
        let mut children = Vec::new();
        for i in 0..shards {
            let mut child = Command::new(&exe);
            child
                .args(["idle", "--url", &target.url()])
                .args(["-c", &a.connections.to_string(), "-s", &a.size.to_string()])
                .args(["--duration", &a.common.duration.as_secs_f64().to_string()])
                .args(["--hold", &a.hold.as_secs_f64().to_string()])
                .args(["--connect-concurrency", &a.connect_concurrency.to_string()])
                .args(["--shard", &format!("{i}/{shards}")]);
            if a.no_message {
                child.arg("--no-message");
            }
            if a.msg.deflate {
                child.args([
                    "--deflate",
                    "--deflate-level",
                    &a.msg.deflate_level.to_string(),
                ]);
            }
            child.args(["--payload", a.msg.payload.name()]);
            let mut child = child
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("starting worker {i}: {e}"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if send.send((i, line)).is_err() {
                        break;
                    }
                }
            });
            children.push(child);
        }
        Ok(Workers { children, lines })
    }

    /// One `TAG {json}` line from every worker.
    fn collect(&mut self, tag: &str, limit: Duration) -> Result<Vec<ShardReport>, String> {
        let deadline = std::time::Instant::now() + limit;
        let mut got: Vec<Option<ShardReport>> = self.children.iter().map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (i, line) = self.lines.recv_timeout(left).map_err(|_| {
                let missing = got.iter().filter(|g| g.is_none()).count();
                self.kill();
                format!("{missing} idle worker(s) did not report {tag} in time")
            })?;
            if let Some(json) = line.strip_prefix(tag).map(str::trim) {
                got[i] = Some(
                    serde_json::from_str(json).map_err(|e| format!("worker {i}: {e}: {line}"))?,
                );
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Tells every worker to check and close its connections.
    fn release(&mut self) {
        for c in &mut self.children {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = stdin.write_all(b"close\n");
            }
        }
    }

    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait(&mut self) {
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `idle --shard I/N`: hold this worker's share until the parent says so.
pub fn worker(a: IdleArgs) -> Result<(), String> {
    let shard = a.shard.as_deref().unwrap_or_default();
    let (i, n) = shard
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .filter(|(i, n)| i < n)
        .ok_or_else(|| format!("bad --shard {shard:?} (want I/N)"))?;
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    let range = a.connections * i / n..a.connections * (i + 1) / n;
    let rt = common::runtime(a.common.threads)?;
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = release_tx.send(());
    });
    let emit = |tag: &str, r: &ShardReport| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{tag} {}",
            serde_json::to_string(r).expect("serialise")
        );
        let _ = out.flush();
    };
    rt.block_on(async {
        let held = open(&target, range, &a).await;
        let mut report = ShardReport::new(held.streams.len() as u64);
        emit("READY", &report);
        // The parent's hold, plus margin; EOF on stdin (parent gone) also ends it.
        let limit = a.hold + a.common.duration + Duration::from_secs(60);
        let _ = tokio::time::timeout(limit, release_rx).await;
        report.alive = held.alive();
        emit("DONE", &report);
        held.close([1, 2, 3, 4]);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fit_line;

    #[test]
    fn fits_a_line() {
        let (slope, at0, r2) = fit_line(&[(0, 1000), (10, 1500), (20, 2000)]).unwrap();
        assert!((slope - 50.0).abs() < 1e-9 && (at0 - 1000.0).abs() < 1e-6);
        assert!((r2 - 1.0).abs() < 1e-12);
        let (slope, _, r2) = fit_line(&[(0, 0), (1, 2), (2, 1), (3, 3)]).unwrap();
        assert!((slope - 0.8).abs() < 1e-9 && r2 < 1.0);
        assert!(fit_line(&[(5, 1), (5, 2)]).is_none());
    }
}
