#!/usr/bin/env bash
# Pub/sub fan-out: server CPU per delivered message of ringws' room example
# (epoll and io_uring) beside an optional uWebSockets pub/sub server, and the
# memory an idle subscribed connection costs.
#
#   benches/fanout.sh                                  # ringws only
#   UWS_PUBSUB=/tmp/uws-pubsub/server benches/fanout.sh  # with uWS beside it
#   BACKPLANE=1 SERVERS=ringws-epoll benches/fanout.sh   # with ringws-2proc
#
# Load: `ringws-load fanout`: N listeners subscribed to one topic, one
# publisher keeping WINDOW messages in flight (counted by its own copies);
# every listener checks every message (content, order, no gaps). The figure
# is the server's CPU time (utime + stime over the measured window) per
# delivered message = messages published in the window × (N + 1).
#
# Each run gets a fresh server pinned to SERVER_CPU (ringws with --workers
# 1) and the load generator pinned to LOAD_CPU; the servers alternate within
# each round; the table gives the medians of the rounds. Before each run the
# script waits (up to QUIET_MAX s) until the machine is less than QUIET_PCT %
# busy; runs during which other processes still used more than 10 % of a
# core are counted as noisy in the table.
#
# BACKPLANE=1 adds server "ringws-2proc" to every round: a nats-server and
# two room example processes (--workers 1 --io epoll --backplane
# nats://127.0.0.1:NATSPORT), all three pinned to SERVER_CPU, each on a fresh
# port; the load starts once both report `ringws_backplane_up 1` on
# /metrics. The listeners alternate between the two rooms (ringws-load
# fanout --listen-addr), the publisher is on the first, so half the
# listeners get every message through NATS. Its cost is the CPU of both
# ringws processes per delivered message (same definition as above); the
# broker's CPU is given apart (column "+ broker"), per delivered message and
# per publish. nats-server comes from PATH or /usr/sbin (NATS_BIN to choose;
# tests/nats/install.sh installs it if missing).
#
# UWS_PUBSUB: a uWebSockets server binary equal to the room handler (on
# open: subscribe("room"); on message: publish("room", msg, op) and
# send(msg, op); no compression; maxBackpressure 64 KiB), taking its port as
# its only argument and listening on 127.0.0.1. This script never builds it.
#
# Knobs (environment): ROUNDS (5), DURATION seconds per window (5), WARMUP
# seconds (1), SCENARIOS (space-separated NxSIZE[wWINDOW], default
# "1000x20B 1000x16KiB 1000x20Bw8 1000x16KiBw8"; SIZE as ringws-load takes it,
# e.g. 20B, 16KiB), SERVERS (subset of: ringws-epoll ringws-uring uws;
# default all available), IDLE (1: also run the idle-memory comparison),
# IDLE_CONNS (15000), IDLE_STEPS (5), IDLE_HOLD seconds (2), SERVER_CPU (0),
# LOAD_CPU (1), PORT_BASE (19600), QUIET_PCT (10), QUIET_MAX seconds (120),
# BUILD (1: cargo build the load generator and the examples first; 0: use
# the binaries as they are), ROOM_BIN / ECHO_BIN / LOAD_BIN (the binaries;
# default target/release/examples/room, .../echo, target/release/ringws-load),
# ROOM_ARGS (extra options for the room example, e.g. "--max-backpressure
# 256KiB"; recorded in the table's header), MIMALLOC_ALLOW_THP (0, as in
# compare.sh), BACKPLANE (0), NATS_BIN (nats-server).
#
# Output: the tables on stdout and in target/fanout/table.md; one JSON object
# per run in target/fanout/results.jsonl; the load generator's human tables
# in target/fanout/load.log; server output in target/fanout/servers.log.
# Loopback only; everything this script starts is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=fanout.sh
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-"1000x20B 1000x16KiB 1000x20Bw8 1000x16KiBw8"}
IDLE=${IDLE:-1}
IDLE_CONNS=${IDLE_CONNS:-15000}
IDLE_STEPS=${IDLE_STEPS:-5}
IDLE_HOLD=${IDLE_HOLD:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-19600}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-120}
BUILD=${BUILD:-1}
ROOM_BIN=${ROOM_BIN:-$ROOT/target/release/examples/room}
ECHO_BIN=${ECHO_BIN:-$ROOT/target/release/examples/echo}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/ringws-load}
UWS_PUBSUB=${UWS_PUBSUB:-}
ROOM_ARGS=${ROOM_ARGS:-}
BACKPLANE=${BACKPLANE:-0}
NATS_BIN=${NATS_BIN:-}
export MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0}
if [[ -z "${SERVERS:-}" ]]; then
    SERVERS="ringws-epoll ringws-uring"
    [[ -n "$UWS_PUBSUB" ]] && SERVERS="$SERVERS uws"
fi
if [[ "$BACKPLANE" == 1 && " $SERVERS " != *" ringws-2proc "* ]]; then
    SERVERS="$SERVERS ringws-2proc"
fi

OUT=$ROOT/target/fanout
RESULTS=$OUT/results.jsonl
TABLE=$OUT/table.md
mkdir -p "$OUT"
: >"$RESULTS"
: >"$OUT/load.log"
: >"$OUT/servers.log"

SERVER_PID=   # the server (ringws-2proc: the first room process)
SERVER2_PID=  # ringws-2proc: the second room process
BROKER_PID=   # ringws-2proc: nats-server
LOAD_PID=
cleanup() {
    local pid
    for pid in $LOAD_PID $LAUNCHED $SERVER_PID $SERVER2_PID $BROKER_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'echo "fanout.sh: interrupted" >&2; exit 130' INT TERM


for tool in taskset timeout awk; do
    command -v "$tool" >/dev/null || { log "fanout.sh: $tool is required"; exit 1; }
done
if [[ $(nproc) -lt 2 ]]; then
    log "fanout.sh: fewer than 2 CPUs available; server and load generator share CPU $SERVER_CPU"
    LOAD_CPU=$SERVER_CPU
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "$BUILD" == 1 ]]; then
    log "== building (release)"
    cargo build --release -p ringws-load >&2
    cargo build --release --example room --example echo >&2
fi
for bin in "$ROOM_BIN" "$LOAD_BIN"; do
    [[ -x "$bin" ]] || { log "fanout.sh: $bin missing (BUILD=1 builds it)"; exit 1; }
done
if [[ " $SERVERS " == *" ringws-2proc "* ]]; then
    if [[ -z "$NATS_BIN" ]]; then
        NATS_BIN=$(command -v nats-server || true)
        [[ -z "$NATS_BIN" && -x /usr/sbin/nats-server ]] && NATS_BIN=/usr/sbin/nats-server
        if [[ -z "$NATS_BIN" ]]; then
            log "== installing nats-server (tests/nats/install.sh)"
            bash tests/nats/install.sh >&2
            NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
        fi
    fi
    [[ -x "$NATS_BIN" ]] || { log "fanout.sh: no nats-server ($NATS_BIN) for ringws-2proc"; exit 1; }
fi
if [[ " $SERVERS " == *" uws "* && ! -x "$UWS_PUBSUB" ]]; then
    log "fanout.sh: SERVERS has uws but UWS_PUBSUB ($UWS_PUBSUB) is not an executable"
    exit 1
fi

server_cmd() { # name port [nats port]
    case $1 in
        ringws-epoll | room-epoll) echo "$ROOM_BIN --bind 127.0.0.1 --port $2 --workers 1 --io epoll $ROOM_ARGS" ;;
        ringws-2proc) echo "$ROOM_BIN --bind 127.0.0.1 --port $2 --workers 1 --io epoll --backplane nats://127.0.0.1:$3 $ROOM_ARGS" ;;
        nats) echo "$NATS_BIN -a 127.0.0.1 -p $2" ;;
        ringws-uring) echo "$ROOM_BIN --bind 127.0.0.1 --port $2 --workers 1 --io uring $ROOM_ARGS" ;;
        uws) echo "$UWS_PUBSUB $2" ;;
        echo-epoll) echo "$ECHO_BIN --bind 127.0.0.1 --port $2 --workers 1 --io epoll" ;;
        *) log "fanout.sh: unknown server $1"; return 1 ;;
    esac
}

PORT=$PORT_BASE
PORT2=
declare -A UNAVAILABLE=()

# launch NAME PORT [NATSPORT]: starts one process pinned to SERVER_CPU in the
# background (its PID in LAUNCHED) and waits until it listens on PORT.
LAUNCHED=
launch() {
    local name=$1 port=$2 cmd i
    cmd=$(server_cmd "$name" "$port" "${3:-}")
    echo "--- $name on port $port: $cmd" >>"$OUT/servers.log"
    # shellcheck disable=SC2086 # the command is split into words on purpose
    taskset -c "$SERVER_CPU" $cmd >>"$OUT/servers.log" 2>&1 &
    LAUNCHED=$!
    for i in $(seq 100); do
        if ! kill -0 "$LAUNCHED" 2>/dev/null; then
            wait "$LAUNCHED" 2>/dev/null || true
            LAUNCHED=
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    log "fanout.sh: $name did not listen on port $port within 5 s"
    return 1
}

# GET /metrics from the ringws process on port $1 (HTTP/1.1 over bash's
# /dev/tcp, at most 1 s).
metrics() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
        timeout 1 cat <&3
    ) 2>/dev/null
}

# Waits (up to 10 s) until the ringws process on port $1 is connected to its
# --backplane broker: `ringws_backplane_up 1` in its /metrics.
wait_backplane() {
    local i out
    for i in $(seq 100); do
        # Matched in bash: with pipefail, `grep -q` quitting early could
        # fail the pipeline through SIGPIPE upstream.
        out=$(metrics "$1" | tr -d '\r' || true)
        if [[ $'\n'$out$'\n' == *$'\nringws_backplane_up 1\n'* ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "fanout.sh: the ringws process on port $1 did not connect to NATS within 10 s"
    return 1
}

# Starts server $1 pinned to SERVER_CPU on a fresh port; sets SERVER_PID,
# PORT (ringws-2proc: also BROKER_PID, SERVER2_PID and PORT2, the second
# room process's port; PORT is the first's).
start_server() {
    local name=$1 nats_port
    if [[ $name == ringws-2proc ]]; then
        next_port || return 1
        nats_port=$PORT
        launch nats "$nats_port" || { stop_server; return 1; }
        BROKER_PID=$LAUNCHED
        next_port || { stop_server; return 1; }
        PORT2=$PORT
        launch ringws-2proc "$PORT2" "$nats_port" || { stop_server; return 1; }
        SERVER2_PID=$LAUNCHED
        next_port || { stop_server; return 1; }
        launch ringws-2proc "$PORT" "$nats_port" || { stop_server; return 1; }
        SERVER_PID=$LAUNCHED
        if ! wait_backplane "$PORT" || ! wait_backplane "$PORT2"; then
            stop_server
            return 1
        fi
        echo "--- ringws-2proc: rooms $SERVER_PID (port $PORT, publisher) and $SERVER2_PID (port $PORT2) on nats-server $BROKER_PID (port $nats_port)" >>"$OUT/servers.log"
        sleep 0.2
        return 0
    fi
    next_port || return 1
    launch "$name" "$PORT" || { stop_server; return 1; }
    SERVER_PID=$LAUNCHED
    sleep 0.2
}

# Stops process $1: SIGTERM, then SIGKILL after 5 s.
stop_pid() {
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops what start_server started (a half-started ringws-2proc included),
# the broker last.
stop_server() {
    [[ -n "$LAUNCHED" && "$LAUNCHED" != "$SERVER_PID" && "$LAUNCHED" != "$SERVER2_PID" &&
        "$LAUNCHED" != "$BROKER_PID" ]] && stop_pid "$LAUNCHED"
    LAUNCHED=
    stop_pid "$SERVER_PID"
    stop_pid "$SERVER2_PID"
    stop_pid "$BROKER_PID"
    SERVER_PID= SERVER2_PID= BROKER_PID= PORT2=
}

FAILED=()


# run_load SERVER SCENARIO TIME_LIMIT MODE ARGS...: one load run against the
# running server, its JSON line appended to results.jsonl.
run_load() {
    local server=$1 scenario=$2 limit=$3 mode=$4 rc=0 line pids=$SERVER_PID
    shift 4
    if [[ -n "$SERVER2_PID" ]]; then
        # ringws-2proc: listeners over both rooms, both rooms' CPU, the broker's.
        set -- "$@" --listen-addr "127.0.0.1:$PORT2" --broker-pid "$BROKER_PID"
        pids="$SERVER_PID,$SERVER2_PID"
    fi
    wait_quiet
    echo "--- $server $scenario: ringws-load $mode $*" >>"$OUT/load.log"
    timeout --kill-after=5 "$limit" taskset -c "$LOAD_CPU" "$LOAD_BIN" "$mode" "$@" \
        --addr "127.0.0.1:$PORT" --server-pid "$pids" --json \
        --server-name "$server" --scenario "$scenario" \
        >"$OUT/last.json" 2>>"$OUT/load.log" &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    line=$(cat "$OUT/last.json" 2>/dev/null || true)
    [[ -n "$line" ]] && echo "$line" >>"$RESULTS"
    if [[ $rc -ne 0 ]]; then
        FAILED+=("$server $scenario (exit $rc)")
        log "   $server: FAILED (exit $rc; see target/fanout/load.log)"
    elif [[ $mode == idle ]]; then
        log "   $server: $(field "$line" rss_slope_bytes_per_conn) B/conn (slope), $(field "$line" bytes_per_conn) B/conn (ΔRSS/N)"
    else
        local broker
        broker=$(field "$line" broker_cpu_ns_per_msg)
        log "   $server: $(field "$line" server_cpu_ns_per_msg) ns CPU/delivery${broker:+ (+ $broker ns broker)}, $(field "$line" published_per_s) publishes/s, other $(field "$line" other_cpu_pct) %"
    fi
}

FANOUT_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 60 }')

run_scenario() { # server scenario
    local server=$1 sc=$2 conns size window=1
    if [[ ! $sc =~ ^([0-9]+)x([0-9]+[A-Za-z]*)(w([0-9]+))?$ ]]; then
        log "fanout.sh: bad scenario $sc (want NxSIZE or NxSIZEwWINDOW)"
        exit 2
    fi
    conns=${BASH_REMATCH[1]}
    size=${BASH_REMATCH[2]}
    [[ -n "${BASH_REMATCH[4]}" ]] && window=${BASH_REMATCH[4]}
    run_load "$server" "$sc" "$FANOUT_LIMIT" fanout -c "$conns" -s "$size" --window "$window" \
        --duration "$DURATION" --warmup "$WARMUP"
}

START=$(date +%s)
for round in $(seq "$ROUNDS"); do
    for sc in $SCENARIOS; do
        log "== round $round/$ROUNDS: $sc"
        for server in $SERVERS; do
            [[ -z "${UNAVAILABLE[$server]:-}" ]] || continue
            if ! start_server "$server"; then
                if [[ $server == ringws-2proc ]]; then
                    log "   $server: did not start (nats-server, a room, or the backplane link); see target/fanout/servers.log"
                else
                    log "   $server: did not start (io_uring unavailable?); see target/fanout/servers.log"
                fi
                UNAVAILABLE[$server]=1
                FAILED+=("$server (did not start)")
                continue
            fi
            run_scenario "$server" "$sc"
            stop_server
        done
    done
done

IDLE_SERVERS=()
if [[ "$IDLE" == 1 ]]; then
    IDLE_SERVERS=(room-epoll echo-epoll)
    [[ " $SERVERS " == *" uws "* ]] && IDLE_SERVERS+=(uws)
    IDLE_LIMIT=$(awk -v h="$IDLE_HOLD" -v s="$IDLE_STEPS" 'BEGIN { printf "%d", 120 + h * s + 30 }')
    log "== idle: $IDLE_CONNS subscribed connections, no message ($IDLE_STEPS steps)"
    for server in "${IDLE_SERVERS[@]}"; do
        if [[ $server == echo-epoll && ! -x "$ECHO_BIN" ]]; then
            log "   echo-epoll: $ECHO_BIN missing; skipped"
            continue
        fi
        start_server "$server" || { FAILED+=("$server (did not start)"); continue; }
        run_load "$server" "idle$IDLE_CONNS" "$IDLE_LIMIT" idle -c "$IDLE_CONNS" --no-message \
            --steps "$IDLE_STEPS" --hold "$IDLE_HOLD" --duration 60
        stop_server
    done
fi

# Tab-separated: kind server scenario cpu user sys deliveries/s publishes/s
# noisy ok lag_stalls broker_ns/delivery broker_ns/publish broker_cpu_pct
# first_cpu_pct second_cpu_pct (kind "fanout"; the last five empty but for
# ringws-2proc), or kind server scenario slope bytes/conn r2 (kind "idle").
rows() {
    local line mode ok noisy o each
    while IFS= read -r line; do
        mode=$(sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p' <<<"$line")
        sv=$(sed -n 's/.*"server":"\([^"]*\)".*/\1/p' <<<"$line")
        sc=$(sed -n 's/.*"scenario":"\([^"]*\)".*/\1/p' <<<"$line")
        ok=0; [[ $line == *'"ok":true'* ]] && ok=1
        o=$(field "$line" other_cpu_pct); noisy=0
        [[ -n "$o" ]] && awk -v o="$o" 'BEGIN { exit !(o > 10) }' && noisy=1
        if [[ $mode == fanout ]]; then
            each=$(sed -n 's/.*"server_cpu_pct_each":\[\([0-9.]*\),\([0-9.]*\)\].*/\1\t\2/p' <<<"$line")
            [[ -n "$each" ]] || each=$'\t'
            printf 'fanout\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sv" "$sc" \
                "$(field "$line" server_cpu_ns_per_msg)" "$(field "$line" server_user_ns_per_msg)" \
                "$(field "$line" server_sys_ns_per_msg)" "$(field "$line" msgs_per_s)" \
                "$(field "$line" published_per_s)" "$noisy" "$ok" "$(field "$line" lag_stalls)" \
                "$(field "$line" broker_cpu_ns_per_msg)" "$(field "$line" broker_cpu_ns_per_publish)" \
                "$(field "$line" broker_cpu_pct)" "$each"
        elif [[ $mode == idle ]]; then
            printf 'idle\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sv" "$sc" \
                "$(field "$line" rss_slope_bytes_per_conn)" "$(field "$line" bytes_per_conn)" \
                "$(field "$line" rss_fit_r2)" "$ok"
        fi
    done <"$RESULTS"
}

BP_CMD=
[[ "$BACKPLANE" == 1 ]] && BP_CMD=" BACKPLANE=1"
{
    echo "## Pub/sub fan-out ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) CPUs: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))"
    echo
    echo "Servers pinned to CPU $SERVER_CPU (ringws room example, --workers 1), ringws-load fanout on CPU $LOAD_CPU; $ROUNDS round(s), ${DURATION} s windows after ${WARMUP} s warm-up; fresh server per run; MIMALLOC_ALLOW_THP=$MIMALLOC_ALLOW_THP${ROOM_ARGS:+; room example run with $ROOM_ARGS}. Scenario NxSIZE[wK]: N listeners + 1 publisher, K messages in flight (default 1). Cost: median over the rounds of server CPU ns per delivered message (user / sys medians taken separately), delivered = published × (N + 1). Command: \`ROUNDS=$ROUNDS DURATION=$DURATION SCENARIOS=\"$SCENARIOS\" SERVERS=\"$SERVERS\"${ROOM_ARGS:+ ROOM_ARGS=\"$ROOM_ARGS\"}${UWS_PUBSUB:+ UWS_PUBSUB=$UWS_PUBSUB}${BP_CMD} benches/fanout.sh\`."
    if [[ " $SERVERS " == *" ringws-2proc "* ]]; then
        echo
        echo "ringws-2proc: two room example processes (--workers 1 --io epoll --backplane nats://127.0.0.1:PORT) and $("$NATS_BIN" --version 2>/dev/null || echo nats-server) (-a 127.0.0.1), all three pinned to CPU $SERVER_CPU; listeners alternate between the two rooms (\`ringws-load fanout --listen-addr\`), the publisher is on the first, so half the listeners get every message through NATS. Its CPU figure is both room processes' CPU summed, per delivered message (same definition); the broker's is the next column, not included."
    fi
    echo
    rows | awk -F'\t' -v servers="$SERVERS" -v bp="$BACKPLANE" -v cpu0="$SERVER_CPU" "$AWK_STATS"'
        $1 == "fanout" {
            k = $3 SUBSEP $2
            if (!(($3) in seen)) { seen[$3] = 1; order[++ns] = $3 }
            runs[k]++
            if ($4 != "") { cpu[k] = cpu[k] " " $4; usr[k] = usr[k] " " $5; sys[k] = sys[k] " " $6; dps[k] = dps[k] " " $7; pps[k] = pps[k] " " $8 }
            noisy[k] += $9; bad[k] += ($10 == 0); stalls[k] += $11
            if ($12 != "") { bmsg[k] = bmsg[k] " " $12; bpub[k] = bpub[k] " " $13 }
            if ($14 != "") bpct[k] = bpct[k] " " $14
            if ($15 != "") { p1[k] = p1[k] " " $15; p2[k] = p2[k] " " $16 }
        }
        END {
            nsv = split(servers, sv, " ")
            if (bp == 1) {
                print "| scenario | server | CPU ns / delivered msg (user / sys), median | range | × uws | + broker: nats-server CPU ns / delivered msg (/ publish), median | publishes/s | deliveries/s | runs |"
                print "|---|---|---|---|---|---|---|---|---|"
            } else {
                print "| scenario | server | CPU ns / delivered msg (user / sys), median | range | × uws | publishes/s | deliveries/s | runs |"
                print "|---|---|---|---|---|---|---|---|"
            }
            for (i = 1; i <= ns; i++) {
                sc = order[i]
                base = median(cpu[sc SUBSEP "uws"])
                for (j = 1; j <= nsv; j++) {
                    k = sc SUBSEP sv[j]
                    if (!runs[k]) continue
                    c = median(cpu[k])
                    ratio = (base != "" && c != "" && base > 0) ? sprintf("%.2f×", c / base) : "–"
                    flag = ""
                    if (noisy[k]) flag = flag sprintf(" ⚠ %d noisy", noisy[k])
                    if (bad[k]) flag = flag sprintf(" ⚠ %d failed", bad[k])
                    if (stalls[k]) flag = flag sprintf(" (%d lag stalls)", stalls[k])
                    broker = ""
                    if (bp == 1) broker = (bmsg[k] == "") ? " – |" : sprintf(" %s (%s) |", num(median(bmsg[k])), num(median(bpub[k])))
                    printf "| %s | %s | %s (%s / %s) | %s | %s |%s %s | %s | %d%s |\n", sc, sv[j],
                        num(c), num(median(usr[k])), num(median(sys[k])), minmax(cpu[k]),
                        ratio, broker, num(median(pps[k])), num(median(dps[k])), runs[k], flag
                }
            }
            split_lines = ""
            for (i = 1; i <= ns; i++) {
                k = order[i] SUBSEP "ringws-2proc"
                if (p1[k] == "") continue
                split_lines = split_lines sprintf("- %s: first room (publisher + even listeners) %.0f %%, second room (odd listeners, through NATS) %.0f %%, nats-server %.0f %%\n",
                    order[i], median(p1[k]), median(p2[k]), median(bpct[k]))
            }
            if (split_lines != "") {
                print ""
                print "ringws-2proc, CPU of each process over the window (median % of a core; all three share CPU " cpu0 "):"
                print ""
                printf "%s", split_lines
            }
        }'
    if [[ ${#IDLE_SERVERS[@]} -gt 0 ]]; then
        echo
        echo "Idle: \`ringws-load idle --no-message -c $IDLE_CONNS --steps $IDLE_STEPS --hold $IDLE_HOLD\` (connections opened in $IDLE_STEPS steps, no message sent; slope of server RSS against connections by least squares, and ΔRSS / N). room-epoll is the room example (every connection subscribed), echo-epoll the echo example (not subscribed): the difference is what a subscription costs."
        echo
        echo "| server | RSS slope / conn | ΔRSS / conn | R² | ok |"
        echo "|---|---|---|---|---|"
        rows | awk -F'\t' '$1 == "idle" { printf "| %s | %.0f B | %.0f B | %.4f | %s |\n", $2, $4, $5, $6, $7 ? "yes" : "NO" }'
    fi
} >"$TABLE"
cat "$TABLE"
log "fanout.sh: done in $(($(date +%s) - START)) s; raw results in target/fanout/results.jsonl, table in target/fanout/table.md"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    log "fanout.sh: ${#FAILED[@]} run(s) failed:"
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
