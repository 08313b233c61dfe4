#!/usr/bin/env bash
# What an idle ringws costs: server CPU time and worker wake-ups over a
# window with no connection, then with N idle connections (each echoed once).
#
#   benches/idle.sh                        # target/release/ringws, both backends
#   RINGWS_BIN=/path/to/ringws IOS=epoll WINDOW=10 CONNS=1000 benches/idle.sh
#
# CPU time is the sum over the server's threads of the first field of
# /proc/PID/task/TID/schedstat (nanoseconds on a CPU), so a figure far below
# one clock tick is still exact. Wakes are the voluntary context switches of
# each worker thread (`ringws-wN`): a worker blocked in epoll_wait or
# io_uring_enter switches once each time it is woken (involuntary switches
# are preemptions by other processes, not wakes). The connections come from
# `ringws-load idle` (target/release/ringws-load), which spreads them over
# source addresses in 127.0.0.0/8 and over processes above the open-file limit.
#
# Knobs: RINGWS_BIN (target/release/ringws), LOAD_BIN
# (target/release/ringws-load), IOS ("epoll uring"), WORKERS (2), WINDOW
# seconds (60), CONNS (15000), PORT (19400), SERVER_CPU (0), LOAD_CPU (1),
# EXTRA (more server flags).
set -euo pipefail
cd "$(dirname "$0")/.."

RINGWS_BIN="${RINGWS_BIN:-target/release/ringws}"
LOAD_BIN="${LOAD_BIN:-target/release/ringws-load}"
IOS="${IOS:-epoll uring}"
WORKERS="${WORKERS:-2}"
WINDOW="${WINDOW:-60}"
CONNS="${CONNS:-15000}"
PORT="${PORT:-19400}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
EXTRA="${EXTRA:-}"

for bin in "$RINGWS_BIN" "$LOAD_BIN"; do
    [ -x "$bin" ] || { echo "$bin not found: cargo build --release" >&2; exit 2; }
done

server=""
load=""
cleanup() {
    [ -n "$load" ] && kill "$load" 2>/dev/null || true
    [ -n "$server" ] && kill -KILL "$server" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Nanoseconds on a CPU, summed over the threads of $1.
cpu_ns() {
    local sum=0 f
    for f in /proc/"$1"/task/*/schedstat; do
        read -r ns _ <"$f" || continue
        sum=$((sum + ns))
    done
    echo "$sum"
}

# Voluntary context switches of each worker thread of $1, as "name count" lines.
worker_switches() {
    local t
    for t in /proc/"$1"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in
        ringws-w*)
            echo "$(cat "$t/comm") $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"
            ;;
        esac
    done | sort
}

sessions_open() {
    curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" |
        awk '/^ringws_sessions_open / {print $2}'
}

# Measures one window; prints a table row.
measure() { # label
    local c0 c1 w0 w1
    c0=$(cpu_ns "$server")
    w0=$(worker_switches "$server")
    sleep "$WINDOW"
    c1=$(cpu_ns "$server")
    w1=$(worker_switches "$server")
    local wakes
    wakes=$(join <(echo "$w0") <(echo "$w1") |
        awk -v s="$WINDOW" '{printf "%s%s %.2f/s", sep, $1, ($3 - $2) / s; sep = ", "}')
    awk -v l="$1" -v ns=$((c1 - c0)) -v s="$WINDOW" -v w="$wakes" 'BEGIN {
        printf "| %s | %.2f ms | %.4f %% | %s |\n", l, ns / 1e6, ns / 1e7 / s, w }'
}

echo "ringws idle cost: $RINGWS_BIN, $WORKERS workers, ${WINDOW}s windows, $(date -u +%FT%TZ)"
echo
echo "| backend, connections | server CPU in the window | of one core | worker wakes |"
echo "|---|---|---|---|"
for io in $IOS; do
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPU" "$RINGWS_BIN" --bind 127.0.0.1 --port "$PORT" --io "$io" \
        --workers "$WORKERS" $EXTRA >/tmp/ringws-idle-$$.log 2>&1 &
    server=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz" && break
        sleep 0.1
    done
    sleep 2
    measure "$io, 0"
    taskset -c "$LOAD_CPU" "$LOAD_BIN" idle --url "ws://127.0.0.1:$PORT/ws" -c "$CONNS" \
        --hold "$((WINDOW + 60))s" >/tmp/ringws-idle-load-$$.log 2>&1 &
    load=$!
    for _ in $(seq 600); do
        [ "$(sessions_open)" = "$CONNS" ] && break
        sleep 0.5
    done
    [ "$(sessions_open)" = "$CONNS" ] || { echo "only $(sessions_open) of $CONNS sessions opened" >&2; exit 1; }
    # Let the housekeeping reclaim the buffers of the warm-up echoes and slow down.
    sleep 3
    measure "$io, $CONNS idle"
    kill "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    load=""
    kill -KILL "$server"
    wait "$server" 2>/dev/null || true
    server=""
    rm -f /tmp/ringws-idle-$$.log /tmp/ringws-idle-load-$$.log
done
