//! A handler that answers each message with a message of its own: the
//! number of messages this connection has sent, as text (`handler.rs`).
//! Answering allocates nothing; the benchmarks measure its CPU per message
//! beside echo's.
//!
//! `cargo run --release --example counter`

mod handler;

#[global_allocator]
static GLOBAL: ringws::memory::Allocator = ringws::memory::Allocator;

fn main() -> std::process::ExitCode {
    ringws::run(handler::Counter)
}
