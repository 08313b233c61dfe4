#!/usr/bin/env bash
# Flamegraph of ringws under load, one per backend.
#
#   perf/flamegraph.sh                 # both backends, 100 conns x 20 B, 10 s each
#   IO=epoll SIZE=16384 CONNS=200 DURATION=20 perf/flamegraph.sh
#
# Builds ringws and ringws-load with the `profiling` profile (release code with
# debug info) and frame pointers, pins the server to CPU 0 (one worker) and the
# load generator to CPU 1, records the server with `perf record -e cpu-clock -g`
# (software clock: these VMs expose no hardware counters) and renders an SVG with
# inferno (installed with `cargo install inferno` if missing).
# Output: target/flamegraph/ringws-<backend>.svg (and the folded stacks beside it).
# Loopback only; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."

IO_LIST="${IO:-epoll uring}"
CONNS="${CONNS:-100}"
SIZE="${SIZE:-20}"
DURATION="${DURATION:-10}"
PORT="${PORT:-19321}"
OUT="${OUT:-target/flamegraph}"
# A separate target directory: RUSTFLAGS would otherwise rebuild the main one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/fp}"
BIN="$CARGO_TARGET_DIR/profiling"

log() { printf '[flamegraph] %s\n' "$*" >&2; }

command -v perf >/dev/null || { log "perf not found (Debian: linux-perf)"; exit 1; }
if ! command -v inferno-flamegraph >/dev/null; then
    log "installing inferno (cargo install inferno)"
    cargo install --quiet --locked inferno
fi

log "building (profile profiling, frame pointers) into $CARGO_TARGET_DIR"
RUSTFLAGS="-C force-frame-pointers=yes" \
    cargo build --quiet --locked --profile profiling -p ringws -p ringws-load

mkdir -p "$OUT"
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

for io in $IO_LIST; do
    log "[$io] server on CPU 0, ${CONNS} x ${SIZE} B from CPU 1, ${DURATION} s"
    taskset -c 0 "$BIN/ringws" --bind 127.0.0.1 --port "$PORT" --workers 1 --io "$io" \
        --log warn &
    SERVER=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    taskset -c 1 "$BIN/ringws-load" echo --url "ws://127.0.0.1:$PORT/ws" \
        -c "$CONNS" -s "$SIZE" --duration "$((DURATION + 2))s" --warmup 1s \
        --server-pid "$SERVER" > "$OUT/load-$io.txt" 2>&1 &
    LOAD=$!
    sleep 1.5
    perf record -q -e cpu-clock -F 2000 -g -p "$SERVER" -o "$OUT/perf-$io.data" \
        -- sleep "$DURATION" 2>/dev/null
    wait "$LOAD" || { log "[$io] load generator failed:"; cat "$OUT/load-$io.txt" >&2; exit 1; }
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
    perf script -i "$OUT/perf-$io.data" 2>/dev/null | inferno-collapse-perf > "$OUT/ringws-$io.folded"
    inferno-flamegraph --title "ringws --io $io: ${CONNS} conns x ${SIZE} B echo (server CPU, cpu-clock)" \
        < "$OUT/ringws-$io.folded" > "$OUT/ringws-$io.svg"
    rm -f "$OUT/perf-$io.data"
    log "[$io] $(grep -m1 'CPU / msg' "$OUT/load-$io.txt" | sed 's/^ *//')"
    log "[$io] wrote $OUT/ringws-$io.svg"
done
