//! ringws-load: a load generator for WebSocket echo servers on loopback, used
//! by ringws' benchmarks (`benches/compare.sh`). See `ringws-load --help`.
//!
//! Layout: `cli` (options), `target` (URL, loopback rule, source addresses),
//! `ws` (minimal client: handshake, masked frames, parser), `deflate`
//! (client-side permessage-deflate), `payload` (JSON messages, frames built
//! per send), `procfs` (server CPU/RSS, slab samples), `stats` (phase, per-thread counters, histogram),
//! `common` (runtime, connect phase, measured window), one module per mode
//! (`echo`, `rate`, `idle`, `churn`, `fanout`), `report` (JSON + table) and `summary`
//! (the `report` subcommand).

mod churn;
mod cli;
mod common;
mod deflate;
mod echo;
mod fanout;
mod idle;
mod payload;
mod procfs;
mod rate;
mod report;
mod stats;
mod summary;
mod target;
mod ws;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each connection is a file descriptor: use all the process may have.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("ringws-load: could not raise the open-file limit: {e}");
    }
    let (mode, common, result) = match cli.cmd {
        Cmd::Report(a) => {
            return match summary::run(a) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringws-load report: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Idle(a) if a.shard.is_some() => {
            return match idle::worker(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringws-load idle worker: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Echo(a) => ("echo", a.common.clone(), echo::run(a)),
        Cmd::Rate(a) => ("rate", a.common.clone(), rate::run(a)),
        Cmd::Idle(a) => ("idle", a.common.clone(), idle::run(a)),
        Cmd::Churn(a) => ("churn", a.common.clone(), churn::run(a)),
        Cmd::Fanout(a) => ("fanout", a.common.clone(), fanout::run(a)),
    };
    match result {
        Ok(r) => {
            if common.json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
                eprint!("{}", r.table());
            } else {
                print!("{}", r.table());
            }
            if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ringws-load {mode}: {e}");
            if common.json {
                // Still one JSON object, so a script's record shows the failure.
                let url = target::Target::parse(&common.url, common.addr.as_deref())
                    .map_or_else(|_| common.url.clone(), |t| t.url());
                let mut r = common::base_report(mode, &common, url, 0, 0);
                r.first_error = Some(e);
                r.errors = 1;
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            }
            ExitCode::FAILURE
        }
    }
}
