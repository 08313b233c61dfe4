//! Idle means idle: a worker with nothing buffered wakes at most once a
//! second (its memory collection), with or without idle connections, on
//! both backends. Counted as the worker threads' voluntary context
//! switches: each time a thread blocks and is woken again it switches once
//! (involuntary ones are preemptions by other processes).

mod common;

use std::time::Duration;

use common::process::Launch;
use common::*;

/// Voluntary context switches of each worker thread (`ringws-wN`) of process `pid`.
fn worker_switches(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let comm = comm.trim().to_owned();
        if !comm.starts_with("ringws-w") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        let switches: u64 = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.push((comm, switches));
    }
    out.sort();
    out
}

#[tokio::test]
async fn an_idle_worker_wakes_at_most_once_a_second() {
    const SECONDS: u64 = 4;
    for io in ["uring", "epoll"] {
        let server = Launch::new(&["--io", io]).workers(2).start();
        server.wait_ready().await;
        // Idle connections that each echoed once: their sessions held read
        // buffers, which the housekeeping reclaims before it slows down.
        let mut clients = Vec::new();
        for i in 0..100 {
            let mut s = raw_upgrade(server.addr, &[]).await;
            echo_once(&mut s, &pattern(i, 0, 20), "warm-up").await;
            clients.push(s);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = worker_switches(server.pid());
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        let after = worker_switches(server.pid());
        assert_eq!(before.len(), 2, "{io}: {before:?}");
        for ((name, b), (_, a)) in before.iter().zip(&after) {
            let wakes = a - b;
            // One a second, and two of slack for ticks at the edges.
            assert!(
                wakes <= SECONDS + 2,
                "{io}: {name} woke {wakes} times in {SECONDS} s"
            );
        }
        // Still serving.
        echo_once(&mut clients[7], b"after the quiet", "after").await;
    }
}
