//! The `ringws` binary: parse the configuration, start the server, drain on
//! SIGTERM/SIGINT, exit 0 when drained.

use std::process::ExitCode;

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
    ringws::run(ringws::Echo)
}
