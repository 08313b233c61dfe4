#!/usr/bin/env bash
# Side-by-side comparison of ringws (io_uring and epoll backends) with two
# baselines built from upstream crates (benches/baselines/): fastwebsockets on
# hyper and tokio-tungstenite, both on a tokio current-thread runtime.
#
#   benches/compare.sh              # full run: 2 rounds, 6 s windows, idle at 15,000
#   QUICK=1 benches/compare.sh      # smoke run: 1 round, 2 s windows, idle at 1,000
#
# Each server runs pinned to one CPU (SERVER_CPU, default 0; ringws with
# --workers 1) and the load generator to another (LOAD_CPU, default 1). Every
# scenario gets a fresh server process, the servers alternate within a round,
# and the table shows the best of the rounds per server and scenario, as
# ratios to the fastwebsockets baseline (from ROUNDS=3 on, the medians of the
# rounds too: on a noisy machine the best round is partly luck). The figure
# that matters is the server's CPU time per message (utime + stime from
# /proc/PID/stat over the measured window); throughput is shown beside it but mostly measures the
# client on a two-core machine.
#
# Knobs (environment): ROUNDS (2), DURATION seconds per window (6), WARMUP
# seconds (1), IDLE_CONNS (15000), IDLE_HOLD seconds (3), CHURN_CONNS (10),
# SERVERS (space-separated subset of: ringws-uring ringws-epoll fws-echo
# tungstenite-echo), SCENARIOS (subset of: 100x20B 200x16KiB 10x1KiB idle churn
# rate), SERVER_CPU (0), LOAD_CPU (1), PORT_BASE (19200), QUICK=1,
# QUIET_PCT (10) and QUIET_MAX seconds (300; QUICK: 10): before each run the
# script waits, up to QUIET_MAX, until the machine is less than QUIET_PCT %
# busy, since a compile running beside a benchmark ruins it. Runs that still
# shared the machine are flagged in the table (other processes > 10 % of a
# core during the window). MIMALLOC_ALLOW_THP (0): all four servers use
# mimalloc, which by default backs its arenas with transparent huge pages
# where THP is in "madvise" mode; RSS then grows in 2 MiB steps (±2 KB per
# connection at 1,000 connections) and a baseline that touches part of each
# 8 KiB buffer is charged the whole of it (fastwebsockets: ~9.5 KB per idle
# connection with THP, ~5.4 KB without). The default, 0, turns THP off in the
# servers for a fine-grained, reproducible figure (ringws turns it off itself
# unless the variable is set); set MIMALLOC_ALLOW_THP=1 to measure with it.
# EXTERNAL: more servers to put beside these, built however you like, as
# newline- or ';'-separated NAME=COMMAND entries where COMMAND contains {port}
# and the server listens on 127.0.0.1:{port} with a WebSocket echo on /ws;
# e.g. EXTERNAL='uws=/opt/uws/echo-server {port}'. Each NAME joins SERVERS.
# ANY_REPLY: space-separated server names whose answers are messages of their
# own rather than echoes (ringws-load echo --any-reply), e.g. the counter
# example: EXTERNAL='counter=target/release/examples/counter --io epoll
# --workers 1 --bind 127.0.0.1 --port {port}' ANY_REPLY=counter (run it with
# SCENARIOS="100x20B 200x16KiB 10x1KiB": the other scenarios check echoes).
#
# Output: the table on stdout and in target/compare/table.md; one JSON object
# per run in target/compare/results.jsonl; the load generator's human tables
# in target/compare/load.log; server output in target/compare/servers.log.
# Loopback only. Every step is bounded by a timeout, and everything this
# script starts is stopped on exit (also on Ctrl-C).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=compare.sh
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

if [[ "${QUICK:-0}" == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-0.5}
    IDLE_CONNS=${IDLE_CONNS:-1000}
    IDLE_HOLD=${IDLE_HOLD:-1}
    QUIET_MAX=${QUIET_MAX:-10}
fi
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-1}
IDLE_CONNS=${IDLE_CONNS:-15000}
IDLE_HOLD=${IDLE_HOLD:-3}
CHURN_CONNS=${CHURN_CONNS:-10}
SERVERS=${SERVERS:-"ringws-uring ringws-epoll fws-echo tungstenite-echo"}
SERVER_CPU=${SERVER_CPU:-0}
declare -A EXTERNAL_CMD=()
while IFS= read -r entry; do
    [[ -z "${entry// /}" ]] && continue
    if [[ "$entry" != *=*'{port}'* ]]; then
        echo "compare.sh: EXTERNAL entry needs NAME=COMMAND with {port}: $entry" >&2
        exit 2
    fi
    name=${entry%%=*}; name=${name// /}
    EXTERNAL_CMD[$name]=${entry#*=}
    SERVERS="$SERVERS $name"
done < <(tr ';' '\n' <<<"${EXTERNAL:-}")
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-19200}
export MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-300}
BASELINE=fws-echo

OUT=$ROOT/target/compare
RESULTS=$OUT/results.jsonl
TABLE=$OUT/table.md
LOAD=$ROOT/target/release/ringws-load
mkdir -p "$OUT"
: >"$RESULTS"
: >"$OUT/load.log"
: >"$OUT/servers.log"

SERVER_PID=
LOAD_PID=
cleanup() {
    local pid
    for pid in $LOAD_PID $SERVER_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT TERM


for tool in taskset timeout cargo; do
    command -v "$tool" >/dev/null || { log "compare.sh: $tool is required"; exit 1; }
done
if [[ $(nproc) -lt 2 ]]; then
    log "compare.sh: fewer than 2 CPUs available; server and load generator share CPU $SERVER_CPU"
    LOAD_CPU=$SERVER_CPU
fi
# Servers and load generator inherit the highest open-file limit allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "== building (release)"
cargo build --release -p ringws -p ringws-load >&2
cargo build --release --manifest-path benches/baselines/Cargo.toml >&2

server_cmd() { # name port
    case $1 in
        ringws-uring) echo "$ROOT/target/release/ringws --bind 127.0.0.1 --port $2 --workers 1 --io uring --drain-timeout 1s" ;;
        ringws-epoll) echo "$ROOT/target/release/ringws --bind 127.0.0.1 --port $2 --workers 1 --io epoll --drain-timeout 1s" ;;
        fws-echo) echo "$ROOT/benches/baselines/target/release/fws-echo --port $2" ;;
        tungstenite-echo) echo "$ROOT/benches/baselines/target/release/tungstenite-echo --port $2" ;;
        *)
            if [[ -n "${EXTERNAL_CMD[$1]:-}" ]]; then
                echo "${EXTERNAL_CMD[$1]//\{port\}/$2}"
            else
                log "compare.sh: unknown server $1"; return 1
            fi ;;
    esac
}

PORT=$PORT_BASE
declare -A UNAVAILABLE=()

# Starts server $1 pinned to SERVER_CPU on a fresh port; sets SERVER_PID, PORT.
start_server() {
    local name=$1 cmd i
    PORT=$((PORT + 1))
    cmd=$(server_cmd "$name" "$PORT")
    echo "--- $name on port $PORT: $cmd" >>"$OUT/servers.log"
    # shellcheck disable=SC2086 # the command is split into words on purpose
    taskset -c "$SERVER_CPU" $cmd >>"$OUT/servers.log" 2>&1 &
    SERVER_PID=$!
    for i in $(seq 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            sleep 0.2
            return 0
        fi
        sleep 0.05
    done
    log "compare.sh: $name did not listen on port $PORT within 5 s"
    stop_server
    return 1
}

stop_server() {
    local i
    [[ -n "$SERVER_PID" ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

FAILED=()

# run_load SERVER SCENARIO TIME_LIMIT MODE ARGS...: one load run against the
# running server, its JSON line appended to results.jsonl.
run_load() {
    local server=$1 scenario=$2 limit=$3 mode=$4 rc=0
    shift 4
    # Servers in ANY_REPLY answer with messages of their own, not echoes.
    if [[ "$mode" == echo && " ${ANY_REPLY:-} " == *" $server "* ]]; then
        set -- "$@" --any-reply
    fi
    wait_quiet
    echo "--- $server $scenario: ringws-load $mode $*" >>"$OUT/load.log"
    timeout --kill-after=5 "$limit" taskset -c "$LOAD_CPU" "$LOAD" "$mode" "$@" \
        --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID" --json \
        --server-name "$server" --scenario "$scenario" \
        >"$OUT/last.json" 2>>"$OUT/load.log" &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    if [[ -s "$OUT/last.json" ]]; then
        cat "$OUT/last.json" >>"$RESULTS"
    fi
    if [[ $rc -ne 0 ]]; then
        FAILED+=("$server $scenario (exit $rc)")
        log "   $server: FAILED (exit $rc; see target/compare/load.log)"
    else
        log "   $server: $(summary_of "$OUT/last.json")"
    fi
}

# A few figures from a JSON line, for the progress log.
summary_of() {
    local line
    line=$(cat "$1")
    field() { sed -n "s/.*\"$1\":\(-\{0,1\}[0-9]*\)\(\.[0-9]*\)\{0,1\}[,}].*/\1/p" <<<"$line"; }
    local cpu msgs bpc hs hsps p99
    cpu=$(field server_cpu_ns_per_msg)
    msgs=$(field msgs_per_s)
    bpc=$(field bytes_per_conn)
    hs=$(field server_cpu_us_per_handshake)
    hsps=$(field handshakes_per_s)
    p99=$(sed -n 's/.*"lat_us":{[^}]*"p99":\([0-9]*\).*/\1/p' <<<"$line")
    if [[ -n "$bpc" ]]; then
        echo "${bpc} B/conn"
    elif [[ -n "$hs" ]]; then
        echo "${hs} µs CPU/handshake, ${hsps} handshakes/s"
    else
        echo "${cpu:-?} ns CPU/msg, ${msgs:-?} msgs/s, p99 ${p99:-?} µs"
    fi
}

# Highest msgs/s measured so far for server $1 in the 100x20B scenario.
max_rate() {
    grep -F "\"server\":\"$1\"" "$RESULTS" | grep -F '"scenario":"100x20B"' |
        sed -n 's/.*"msgs_per_s":\([0-9.]*\).*/\1/p' | sort -g | tail -n 1
}

ECHO_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 30 }')
IDLE_LIMIT=$(awk -v h="$IDLE_HOLD" 'BEGIN { printf "%d", 60 + h + 60 }')
SCENARIOS=${SCENARIOS:-"100x20B 200x16KiB 10x1KiB idle churn rate"}

run_scenario() { # server scenario
    local server=$1 scenario=$2 rate
    local common=(--duration "$DURATION" --warmup "$WARMUP")
    case $scenario in
        100x20B) run_load "$server" 100x20B "$ECHO_LIMIT" echo -c 100 -s 20 -k 1 "${common[@]}" ;;
        200x16KiB) run_load "$server" 200x16KiB "$ECHO_LIMIT" echo -c 200 -s 16384 -k 1 "${common[@]}" ;;
        10x1KiB) run_load "$server" 10x1KiB "$ECHO_LIMIT" echo -c 10 -s 1024 -k 1 "${common[@]}" ;;
        idle) run_load "$server" "idle${IDLE_CONNS}" "$IDLE_LIMIT" idle -c "$IDLE_CONNS" -s 20 \
            --hold "$IDLE_HOLD" --duration 60 ;;
        churn) run_load "$server" churn "$ECHO_LIMIT" churn -c "$CHURN_CONNS" -s 20 "${common[@]}" ;;
        rate)
            rate=$(max_rate "$server")
            if [[ -z "$rate" ]]; then
                log "   $server: rate skipped (no 100x20B figure to take 50 % of)"
                return 0
            fi
            rate=$(awk -v r="$rate" 'BEGIN { printf "%d", r / 2 }')
            run_load "$server" rate50% "$ECHO_LIMIT" rate -c 100 -s 20 --rate "$rate" "${common[@]}"
            ;;
    esac
}

START=$(date +%s)
for round in $(seq "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        log "== round $round/$ROUNDS: $scenario"
        for server in $SERVERS; do
            [[ -z "${UNAVAILABLE[$server]:-}" ]] || continue
            if ! start_server "$server"; then
                if [[ $server == ringws-uring ]]; then
                    log "   ringws-uring: skipped, the server did not start (io_uring unavailable?); see target/compare/servers.log"
                else
                    log "   $server: did not start; see target/compare/servers.log"
                    FAILED+=("$server (did not start)")
                fi
                UNAVAILABLE[$server]=1
                continue
            fi
            run_scenario "$server" "$scenario"
            stop_server
        done
    done
done

{
    echo "## ringws vs baselines ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) CPUs: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))"
    echo
    echo "Server pinned to CPU $SERVER_CPU (ringws --workers 1; baselines on a tokio current-thread runtime), load generator on CPU $LOAD_CPU; $ROUNDS round(s), ${DURATION} s windows after ${WARMUP} s warm-up; 1 message in flight per connection; idle at $IDLE_CONNS connections after one echo each; churn over $CHURN_CONNS loops; rate at 50 % of the server's best 100x20B throughput; servers run with MIMALLOC_ALLOW_THP=$MIMALLOC_ALLOW_THP (THP $(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown) on this kernel), net.ipv4.tcp_congestion_control=$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown). Command: \`${QUICK:+QUICK=$QUICK }ROUNDS=$ROUNDS DURATION=$DURATION benches/compare.sh\`."
    echo
    "$LOAD" report --baseline "$BASELINE" "$RESULTS"
} >"$TABLE"
cat "$TABLE"
log "compare.sh: done in $(($(date +%s) - START)) s; raw results in target/compare/results.jsonl, table in target/compare/table.md"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    log "compare.sh: ${#FAILED[@]} run(s) failed:"
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
