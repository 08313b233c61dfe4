#!/usr/bin/env bash
# permessage-deflate (RFC 7692): what compression costs the server per
# message and saves on the wire, ringws (--deflate off / shared / dedicated) beside
# uWebSockets (off, shared compressor, 3 KB dedicated compressor), and the
# memory an idle connection costs with compression agreed.
#
#   benches/deflate.sh                                   # ringws only
#   UWS_ECHO=/tmp/uws/echo-server UWS_SHARED=/tmp/uws-deflate/echo-shared \
#   UWS_DEDICATED=/tmp/uws-deflate/echo-dedicated benches/deflate.sh
#   RINGWS_BIN=/tmp/deflate-bins/ringws LOAD_BIN=/tmp/deflate-bins/ringws-load \
#       SEND_BIN=/tmp/deflate-bins/send_echo benches/deflate.sh   # fixed binaries, no build
#
# Load: `ringws-load echo --deflate --payload json`, the same for every
# server: each connection offers permessage-deflate as Chromium does
# ("permessage-deflate; client_max_window_bits") and sends ~1 KiB JSON chat
# messages (exactly SIZE bytes: sequence number, type, room, user, timestamp,
# and text of words drawn from a fixed ~300-word vocabulary with a seed per
# connection, so every message differs and every server gets the same ones),
# compressed by the client at zlib level 6 (Chromium's) when the server
# agrees, with or without context takeover as the server's answer says. A
# server that declines (the "off" ones) gets and returns them uncompressed.
# Every echo is inflated when it comes compressed and checked byte for byte.
# The figures: the server's CPU time (utime + stime over the measured
# window) per echoed message, and the frame bytes on the wire per message
# each way (headers and mask included): client → server is what the
# client's compressor made of the message, server → client what the server
# sent back (ringws' echo in place returns the client's compressed bytes as
# they came; uWebSockets inflates and compresses again).
#
# Servers (SERVERS, default all available):
#   ringws-off     RINGWS_BIN --workers 1 --io epoll (declines the offer)
#   ringws-shared  the same with --deflate shared (answers
#                  server_no_context_takeover; client_no_context_takeover)
#   ringws-dedicated  the same with --deflate dedicated (answers
#                  client_no_context_takeover: the server keeps context)
#   ringws-copy-shared, ringws-copy-dedicated  SEND_BIN (examples/send_echo:
#                  each message answered with a copy the handler sends, so
#                  the server inflates it and compresses the copy, as
#                  uWebSockets does) with --deflate shared / dedicated
#   NAME@N         a ringws server above with --deflate-level N (default 1),
#                  e.g. ringws-copy-shared@6; NAME@N/W also with
#                  --deflate-window W, e.g. ringws-copy-dedicated@1/1KiB
#   uws-off        UWS_ECHO: uWebSockets echo, compression DISABLED
#   uws-shared     UWS_SHARED: SHARED_COMPRESSOR | SHARED_DECOMPRESSOR,
#                  echoing with send(msg, op, true)
#   uws-dedicated  UWS_DEDICATED: DEDICATED_COMPRESSOR_3KB |
#                  SHARED_DECOMPRESSOR, echoing with send(msg, op, true)
# The uWebSockets servers take their port as their only argument and listen
# on 127.0.0.1; this script never builds them (/tmp/uws-deflate/README.txt).
#
# Method (as benches/fanout.sh): each run gets a fresh server pinned to
# SERVER_CPU and the load generator pinned to LOAD_CPU; the servers
# alternate within each round; the table gives the medians of the rounds
# (user and sys medians taken separately) and the range of the totals.
# Before each run the script waits (up to QUIET_MAX s) until the machine is
# less than QUIET_PCT % busy; runs during which other processes still used
# more than 10 % of a core are counted as noisy in the table.
#
# Idle (IDLE=1): IDLE_CONNS connections opened in IDLE_STEPS steps, each
# echoing one SIZE-byte JSON message with --deflate (the client's zlib
# state is dropped once it has echoed; only the socket is held), server RSS
# sampled after each step; the slope of RSS against connections (least
# squares) is the memory each further connection costs, and ΔRSS / N is
# given beside it. Servers IDLE_SERVERS (default ringws-off ringws-shared
# ringws-dedicated uws-shared uws-dedicated, those available), once, after
# the rounds.
#
# Knobs (environment): ROUNDS (5), DURATION seconds per window (5), WARMUP
# seconds (1), SCENARIOS (space-separated NxSIZE[kK]: N connections, SIZE
# bytes per JSON message as ringws-load takes it, K in flight, default 1;
# default "10x1KiB"), SERVERS, LEVEL (the client's zlib level, 6), IDLE (1),
# IDLE_CONNS (15000), IDLE_STEPS (5), IDLE_HOLD seconds (2), IDLE_SIZE
# (1KiB), IDLE_SERVERS, SERVER_CPU (0), LOAD_CPU (1), PORT_BASE (19800),
# QUIET_PCT (10), QUIET_MAX seconds (120), RINGWS_BIN (target/release/ringws)
# LOAD_BIN (target/release/ringws-load) and SEND_BIN
# (target/release/examples/send_echo): point them at copies (e.g. in
# /tmp/deflate-bins) so that a build elsewhere cannot change what is
# measured mid-run; BUILD (1 when none of the three is set: cargo build
# --release -p ringws -p ringws-load --bins --example send_echo first; else 0),
# UWS_ECHO / UWS_SHARED / UWS_DEDICATED (the uWebSockets binaries),
# MIMALLOC_ALLOW_THP (0, as in compare.sh: ringws uses mimalloc).
#
# Output: the table on stdout and in target/deflate/table.md; one JSON
# object per run in target/deflate/results.jsonl; the load generator's human
# tables in target/deflate/load.log; server output in
# target/deflate/servers.log. Loopback only; ports below 32768 (with the
# default PORT_BASE); everything this script starts is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=deflate.sh
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

if [[ -z "${BUILD:-}" ]]; then
    BUILD=1
    [[ -n "${RINGWS_BIN:-}${LOAD_BIN:-}${SEND_BIN:-}" ]] && BUILD=0
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-"10x1KiB"}
LEVEL=${LEVEL:-6}
IDLE=${IDLE:-1}
IDLE_CONNS=${IDLE_CONNS:-15000}
IDLE_STEPS=${IDLE_STEPS:-5}
IDLE_HOLD=${IDLE_HOLD:-2}
IDLE_SIZE=${IDLE_SIZE:-1KiB}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-19800}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-120}
RINGWS_BIN=${RINGWS_BIN:-$ROOT/target/release/ringws}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/ringws-load}
SEND_BIN=${SEND_BIN:-$ROOT/target/release/examples/send_echo}
UWS_ECHO=${UWS_ECHO:-}
UWS_SHARED=${UWS_SHARED:-}
UWS_DEDICATED=${UWS_DEDICATED:-}
export MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0}

# Which servers can run: ringws always, uWebSockets where a binary is given.
AVAILABLE="ringws-off ringws-shared ringws-dedicated ringws-copy-shared ringws-copy-dedicated"
[[ -n "$UWS_ECHO" ]] && AVAILABLE="$AVAILABLE uws-off"
[[ -n "$UWS_SHARED" ]] && AVAILABLE="$AVAILABLE uws-shared"
[[ -n "$UWS_DEDICATED" ]] && AVAILABLE="$AVAILABLE uws-dedicated"
SERVERS=${SERVERS:-$AVAILABLE}
if [[ -z "${IDLE_SERVERS:-}" ]]; then
    IDLE_SERVERS=
    for s in ringws-off ringws-shared ringws-dedicated uws-shared uws-dedicated; do
        [[ " $AVAILABLE " == *" $s "* ]] && IDLE_SERVERS="$IDLE_SERVERS $s"
    done
fi

OUT=$ROOT/target/deflate
RESULTS=$OUT/results.jsonl
TABLE=$OUT/table.md
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
trap 'echo "deflate.sh: interrupted" >&2; exit 130' INT TERM


for tool in taskset timeout awk sha256sum; do
    command -v "$tool" >/dev/null || { log "deflate.sh: $tool is required"; exit 1; }
done
if [[ $(nproc) -lt 2 ]]; then
    log "deflate.sh: fewer than 2 CPUs available; server and load generator share CPU $SERVER_CPU"
    LOAD_CPU=$SERVER_CPU
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "$BUILD" == 1 ]]; then
    log "== building (release)"
    cargo build --release -p ringws -p ringws-load --bins --example send_echo >&2
fi
for bin in "$RINGWS_BIN" "$LOAD_BIN" "$SEND_BIN"; do
    [[ -x "$bin" ]] || { log "deflate.sh: $bin missing (BUILD=1 builds it)"; exit 1; }
done

server_bin() { # name
    case ${1%@*} in
        ringws-off | ringws-shared | ringws-dedicated) echo "$RINGWS_BIN" ;;
        ringws-copy-shared | ringws-copy-dedicated) echo "$SEND_BIN" ;;
        uws-off) echo "$UWS_ECHO" ;;
        uws-shared) echo "$UWS_SHARED" ;;
        uws-dedicated) echo "$UWS_DEDICATED" ;;
        *) log "deflate.sh: unknown server $1"; return 1 ;;
    esac
}
for server in $SERVERS $IDLE_SERVERS; do
    bin=$(server_bin "$server")
    [[ -x "$bin" ]] || { log "deflate.sh: $server: ${bin:-no binary} is not an executable"; exit 1; }
done

server_cmd() { # name port
    local ringws="--bind 127.0.0.1 --port $2 --workers 1 --io epoll --drain-timeout 1s"
    # A ringws server named NAME@N compresses at --deflate-level N, and one
    # named NAME@N/W keeps a --deflate-window of W too.
    if [[ $1 == *@* ]]; then
        local spec=${1##*@}
        ringws="$ringws --deflate-level ${spec%%/*}"
        [[ $spec == */* ]] && ringws="$ringws --deflate-window ${spec#*/}"
    fi
    case ${1%@*} in
        ringws-off) echo "$RINGWS_BIN $ringws" ;;
        ringws-shared) echo "$RINGWS_BIN $ringws --deflate shared" ;;
        ringws-dedicated) echo "$RINGWS_BIN $ringws --deflate dedicated" ;;
        ringws-copy-shared) echo "$SEND_BIN $ringws --deflate shared" ;;
        ringws-copy-dedicated) echo "$SEND_BIN $ringws --deflate dedicated" ;;
        *) echo "$(server_bin "$1") $2" ;;
    esac
}

PORT=$PORT_BASE

# Starts server $1 pinned to SERVER_CPU on a fresh port and waits until it
# listens; sets SERVER_PID and PORT.
start_server() {
    local name=$1 cmd i
    next_port || return 1
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
    log "deflate.sh: $name did not listen on port $PORT within 5 s"
    stop_server
    return 1
}

# Stops the server: SIGTERM, then SIGKILL after 5 s.
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
    local server=$1 scenario=$2 limit=$3 mode=$4 rc=0 line
    shift 4
    wait_quiet
    echo "--- $server $scenario: ringws-load $mode $*" >>"$OUT/load.log"
    timeout --kill-after=5 "$limit" taskset -c "$LOAD_CPU" "$LOAD_BIN" "$mode" "$@" \
        --deflate --deflate-level "$LEVEL" --payload json \
        --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID" --json \
        --server-name "$server" --scenario "$scenario" \
        >"$OUT/last.json" 2>>"$OUT/load.log" &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    line=$(cat "$OUT/last.json" 2>/dev/null || true)
    [[ -n "$line" ]] && echo "$line" >>"$RESULTS"
    if [[ $rc -ne 0 ]]; then
        FAILED+=("$server $scenario (exit $rc)")
        log "   $server: FAILED (exit $rc; see target/deflate/load.log)"
    elif [[ $mode == idle ]]; then
        log "   $server: $(field "$line" rss_slope_bytes_per_conn) B/conn (slope), $(field "$line" bytes_per_conn) B/conn (ΔRSS/N), deflate on $(field "$line" deflate_conns) conns"
    else
        log "   $server: $(field "$line" server_cpu_ns_per_msg) ns CPU/msg, wire $(field "$line" wire_tx_bytes_per_msg) B → / $(field "$line" wire_rx_bytes_per_msg) B ←, $(field "$line" msgs_per_s) msgs/s, other $(field "$line" other_cpu_pct) %"
    fi
}

ECHO_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 60 }')

run_scenario() { # server scenario
    local server=$1 sc=$2 conns size inflight=1
    if [[ ! $sc =~ ^([0-9]+)x([0-9]+[A-Za-z]*)(k([0-9]+))?$ ]]; then
        log "deflate.sh: bad scenario $sc (want NxSIZE or NxSIZEkK)"
        exit 2
    fi
    conns=${BASH_REMATCH[1]}
    size=${BASH_REMATCH[2]}
    [[ -n "${BASH_REMATCH[4]}" ]] && inflight=${BASH_REMATCH[4]}
    run_load "$server" "$sc" "$ECHO_LIMIT" echo -c "$conns" -s "$size" -k "$inflight" \
        --duration "$DURATION" --warmup "$WARMUP"
}

declare -A UNAVAILABLE=()
START=$(date +%s)
for round in $(seq "$ROUNDS"); do
    for sc in $SCENARIOS; do
        log "== round $round/$ROUNDS: $sc"
        for server in $SERVERS; do
            [[ -z "${UNAVAILABLE[$server]:-}" ]] || continue
            if ! start_server "$server"; then
                log "   $server: did not start; see target/deflate/servers.log"
                UNAVAILABLE[$server]=1
                FAILED+=("$server (did not start)")
                continue
            fi
            run_scenario "$server" "$sc"
            stop_server
        done
    done
done

if [[ "$IDLE" == 1 && -n "${IDLE_SERVERS// /}" ]]; then
    IDLE_LIMIT=$(awk -v h="$IDLE_HOLD" -v s="$IDLE_STEPS" 'BEGIN { printf "%d", 120 + h * s + 60 }')
    log "== idle: $IDLE_CONNS connections, one $IDLE_SIZE JSON echo each with --deflate ($IDLE_STEPS steps)"
    for server in $IDLE_SERVERS; do
        start_server "$server" || { FAILED+=("$server idle (did not start)"); continue; }
        run_load "$server" "idle$IDLE_CONNS" "$IDLE_LIMIT" idle -c "$IDLE_CONNS" -s "$IDLE_SIZE" \
            --steps "$IDLE_STEPS" --hold "$IDLE_HOLD" --duration 60
        stop_server
    done
fi

# Tab-separated: kind server scenario then, for kind "echo": cpu user sys
# msgs/s wire_tx wire_rx deflate_conns noisy ok; for kind "idle": slope
# bytes/conn r2 deflate_conns ok.
rows() {
    local line mode sv sc ok noisy o
    while IFS= read -r line; do
        mode=$(sfield "$line" mode)
        sv=$(sfield "$line" server)
        sc=$(sfield "$line" scenario)
        ok=0; [[ $line == *'"ok":true'* ]] && ok=1
        o=$(field "$line" other_cpu_pct); noisy=0
        [[ -n "$o" ]] && awk -v o="$o" 'BEGIN { exit !(o > 10) }' && noisy=1
        if [[ $mode == echo ]]; then
            printf 'echo\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sv" "$sc" \
                "$(field "$line" server_cpu_ns_per_msg)" "$(field "$line" server_user_ns_per_msg)" \
                "$(field "$line" server_sys_ns_per_msg)" "$(field "$line" msgs_per_s)" \
                "$(field "$line" wire_tx_bytes_per_msg)" "$(field "$line" wire_rx_bytes_per_msg)" \
                "$(field "$line" deflate_conns)" "$noisy" "$ok"
        elif [[ $mode == idle ]]; then
            printf 'idle\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sv" "$sc" \
                "$(field "$line" rss_slope_bytes_per_conn)" "$(field "$line" bytes_per_conn)" \
                "$(field "$line" rss_fit_r2)" "$(field "$line" deflate_conns)" "$ok"
        fi
    done <"$RESULTS"
}

# The first answer each server gave (null: declined).
answers() {
    local sv
    for sv in $(printf '%s\n' $SERVERS $IDLE_SERVERS | awk '!seen[$0]++'); do
        local line answer
        line=$(grep -F "\"server\":\"$sv\"" "$RESULTS" | head -n 1 || true)
        [[ -n "$line" ]] || continue
        answer=$(sfield "$line" deflate_answer)
        if [[ -n "$answer" ]]; then
            echo "- $sv: \`$answer\`"
        else
            echo "- $sv: declined (no Sec-WebSocket-Extensions in the 101)"
        fi
    done
}

short_sha() { sha256sum "$1" | cut -c1-12; }

{
    echo "## permessage-deflate: server CPU and bytes on the wire ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) CPUs: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))"
    echo
    echo "Servers pinned to CPU $SERVER_CPU (ringws --workers 1 --io epoll; uWebSockets one thread), \`ringws-load echo --deflate --payload json\` on CPU $LOAD_CPU; $ROUNDS round(s), ${DURATION} s windows after ${WARMUP} s warm-up; fresh server per run, servers alternating within each round; MIMALLOC_ALLOW_THP=$MIMALLOC_ALLOW_THP. Scenario NxSIZE[kK]: N connections, SIZE-byte JSON chat messages (every message different; the same ones for every server), K in flight (default 1). The client offers \`permessage-deflate; client_max_window_bits\` (Chromium's offer) and compresses at zlib level $LEVEL when the server agrees. CPU: median over the rounds of server CPU ns per echoed message (user / sys medians taken separately), range of the totals. Wire: frame bytes (headers and mask included) per message, median over the rounds; uncompressed, a 1 KiB message is a 1032-byte frame from the client (masked) and 1028 bytes back. Binaries: ringws \`$RINGWS_BIN\` (sha256 $(short_sha "$RINGWS_BIN")), ringws-load \`$LOAD_BIN\` (sha256 $(short_sha "$LOAD_BIN")); repository at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'). Command: \`ROUNDS=$ROUNDS DURATION=$DURATION SCENARIOS=\"$SCENARIOS\" SERVERS=\"$SERVERS\"${UWS_ECHO:+ UWS_ECHO=$UWS_ECHO}${UWS_SHARED:+ UWS_SHARED=$UWS_SHARED}${UWS_DEDICATED:+ UWS_DEDICATED=$UWS_DEDICATED} benches/deflate.sh\`."
    echo
    rows | awk -F'\t' -v servers="$SERVERS" "$AWK_STATS"'
        $1 == "echo" {
            k = $3 SUBSEP $2
            if (!(($3) in seen)) { seen[$3] = 1; order[++ns] = $3 }
            runs[k]++
            if ($4 != "") { cpu[k] = cpu[k] " " $4; usr[k] = usr[k] " " $5; sys[k] = sys[k] " " $6; mps[k] = mps[k] " " $7 }
            if ($8 != "") { wtx[k] = wtx[k] " " $8; wrx[k] = wrx[k] " " $9 }
            dfl[k] = $10
            noisy[k] += $11; bad[k] += ($12 == 0)
        }
        END {
            nsv = split(servers, sv, " ")
            print "| scenario | server | deflate | CPU ns / msg (user / sys), median | range | × ringws-off | wire B / msg client → server | server → client | msgs/s | runs |"
            print "|---|---|---|---|---|---|---|---|---|---|"
            for (i = 1; i <= ns; i++) {
                sc = order[i]
                base = median(cpu[sc SUBSEP "ringws-off"])
                for (j = 1; j <= nsv; j++) {
                    k = sc SUBSEP sv[j]
                    if (!runs[k]) continue
                    c = median(cpu[k])
                    ratio = (base != "" && c != "" && base > 0) ? sprintf("%.2f×", c / base) : "–"
                    flag = ""
                    if (noisy[k]) flag = flag sprintf(" ⚠ %d noisy", noisy[k])
                    if (bad[k]) flag = flag sprintf(" ⚠ %d failed", bad[k])
                    printf "| %s | %s | %s | %s (%s / %s) | %s | %s | %s | %s | %s | %d%s |\n", sc, sv[j],
                        (dfl[k] + 0 > 0) ? "agreed" : "declined",
                        num(c), num(median(usr[k])), num(median(sys[k])), minmax(cpu[k]), ratio,
                        num(median(wtx[k])), num(median(wrx[k])), num(median(mps[k])), runs[k], flag
                }
            }
        }'
    echo
    echo "What each server answered to the offer:"
    echo
    answers
    if [[ "$IDLE" == 1 && -n "${IDLE_SERVERS// /}" ]]; then
        echo
        echo "Idle: \`ringws-load idle --deflate --payload json -s $IDLE_SIZE -c $IDLE_CONNS --steps $IDLE_STEPS --hold $IDLE_HOLD\` (connections opened in $IDLE_STEPS steps, each echoing one JSON message, compressed where agreed; slope of server RSS against connections by least squares, and ΔRSS / N)."
        echo
        echo "| server | deflate on | RSS slope / conn | ΔRSS / conn | R² | ok |"
        echo "|---|---|---|---|---|---|"
        rows | awk -F'\t' '$1 == "idle" { printf "| %s | %s conns | %.0f B | %.0f B | %.4f | %s |\n", $2, $7 == "" ? "–" : $7, $4, $5, $6, $8 ? "yes" : "NO" }'
    fi
} >"$TABLE"
cat "$TABLE"
log "deflate.sh: done in $(($(date +%s) - START)) s; raw results in target/deflate/results.jsonl, table in target/deflate/table.md"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    log "deflate.sh: ${#FAILED[@]} run(s) failed:"
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
