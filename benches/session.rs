//! The echo session and the handshake over an in-memory duplex: ringws' own
//! CPU cost without the kernel's.
//!
//! `cargo bench --bench session`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringws::Config;
use ringws::standalone::Standalone;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const REQUEST: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame and the unmasked server frame it is echoed as.
fn frames(size: usize) -> (Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut head = vec![0x82];
    match size {
        n if n < 126 => head.push(n as u8),
        n if n < 65536 => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut server = head.clone();
    server.extend_from_slice(&payload);
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut client = head;
    client[1] |= 0x80;
    client.extend_from_slice(&key);
    client.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    (client, server)
}

async fn read_head(io: &mut DuplexStream) {
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        io.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
}

fn echo(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("echo");
    for size in [20usize, 1024, 16 << 10] {
        let (client_frame, server_frame) = frames(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_custom(|iters| {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async {
                    let (mut client, server) = tokio::io::duplex(256 << 10);
                    let ctx = Standalone::new(Config::default());
                    tokio::task::spawn_local(async move { ctx.serve(server).await });
                    client.write_all(REQUEST).await.unwrap();
                    read_head(&mut client).await;
                    let mut got = vec![0u8; server_frame.len()];
                    let start = Instant::now();
                    for _ in 0..iters {
                        client.write_all(&client_frame).await.unwrap();
                        client.read_exact(&mut got).await.unwrap();
                    }
                    let elapsed = start.elapsed();
                    assert_eq!(got, server_frame);
                    elapsed
                })
            })
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function("handshake/request_to_101", |b| {
        b.iter_custom(|iters| {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let ctx = std::rc::Rc::new(Standalone::new(Config::default()));
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (mut client, server) = tokio::io::duplex(4096);
                    let ctx = ctx.clone();
                    let start = Instant::now();
                    let serving = tokio::task::spawn_local(async move { ctx.serve(server).await });
                    client.write_all(REQUEST).await.unwrap();
                    read_head(&mut client).await;
                    total += start.elapsed();
                    drop(client);
                    serving.await.unwrap();
                }
                total
            })
        })
    });
    c.bench_function("handshake/validate", |b| {
        let req = hyper::Request::get("/ws")
            .header("Host", "bench")
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13")
            .body(())
            .unwrap();
        b.iter(|| ringws::upgrade::validate(std::hint::black_box(&req)).unwrap())
    });
}

criterion_group!(benches, echo, handshake);
criterion_main!(benches);
