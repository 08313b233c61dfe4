//! `echo`: closed loop, K messages in flight per connection.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::cli::EchoArgs;
use crate::common;
use crate::report::RunReport;
use crate::stats::{self, DONE, MEASURE};
use crate::target::Target;
use crate::ws::{self, Conn, Event, Rng, Tx};

struct Params {
    size: usize,
    inflight: usize,
    text: bool,
    any_reply: bool,
}

pub fn run(a: EchoArgs) -> Result<RunReport, String> {
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    if a.connections == 0 || a.inflight == 0 {
        return Err("-c and -k must be at least 1".into());
    }
    let rt = common::runtime(a.common.threads)?;
    rt.block_on(async move {
        let frame = a.size + 14;
        let rx_cap = (a.inflight * frame + 4096).clamp(16 << 10, 4 << 20);
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

        let params = Arc::new(Params {
            size: a.size,
            inflight: a.inflight,
            text: a.text,
            any_reply: a.any_reply,
        });
        let mut tasks = JoinSet::new();
        for (i, conn) in conns.into_iter().enumerate() {
            let params = params.clone();
            tasks.spawn(async move {
                if let Err(e) = connection(conn, &params).await {
                    stats::error(format!("connection {i}: {e}"));
                }
            });
        }
        let window = common::run_window(&a.common).await?;
        common::wind_down(&mut tasks, Duration::from_secs(1)).await;

        let shard = stats::collect();
        let mut r = common::base_report("echo", &a.common, target.url(), a.connections, a.size);
        r.inflight = Some(a.inflight as u64);
        let secs = window.elapsed.as_secs_f64();
        r.msgs = Some(shard.done);
        r.msgs_per_s = Some((shard.done as f64 / secs).round());
        r.bytes_per_s = Some((shard.done as f64 * a.size as f64 / secs).round());
        r.lat_us = common::latency(&shard.hist);
        common::fill_window(&mut r, &window, shard.done, false);
        if shard.done == 0 {
            r.ok = false;
        }
        Ok(r)
    })
}

async fn connection(conn: Conn, p: &Params) -> Result<(), String> {
    let Conn { mut stream, mut rx } = conn;
    let tx = Tx::new(p.size, p.text, &mut Rng::new());
    let mut out: Vec<u8> = Vec::with_capacity(p.inflight * tx.frame_len() + 64);
    let mut pos = 0usize;
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(p.inflight);
    let (mut next_seq, mut expect_seq) = (0u32, 0u32);
    let mut latencies: Vec<u64> = Vec::with_capacity(p.inflight.min(1024));

    let now = Instant::now();
    for _ in 0..p.inflight {
        tx.push(&mut out, next_seq);
        next_seq = next_seq.wrapping_add(1);
        sent_at.push_back(now);
    }
    let (mut rd, mut wr) = stream.split();
    let mut closing = false;
    loop {
        // Write optimistically: the socket almost always has room.
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
        let n = if pos < out.len() {
            tokio::select! {
                biased;
                r = rd.read(rx.space()) => r,
                w = wr.write(&out[pos..]) => {
                    pos += w.map_err(|e| format!("write: {e}"))?;
                    continue;
                }
            }
        } else {
            rd.read(rx.space()).await
        }
        .map_err(|e| format!("read: {e}"))?;
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
                    let t = if p.any_reply {
                        sent_at
                            .pop_front()
                            .ok_or("server sent a message that was not sent to it")?
                    } else {
                        common::check_echo(&tx, payload, &mut sent_at, &mut expect_seq)?
                    };
                    if phase == MEASURE {
                        latencies.push(now.duration_since(t).as_nanos() as u64);
                    }
                    if phase != DONE {
                        tx.push(&mut out, next_seq);
                        next_seq = next_seq.wrapping_add(1);
                        sent_at.push_back(now);
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
        // After the window: let the messages in flight come back, then close
        // (Close frame, then wait for the server's) so no echo meets a reset.
        if phase == DONE && !closing && sent_at.is_empty() {
            closing = true;
            ws::push_close(&mut out, 1000, tx.key);
        }
    }
}
