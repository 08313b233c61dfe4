//! A program's `main` in one call: [`run`] parses the configuration from
//! the command line and the environment, logs to stderr, serves a handler
//! until SIGTERM or SIGINT, drains, and says how it ended as an exit code.
//! The `ringws` binary is `run(Echo)`; the examples are `run(TheirHandler)`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::handler::Handler;
use crate::server::Server;

/// Serves `handler` with the configuration of the command line (flags with
/// environment fallbacks, as `ringws --help` lists): drains on the first
/// SIGTERM or SIGINT (Close 1001 to every session) and returns once
/// drained; a second signal exits at once with status 1. Failures to start
/// are logged and returned as a failure status.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     ringws::run(ringws::Echo)
/// }
/// ```
pub fn run<H: Handler>(handler: H) -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!("ringws: bad --log filter {:?}: {e}; using info", config.log);
        EnvFilter::new("info")
    });
    // A program may have set up logging itself: then this one is not used.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    match serve(config, handler) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `handler` with `config` until a signal has drained the server.
pub fn serve<H: Handler>(config: Config, handler: H) -> Result<(), Box<dyn std::error::Error>> {
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
    let server = Server::bind(config)?.start_with(handler)?;
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
