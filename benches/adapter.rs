//! The io_uring backend's stream against tokio's own `TcpStream`, on
//! loopback: a 1 KiB round trip to an echo peer on another thread, each
//! side pinned to nothing in particular (compare the two lines of one run).
//!
//! `cargo bench --bench adapter`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SIZE: usize = 1024;

/// A blocking echo peer; returns its address.
fn echo_peer() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            conn.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; SIZE];
                while conn.read_exact(&mut buf).is_ok() {
                    if conn.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, iters: u64) -> Duration {
    let out = [7u8; SIZE];
    let mut back = [0u8; SIZE];
    let start = Instant::now();
    for _ in 0..iters {
        io.write_all(&out).await.unwrap();
        io.flush().await.unwrap();
        io.read_exact(&mut back).await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(back, out);
    elapsed
}

fn adapter(c: &mut Criterion) {
    let addr = echo_peer();
    let mut group = c.benchmark_group("loopback_1KiB_round_trip");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("tokio_tcpstream", |b| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut io = rt.block_on(async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            s
        });
        b.iter_custom(|iters| rt.block_on(round_trips(&mut io, iters)));
    });
    match ringws::io::uring::probe() {
        Ok(flags) => {
            let setup = ringws::io::uring::Setup {
                flags,
                buffers: 128,
            };
            let reactor = ringws::io::uring::Reactor::new(setup).unwrap();
            group.bench_function("uring_stream", |b| {
                b.iter_custom(|iters| {
                    let std = TcpStream::connect(addr).unwrap();
                    std.set_nodelay(true).unwrap();
                    let (took, done) = tokio::sync::oneshot::channel();
                    reactor.add(std.into(), move |mut io| async move {
                        let _ = took.send(round_trips(&mut io, iters).await);
                    });
                    reactor.block_on(done).unwrap()
                })
            });
        }
        Err(why) => eprintln!("skipping uring_stream: {why}"),
    }
    group.finish();
}

criterion_group!(benches, adapter);
criterion_main!(benches);
