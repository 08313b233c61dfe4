//! The real `ringws` binary as a child process, for the tests that need a
//! process of its own (signals, exit status, seccomp, rlimits, /proc):
//! `tests/binary.rs` and `tests/faults.rs`.
//!
//! ```ignore
//! let server = Launch::new(&["--io", "epoll"]).nofile(64).start();
//! let mut s = raw_upgrade(server.addr, &[]).await;
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to start the binary: always on 127.0.0.1 port 0 with two workers
/// (unless [`Launch::workers`] says otherwise), stdin and stdout closed,
/// stderr collected, `PORT` and `MIMALLOC_ALLOW_THP` removed from the
/// environment.
pub struct Launch<'a> {
    args: &'a [&'a str],
    env: Vec<(&'a str, &'a str)>,
    nofile: Option<u64>,
    forbid_io_uring: bool,
    workers: usize,
    program: std::path::PathBuf,
}

impl<'a> Launch<'a> {
    /// `args` come after `--bind 127.0.0.1 --port 0 --workers 2` (or the
    /// count given to [`Launch::workers`]: `args` must not repeat
    /// `--workers`, which clap refuses); `--log
    /// info` is added unless `args` has a `--log` (whose filter must keep
    /// the "listening" line for [`Launch::start`]).
    pub fn new(args: &'a [&'a str]) -> Self {
        Launch {
            args,
            env: Vec::new(),
            nofile: None,
            forbid_io_uring: false,
            workers: 2,
            program: env!("CARGO_BIN_EXE_ringws").into(),
        }
    }

    /// Runs the example `name` (`examples/NAME.rs`, which `cargo test`
    /// builds beside the test binaries) instead of `ringws`.
    pub fn example(name: &str, args: &'a [&'a str]) -> Self {
        // target/PROFILE/deps/TEST-HASH -> target/PROFILE/examples/NAME
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        Launch {
            program: dir.join("examples").join(name),
            ..Launch::new(args)
        }
    }

    /// Runs `n` workers instead of two.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Sets an environment variable of the child.
    pub fn env(mut self, key: &'a str, value: &'a str) -> Self {
        self.env.push((key, value));
        self
    }

    /// Sets both the soft and hard RLIMIT_NOFILE before exec (so ringws
    /// cannot raise it).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Installs a seccomp filter before exec under which `io_uring_setup`
    /// fails with EPERM, as Docker >= 25 and containerd >= 2.0 do by default.
    pub fn forbid_io_uring(mut self) -> Self {
        self.forbid_io_uring = true;
        self
    }

    /// The command, not started (for `.output()` on a run that must fail).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(["--bind", "127.0.0.1", "--port", "0", "--workers"])
            .arg(self.workers.to_string());
        if !self.args.contains(&"--log") {
            cmd.args(["--log", "info"]);
        }
        cmd.args(self.args)
            .env_remove("PORT")
            .env_remove("MIMALLOC_ALLOW_THP")
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let nofile = self.nofile;
        let program = self.forbid_io_uring.then(forbid_io_uring);
        if nofile.is_some() || program.is_some() {
            // SAFETY: runs in the forked child before exec. setrlimit is
            // async-signal-safe and touches only a stack struct; apply_filter
            // only makes the prctl and seccomp system calls on a program
            // built before the fork (it allocates only to report an error).
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(n) = nofile {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if let Some(program) = &program {
                        seccompiler::apply_filter(program).map_err(std::io::Error::other)?;
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Starts the binary and waits (at most 20 s) for its "listening" line.
    pub fn start(&self) -> Ringws {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
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
                    let _ = tx.send(rest.split('/').next().unwrap().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("ringws did not start: {}", log.lock().unwrap()));
        Ringws {
            child,
            log,
            addr: addr.parse().unwrap(),
        }
    }
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

/// A running `ringws` process and what it has logged so far; killed when
/// dropped.
pub struct Ringws {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Ringws {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill");
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit, at most `limit` (then kills it and
    /// panics).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ringws did not exit within {limit:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    /// Waits until every worker has built its runtime: the "listening" line
    /// is logged before the worker threads start, and a ring or epoll
    /// instance created later would count as a leaked fd. Waits for the fd
    /// count to hold still for 300 ms (at most 5 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = (self.fds(), Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = self.fds();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= Duration::from_millis(300) {
                return;
            }
        }
    }

    /// What the process's fds point to.
    pub fn fd_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect();
        v.sort();
        v
    }

    /// Resident set size, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks as f64 / hz
    }
}

impl Drop for Ringws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
