//! `echo`: closed loop, K messages in flight per connection.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::cli::{EchoArgs, MsgArgs};
use crate::common;
use crate::deflate::Deflater;
use crate::payload::Messages;
use crate::report::RunReport;
use crate::stats::{self, DONE, MEASURE, Wire};
use crate::target::Target;
use crate::ws::{self, Conn, Event, Rng, Source, Tx};

struct Params {
    size: usize,
    inflight: usize,
    text: bool,
    any_reply: bool,
    msg: MsgArgs,
}

pub fn run(a: EchoArgs) -> Result<RunReport, String> {
    let target = Arc::new(Target::parse(&a.common.url, a.common.addr.as_deref())?);
    if a.connections == 0 || a.inflight == 0 {
        return Err("-c and -k must be at least 1".into());
    }
    a.msg.check(a.size)?;
    let rt = common::runtime(a.common.threads)?;
    rt.block_on(async move {
        let frame = a.size + 14;
        let rx_cap = (a.inflight * frame + 4096).clamp(16 << 10, 4 << 20);
        let deadline = tokio::time::Instant::now() + a.common.duration.max(Duration::from_secs(5));
        let offer = a.msg.deflate;
        let conns = common::open_all(a.connections, a.connect_concurrency, deadline, |_| {
            let target = target.clone();
            async move { ws::connect_with(&target, None, rx_cap, &mut Rng::new(), offer).await }
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
            msg: a.msg.clone(),
        });
        let mut tasks = JoinSet::new();
        for (i, conn) in conns.into_iter().enumerate() {
            let params = params.clone();
            tasks.spawn(async move {
                let result = if params.msg.per_send() {
                    let p = &params.msg;
                    let deflater =
                        (conn.deflate.as_ref()).map(|a| Deflater::new(a, p.deflate_level));
                    let tx = Messages::new(
                        p.payload,
                        params.size,
                        params.text,
                        i as u64,
                        deflater,
                        &mut Rng::new(),
                    );
                    connection(conn, &params, tx, true).await
                } else {
                    let tx = Tx::new(params.size, params.text, &mut Rng::new());
                    connection(conn, &params, tx, false).await
                };
                if let Err(e) = result {
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
        common::fill_msg(&mut r, &a.msg);
        if a.msg.per_send() {
            let w = shard.wire;
            let per = |bytes: u64, msgs: u64| {
                (msgs > 0).then(|| (bytes as f64 / msgs as f64 * 10.0).round() / 10.0)
            };
            r.wire_tx_bytes_per_msg = per(w.tx_bytes, w.tx_msgs);
            r.wire_rx_bytes_per_msg = per(w.rx_bytes, w.rx_msgs);
        }
        if shard.done == 0 {
            r.ok = false;
        }
        Ok(r)
    })
}

/// One connection's closed loop. `count_wire`: count data frames and their
/// bytes each way in the window (for the report's wire bytes per message).
async fn connection<S: Source>(
    conn: Conn,
    p: &Params,
    mut tx: S,
    count_wire: bool,
) -> Result<(), String> {
    let Conn {
        mut stream, mut rx, ..
    } = conn;
    let mut out: Vec<u8> = Vec::with_capacity(p.inflight * (p.size + 14) + 64);
    let mut wire = Wire::default();
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
                        tx.skip();
                        sent_at
                            .pop_front()
                            .ok_or("server sent a message that was not sent to it")?
                    } else {
                        common::check_echo(&mut tx, payload, &mut sent_at, &mut expect_seq)?
                    };
                    if phase == MEASURE {
                        latencies.push(now.duration_since(t).as_nanos() as u64);
                        if count_wire {
                            wire.rx_msgs += 1;
                            wire.rx_bytes += rx.last_msg_wire() as u64;
                        }
                    }
                    if phase != DONE {
                        let n = tx.push(&mut out, next_seq);
                        next_seq = next_seq.wrapping_add(1);
                        sent_at.push_back(now);
                        if phase == MEASURE && count_wire {
                            wire.tx_msgs += 1;
                            wire.tx_bytes += n as u64;
                        }
                    }
                }
                other => {
                    if common::on_control(other, &mut out, tx.key(), closing)? {
                        return Ok(());
                    }
                }
            }
        }
        stats::record_done(&mut latencies);
        stats::record_wire(&mut wire);
        // After the window: let the messages in flight come back, then close
        // (Close frame, then wait for the server's) so no echo meets a reset.
        if phase == DONE && !closing && sent_at.is_empty() {
            closing = true;
            ws::push_close(&mut out, 1000, tx.key());
        }
    }
}
