//! The real `ringws` binary: drain on SIGTERM, and startup where seccomp
//! forbids io_uring (as Docker >= 25 and containerd >= 2.0 do by default).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `ringws` process and what it has logged so far.
struct Ringws {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

/// Seccomp filter: `io_uring_setup` fails with EPERM, everything else is allowed.
fn forbid_io_uring() -> seccompiler::BpfProgram {
    let rules = [(libc::SYS_io_uring_setup, vec![])].into_iter().collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into().expect("supported arch"),
    )
    .expect("filter");
    filter.try_into().expect("bpf")
}

impl Ringws {
    fn command(args: &[&str], no_io_uring: bool) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringws"));
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "2",
            "--log",
            "info",
        ])
        .args(args)
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if no_io_uring {
            let program = forbid_io_uring();
            // SAFETY: runs in the forked child before exec; apply_filter only
            // makes the prctl and seccomp system calls on a program built
            // before the fork (it allocates only to report an error).
            unsafe {
                cmd.pre_exec(move || {
                    seccompiler::apply_filter(&program).map_err(std::io::Error::other)
                });
            }
        }
        cmd
    }

    /// Starts the binary and waits for its "listening" line.
    fn start(args: &[&str], no_io_uring: bool) -> (Ringws, SocketAddr) {
        let mut child = Self::command(args, no_io_uring)
            .spawn()
            .expect("spawn ringws");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("listening on ws://").nth(1) {
                    let addr = rest.split('/').next().unwrap().to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("ringws did not start: {}", log.lock().unwrap()));
        (Ringws { child, log }, addr.parse().unwrap())
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits for the process to exit, at most `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ringws did not exit within {limit:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ringws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_drains_with_close_1001_and_exits_0() {
    for io in ["uring", "epoll"] {
        let (mut server, addr) = Ringws::start(&["--io", io, "--drain-timeout", "10s"], false);
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
    let (mut server, addr) =
        Ringws::start(&["--drain-timeout", "1s", "--close-timeout", "30s"], false);
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
    let (mut server, addr) = Ringws::start(&["--io", "auto"], true);
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
    let out = Ringws::command(&["--io", "uring"], true)
        .output()
        .expect("run ringws");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(stderr.contains("EPERM"), "{stderr}");
}

#[tokio::test]
async fn auto_serves_on_the_measured_preference_and_says_so() {
    let (mut server, addr) = Ringws::start(&["--io", "auto"], false);
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
