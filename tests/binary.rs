//! The real `ringws` binary: drain on SIGTERM, startup where seccomp
//! forbids io_uring (as Docker >= 25 and containerd >= 2.0 do by default),
//! and transparent huge pages.

mod common;

use std::time::{Duration, Instant};

use common::process::Launch;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn sigterm_drains_with_close_1001_and_exits_0() {
    for io in ["uring", "epoll"] {
        let mut server = Launch::new(&["--io", io, "--drain-timeout", "10s"]).start();
        let addr = server.addr;
        let mut clients = Vec::new();
        for i in 0..10 {
            let msg = format!("client {i}");
            let mut s = raw_upgrade(addr, &masked(true, 1, msg.as_bytes())).await;
            assert_eq!(read_frame(&mut s).await.payload, msg.as_bytes());
            clients.push(s);
        }
        server.signal(libc::SIGTERM);
        // Every client is told to go away...
        for s in &mut clients {
            let f = read_frame(s).await;
            assert_eq!(f.close_code(), Some(1001), "{io}: {f:?}");
        }
        // ...and while they have not answered, the server is not ready and
        // refuses new sessions, but still answers.
        let (status, _, _) = http_get(addr, "/readyz").await;
        assert_eq!(status, 503, "{io}");
        assert_eq!(http_get(addr, "/healthz").await.0, 200, "{io}");
        let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
        late.write_all(upgrade_request(addr).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut late).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{io}: {head}");
        // Clients answer; the server closes TCP and exits 0.
        for mut s in clients {
            s.write_all(&masked(true, 8, &1001u16.to_be_bytes()))
                .await
                .unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
                .await
                .expect("server closes TCP")
                .unwrap();
        }
        let status = server.wait(Duration::from_secs(10));
        assert!(status.success(), "{io}: exit {status:?}\n{}", server.log());
        assert!(
            server.log().contains("SIGTERM: draining"),
            "{}",
            server.log()
        );
    }
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait_for_silent_clients() {
    let mut server = Launch::new(&["--drain-timeout", "1s", "--close-timeout", "30s"]).start();
    let addr = server.addr;
    let mut s = raw_upgrade(addr, &[]).await;
    server.signal(libc::SIGTERM);
    assert_eq!(read_frame(&mut s).await.close_code(), Some(1001));
    // The client never answers: the process still exits 0 after ~1 s.
    let started = Instant::now();
    let status = server.wait(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}\n{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn io_uring_forbidden_auto_falls_back_to_epoll() {
    let mut server = Launch::new(&["--io", "auto"]).forbid_io_uring().start();
    let addr = server.addr;
    let log = server.log();
    assert!(
        log.contains("io_uring unavailable, serving on epoll"),
        "{log}"
    );
    assert!(log.contains("EPERM"), "{log}");
    assert_eq!(
        log.matches("io_uring unavailable").count(),
        1,
        "one line: {log}"
    );
    assert!(log.contains("backend=epoll"), "{log}");
    let (_, _, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("ringws_backend{backend=\"epoll\"} 1"),
        "{metrics}"
    );
    let mut s = raw_upgrade(addr, &masked(true, 1, b"still works")).await;
    assert_eq!(read_frame(&mut s).await.payload, b"still works");
    drop(s);
    server.signal(libc::SIGTERM);
    assert!(server.wait(Duration::from_secs(10)).success());
}

#[test]
fn io_uring_forbidden_uring_exits_nonzero() {
    let out = Launch::new(&["--io", "uring"])
        .forbid_io_uring()
        .command()
        .output()
        .expect("run ringws");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(stderr.contains("EPERM"), "{stderr}");
}

#[tokio::test]
async fn auto_serves_on_the_measured_preference_and_says_so() {
    let mut server = Launch::new(&["--io", "auto"]).start();
    let addr = server.addr;
    let log = server.log();
    assert!(
        log.contains("io_uring is available; --io auto prefers epoll"),
        "{log}"
    );
    assert!(log.contains("backend=epoll"), "{log}");
    let mut s = raw_upgrade(addr, &masked(true, 1, b"auto")).await;
    assert_eq!(read_frame(&mut s).await.payload, b"auto");
    drop(s);
    server.signal(libc::SIGTERM);
    assert!(server.wait(Duration::from_secs(10)).success());
}

/// The kernel's view of whether this process may get transparent huge pages
/// (`THP_enabled` in /proc/PID/status, Linux >= 5.0).
fn thp_enabled(server: &common::process::Ringws) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/PID/status:\n{status}"))
}

#[tokio::test]
async fn huge_pages_are_off_unless_mimalloc_is_told_otherwise() {
    for (allow, expected) in [(None, "0"), (Some("1"), "1"), (Some("0"), "0")] {
        let launch = Launch::new(&["--io", "epoll"]);
        let launch = match allow {
            Some(v) => launch.env("MIMALLOC_ALLOW_THP", v),
            None => launch,
        };
        let mut server = launch.start();
        assert_eq!(
            thp_enabled(&server),
            expected,
            "MIMALLOC_ALLOW_THP={allow:?}"
        );
        let mut s = raw_upgrade(server.addr, &masked(true, 2, b"thp")).await;
        assert_eq!(read_frame(&mut s).await.payload, b"thp");
        drop(s);
        server.signal(libc::SIGTERM);
        assert!(server.wait(Duration::from_secs(10)).success());
    }
}

/// Drain is bounded by `--close-timeout` even with `--write-timeout 0s`: a
/// session whose reply waits on a peer that never reads is abandoned that
/// long after the drain starts, instead of holding the worker's drain (and
/// the pod's shutdown) to `--drain-timeout` (30 s here). The process exits 0
/// long before that; a well-behaved client still gets Close 1001.
#[tokio::test]
async fn a_peer_that_never_reads_does_not_hold_the_drain() {
    for io in ["uring", "epoll"] {
        let args = [
            "--io",
            io,
            "--write-timeout",
            "0s",
            "--close-timeout",
            "1s",
            "--drain-timeout",
            "30s",
        ];
        let mut server = Launch::new(&args).start();
        let addr = server.addr;
        let mut good = raw_upgrade(addr, &masked(true, 1, b"hello")).await;
        assert_eq!(read_frame(&mut good).await.payload, b"hello");
        // Sends 64 KiB messages and never reads their echoes: the server's
        // write to it blocks, and with it the session.
        let hog = raw_upgrade(addr, &[]).await;
        let (_hog_read, mut hog_write) = hog.into_split();
        let frame = masked(true, 2, &vec![3u8; 64 << 10]);
        let sender =
            tokio::spawn(async move { while hog_write.write_all(&frame).await.is_ok() {} });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        server.signal(libc::SIGTERM);
        let f = read_frame(&mut good).await;
        assert_eq!(f.close_code(), Some(1001), "{io}: {f:?}");
        good.write_all(&masked(true, 8, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        let status = server.wait(Duration::from_secs(20));
        let took = started.elapsed();
        assert!(status.success(), "{io}: exit {status:?}\n{}", server.log());
        assert!(
            took < Duration::from_secs(20),
            "{io}: the drain took {took:?}, as if held to --drain-timeout"
        );
        sender.abort();
    }
}
