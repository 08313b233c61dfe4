#!/usr/bin/env bash
# Runs one fuzz target for a bounded time:  fuzz/run.sh TARGET SECONDS [libFuzzer args...]
#
# Targets: handshake, session, adapter (see fuzz_targets/; adapter needs io_uring). Works on the stable
# toolchain: cargo-fuzz passes nightly-only -Z flags, which RUSTC_BOOTSTRAP=1
# lets stable rustc accept. Installs cargo-fuzz if it is missing.
#
# Environment:
#   FUZZ_SANITIZER  none (default) or address (ASan: about 6x slower here;
#                   checks the unsafe code of ringws's dependencies too)
#   FUZZ_JOBS       libFuzzer -fork=N workers (default 1: one core)
# The corpus grows in fuzz/corpus/TARGET (git-ignored); fuzz/seeds/TARGET is
# read as well. A crash leaves its input in fuzz/artifacts/TARGET/ and makes
# this script exit non-zero; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")"

target=${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer args...]}
seconds=${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer args...]}
shift 2
case "$target" in
handshake | session | adapter) ;;
*)
    echo "unknown target $target (handshake, session, adapter)" >&2
    exit 2
    ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-none}
jobs=${FUZZ_JOBS:-1}

mkdir -p "corpus/$target" "artifacts/$target"
[ -d "seeds/$target" ] || python3 seeds.py
mkdir -p "seeds/$target"

echo "== cargo fuzz run $target for ${seconds}s (sanitizer $sanitizer)"
extra=()
if [ "$jobs" -gt 1 ]; then
    extra+=("-fork=$jobs")
fi
# -max_len: inputs up to 64 KiB (frames up to the 4 KiB message limit, with
# room for many of them); -timeout: one input may take 10 s at most (time in
# the harness is virtual, so a slow input is a hang); -rss_limit_mb bounds
# the whole process.
cargo fuzz run --sanitizer "$sanitizer" --release --debug-assertions \
    "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "${extra[@]}" "$@"
