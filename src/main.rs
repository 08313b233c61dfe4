//! The `ringws` binary: parse the configuration, start the server, drain on
//! SIGTERM/SIGINT, exit 0 when drained.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// mimalloc, asked so that each size gets its own size class
/// ([`ringws::memory::Allocator`]).
#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

/// Turns huge pages off ([`ringws::memory::disable_huge_pages`]) while the
/// loader runs constructors: before Rust's runtime makes its first
/// allocations, which fault in two 2 MiB pages of mimalloc's arena (4 MiB
/// of AnonHugePages at the start of `main` when this ran from `main`).
/// Any `.init_array` entry runs before `main`'s runtime set-up; the order
/// among entries does not matter, as none of them allocates through Rust.
// SAFETY: an `.init_array` entry must be an `extern "C" fn()` that is sound
// to call before `main`: `off` reads one environment variable with getenv
// and makes one prctl, touching no Rust state, allocating nothing and never
// panicking.
#[used]
#[unsafe(link_section = ".init_array")]
static HUGE_PAGES_OFF: extern "C" fn() = {
    extern "C" fn off() {
        ringws::memory::disable_huge_pages();
    }
    off
};

fn main() -> ExitCode {
    let config = ringws::Config::parse();
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!("ringws: bad --log filter {:?}: {e}; using info", config.log);
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: ringws::Config) -> Result<(), Box<dyn std::error::Error>> {
    // Signal handlers are installed before serving, so an early SIGTERM drains
    // rather than kills.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let server = ringws::Server::bind(config)?.start()?;
    let drain = server.drain_handle();
    std::thread::Builder::new()
        .name("ringws-signals".into())
        .spawn(move || {
            rt.block_on(async {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                tracing::info!("{name}: draining (Close 1001 to every session)");
                drain.drain();
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::warn!("second signal: exiting without waiting for the drain");
                std::process::exit(1);
            });
        })?;
    server.join()?;
    tracing::info!("drained; exiting");
    Ok(())
}
