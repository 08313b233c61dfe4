//! `churn`: open, upgrade, echo one message, close; repeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::cli::ChurnArgs;
use crate::common;
use crate::report::RunReport;
use crate::stats::{self, DONE, MEASURE};
use crate::target::Target;
use crate::ws::{self, Conn, Event, Rng, Tx};

/// Cycles whose server did not close TCP within a second of the close
/// handshake.
static CLOSE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
/// Source address index of the next connection.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

pub fn run(a: ChurnArgs) -> Result<RunReport, String> {
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    if a.connections == 0 {
        return Err("-c must be at least 1".into());
    }
    let rt = common::runtime(a.common.threads)?;
    rt.block_on(async move {
        let mut tasks = JoinSet::new();
        for _ in 0..a.connections {
            let target = target.clone();
            let size = a.size;
            tasks.spawn(async move { churn_loop(&target, size).await });
        }
        let window = common::run_window(&a.common).await?;
        common::wind_down(&mut tasks, Duration::from_secs(2)).await;

        let shard = stats::collect();
        let mut r = common::base_report("churn", &a.common, target.url(), a.connections, a.size);
        let secs = window.elapsed.as_secs_f64();
        r.handshakes = Some(shard.done);
        r.handshakes_per_s = Some((shard.done as f64 / secs).round());
        r.close_timeouts = Some(CLOSE_TIMEOUTS.load(Ordering::Relaxed));
        r.lat_us = common::latency(&shard.hist);
        common::fill_window(&mut r, &window, shard.done, true);
        if shard.done == 0 {
            r.ok = false;
        }
        Ok(r)
    })
}

async fn churn_loop(target: &Target, size: usize) {
    let mut rng = Rng::new();
    let tx = Tx::new(size, false, &mut rng);
    while stats::phase() != DONE {
        let start = Instant::now();
        let src = target.source(NEXT_SOURCE.fetch_add(1, Ordering::Relaxed));
        match tokio::time::timeout(Duration::from_secs(5), cycle(target, src, &tx, &mut rng)).await
        {
            Ok(Ok(())) => {
                if stats::phase() == MEASURE {
                    let ns = start.elapsed().as_nanos() as u64;
                    stats::with_shard(|s| {
                        s.done += 1;
                        s.hist.saturating_record(ns);
                    });
                }
            }
            Ok(Err(e)) => {
                if stats::phase() != DONE {
                    stats::error(e);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => stats::error("a connect/echo/close cycle took over 5 s".into()),
        }
    }
}

async fn cycle(
    target: &Target,
    src: Option<std::net::IpAddr>,
    tx: &Tx,
    rng: &mut Rng,
) -> Result<(), String> {
    let Conn {
        mut stream, mut rx, ..
    } = ws::connect(target, src, 4096, rng).await?;
    let mut out = Vec::with_capacity(tx.frame_len() + 16);
    tx.push(&mut out, 0);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    out.clear();
    let mut echoed = false;
    loop {
        let n = stream
            .read(rx.space())
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(if echoed {
                "server closed TCP without answering the Close frame".into()
            } else {
                "server closed the connection before echoing".into()
            });
        }
        rx.filled(n);
        while let Some(ev) = rx.next_event()? {
            match ev {
                Event::Data(payload) if !echoed => {
                    if !tx.verify(payload, 0) {
                        stats::mismatch(format!(
                            "churn echo differs ({} bytes back)",
                            payload.len()
                        ));
                    }
                    echoed = true;
                    ws::push_close(&mut out, 1000, tx.key);
                }
                Event::Data(_) => return Err("server sent an extra message".into()),
                Event::Ping(data) => ws::push_control(&mut out, ws::OP_PONG, data, tx.key),
                Event::Pong => {}
                Event::Close(_) if echoed => {
                    // The server should close TCP first (RFC 6455 7.1.1).
                    let mut scratch = [0u8; 64];
                    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut scratch))
                        .await
                    {
                        Ok(_) => {}
                        Err(_) => {
                            CLOSE_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return Ok(());
                }
                Event::Close(code) => {
                    return Err(format!("server sent Close {code:?} before echoing"));
                }
            }
        }
        if !out.is_empty() {
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            out.clear();
        }
    }
}
