#!/usr/bin/env bash
# Real clients against ringws: headless Chromium (playwright-core), wscat,
# Python `websockets`, and nginx as a WebSocket reverse proxy (echo + SIGTERM
# drain -> Close 1001 through the proxy). Runs on every backend in
# $INTEROP_BACKENDS and installs what it needs (apt: chromium nginx; npm:
# tests/interop/package-lock.json; PyPI: tests/interop/requirements.txt).
#
# Environment knobs:
#   RINGWS_BIN          server binary                (default: target/release/ringws)
#   SEND_ECHO_BIN       examples/send_echo, the server of the dedicated-mode
#                       checks (default: target/release/examples/send_echo)
#   INTEROP_BACKENDS    backends to run              (default: "uring epoll")
#   INTEROP_VENV        python3 venv for websockets  (default: ~/.cache/ringws/interop-venv)
#   INTEROP_TIMEOUT     overall limit in seconds     (default: 600)
#   RINGWS_WORKERS      --workers for ringws         (default: 2)
# Every check prints a PASS or FAIL line; the last line is
# "interop: N passed, M failed" and the exit status is 1 if anything failed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

RINGWS_BIN="${RINGWS_BIN:-target/release/ringws}"
SEND_ECHO_BIN="${SEND_ECHO_BIN:-target/release/examples/send_echo}"
CHAT_BIN="${CHAT_BIN:-$ROOT/target/release/examples/chat}"
BACKENDS="${INTEROP_BACKENDS:-uring epoll}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ringws"
VENV="${INTEROP_VENV:-$CACHE/interop-venv}"
TOTAL_TIMEOUT="${INTEROP_TIMEOUT:-600}"
WORKERS="${RINGWS_WORKERS:-2}"
OUT="$ROOT/target/interop"
CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"

NPASS=0
NFAIL=0
log() { printf '[interop] %s\n' "$*" >&2; }
pass() { NPASS=$((NPASS + 1)); echo "PASS $*"; }
fail() { NFAIL=$((NFAIL + 1)); echo "FAIL $*"; }
finish() {
    echo
    echo "interop: $NPASS passed, $NFAIL failed"
    [ "$NFAIL" -eq 0 ]
    exit $?
}

# ---------------------------------------------------------------- cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/ringws-interop.XXXXXX")"
chmod 755 "$TMP" # nginx workers may run as nobody
export INTEROP_TMP="$TMP"
PIDS=()
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
kill_pids() { # TERM, wait up to 5 s, KILL
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
cleanup() {
    local pid cmd
    kill_pids "${PIDS[@]}"
    PIDS=()
    # Chromium started by playwright (in its own process group) for this run:
    # identified by its profile directory under $TMP, which nothing else uses.
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        cmd="$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)" || continue
        case "$cmd" in *"--user-data-dir=$TMP/"*) kill -KILL "$pid" 2>/dev/null || true ;; esac
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'fail "interrupted (signal or overall timeout of ${TOTAL_TIMEOUT}s)"; cleanup; finish' INT TERM
# Overall bound: a watchdog that signals this script after TOTAL_TIMEOUT.
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$TOTAL_TIMEOUT" &
    sp=$!
    wait "$sp" && log "overall timeout of ${TOTAL_TIMEOUT}s reached" && kill -TERM $$
) 2>/dev/null &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

# ---------------------------------------------------------------- installs
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}
install_apt() {
    local need=()
    [ -x "$CHROMIUM_BIN" ] || need+=(chromium)
    [ -x "$NGINX_BIN" ] || need+=(nginx)
    command -v node >/dev/null 2>&1 || need+=(nodejs)
    command -v npm >/dev/null 2>&1 || need+=(npm)
    command -v script >/dev/null 2>&1 || need+=(bsdutils)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    [ ${#need[@]} -eq 0 ] && return 0
    log "apt-get install ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -q >"$OUT/apt.log" 2>&1 &&
        as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "${need[@]}" >>"$OUT/apt.log" 2>&1
}
install_npm() {
    local stamp="$HERE/node_modules/.ringws-stamp" want
    want="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1) $(node --version)"
    if [ -x "$HERE/node_modules/.bin/wscat" ] && [ -f "$HERE/node_modules/playwright-core/package.json" ] &&
        [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    log "npm ci in tests/interop"
    (cd "$HERE" && timeout 600 npm ci --no-audit --no-fund --loglevel=error) >"$OUT/npm.log" 2>&1 &&
        echo "$want" > "$stamp"
}
install_venv() {
    local stamp="$VENV/.ringws-stamp" want
    want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1) $(python3 --version 2>&1)"
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    log "creating python venv $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" &&
        timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt" \
            >"$OUT/pip.log" 2>&1 &&
        echo "$want" > "$stamp"
}

rm -rf "$OUT"
mkdir -p "$OUT"
t_install=$SECONDS
if install_apt; then pass "setup: apt packages (chromium, nginx)"; else fail "setup: apt packages: see $OUT/apt.log"; fi
if install_npm; then pass "setup: npm ci (wscat, playwright-core)"; else fail "setup: npm ci: see $OUT/npm.log"; fi
if install_venv; then pass "setup: python venv (websockets)"; else fail "setup: python venv: see $OUT/pip.log"; fi
log "setup took $((SECONDS - t_install))s"
if [ "$NFAIL" -ne 0 ]; then finish; fi
if [ ! -x "$RINGWS_BIN" ]; then
    fail "setup: ringws binary not found at $RINGWS_BIN (run 'cargo build --release' first or set RINGWS_BIN)"
    finish
fi
PY="$VENV/bin/python"
# The chat example across two processes needs a NATS server and the example.
if bash "$ROOT/tests/nats/install.sh" >"$OUT/nats-install.log" 2>&1; then
    pass "setup: nats-server"
else
    fail "setup: nats-server: see $OUT/nats-install.log"
fi
if [ ! -x "$CHAT_BIN" ] && ! (cd "$ROOT" && cargo build --release --example chat >"$OUT/chat-build.log" 2>&1); then
    fail "setup: cargo build --release --example chat: see $OUT/chat-build.log"
fi
NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"

# ---------------------------------------------------------------- helpers
# A free port below 32768 (tests/free_port.py says why).
free_port() {
    python3 "$HERE/../free_port.py"
}
wait_http() { # url pid
    for _ in $(seq 150); do
        kill -0 "$2" 2>/dev/null || return 1
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}
# run_check NAME TIMEOUT CMD...: runs a helper that prints PASS/FAIL lines,
# counts them, and adds a FAIL if the helper failed without saying why.
run_check() {
    local name="$1" limit="$2" out rc np nf
    shift 2
    out="$TMP/check.out"
    timeout -k 5 "$limit" "$@" >"$out" 2>"$out.err"
    rc=$?
    np=$(grep -c '^PASS' "$out")
    nf=$(grep -c '^FAIL' "$out")
    grep -E '^(PASS|FAIL|#)' "$out"
    NPASS=$((NPASS + np))
    NFAIL=$((NFAIL + nf))
    if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
        fail "$name: exited with status $rc$([ "$rc" -eq 124 ] && echo " (timed out after ${limit}s)")"
        tail -n 15 "$out.err" | sed 's/^/    /'
    elif [ "$rc" -eq 0 ] && [ "$np" -eq 0 ]; then
        fail "$name: printed no result"
    fi
    return 0
}
strip_ansi() { sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\r/\n/g'; }

# wscat the way the Knative sample uses it: interactive, type Hello, see "< Hello".
wscat_interactive() { # label url
    local label="$1" url="$2" fifo="$TMP/wscat.fifo" out="$TMP/wscat.out" wpid ok=1
    rm -f "$fifo" "$out"
    mkfifo "$fifo"
    timeout -k 2 20 script -qfec "'$HERE/node_modules/.bin/wscat' --no-color -c '$url'" /dev/null \
        <"$fifo" >"$out" 2>&1 &
    wpid=$!
    PIDS+=("$wpid")
    exec 7>"$fifo"
    for _ in $(seq 100); do grep -q 'Connected' "$out" 2>/dev/null && break; sleep 0.1; done
    printf 'Hello\r' >&7
    for _ in $(seq 100); do strip_ansi <"$out" | grep -q '^< Hello$' && { ok=0; break; }; sleep 0.1; done
    printf '\003' >&7 # Ctrl-C: wscat closes the connection and exits
    exec 7>&-
    for _ in $(seq 50); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
    kill_pids "$wpid"
    forget_pid "$wpid"
    if [ $ok -eq 0 ]; then
        pass "[$label] wscat interactive: typed Hello, saw '< Hello'"
    else
        fail "[$label] wscat interactive: no '< Hello'; screen: $(strip_ansi <"$out" | grep -v '^\s*$' | tr '\n' '|' | cut -c1-200)"
    fi
}
wscat_execute() { # label url: scripted, -x sends Hello and wscat closes after -w 1 s
    local label="$1" url="$2" got rc fifo="$TMP/wscat-x.fifo"
    # wscat exits as soon as its stdin reaches EOF, so give it a stdin that
    # never does: a FIFO that this shell holds open for reading and writing.
    rm -f "$fifo"
    mkfifo "$fifo"
    exec 8<>"$fifo"
    got="$(timeout -k 2 20 "$HERE/node_modules/.bin/wscat" -c "$url" -x Hello -w 1 <&8 2>&1)"
    rc=$?
    exec 8>&-
    # Not a terminal: wscat prints incoming messages bare (the "< " prefix is
    # only drawn on a tty, see wscat_interactive).
    if [ $rc -eq 0 ] && [ "$got" = "Hello" ]; then
        pass "[$label] wscat -x Hello: echoed 'Hello', exit 0"
    else
        fail "[$label] wscat -x Hello: exit $rc, output '$(echo "$got" | head -c 200)'"
    fi
}

start_ringws() { # backend port logfile [binary [flags...]] -> sets RPID
    "${4:-$RINGWS_BIN}" --bind 127.0.0.1 --port "$2" --io "$1" --workers "$WORKERS" "${@:5}" >"$3" 2>&1 &
    RPID=$!
    PIDS+=("$RPID")
    wait_http "http://127.0.0.1:$2/healthz" "$RPID"
}
start_nginx() { # listen_port upstream_port -> sets NPID
    local prefix="$TMP/nginx-$1"
    mkdir -p "$prefix"
    sed -e "s#@PREFIX@#$prefix#g" -e "s#@LISTEN_PORT@#$1#g" -e "s#@UPSTREAM_PORT@#$2#g" \
        "$HERE/nginx.conf.in" >"$prefix/nginx.conf"
    "$NGINX_BIN" -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log" >"$prefix/stdout.log" 2>&1 &
    NPID=$!
    PIDS+=("$NPID")
    for _ in $(seq 100); do
        kill -0 "$NPID" 2>/dev/null || break
        # any HTTP answer (even 502) means nginx is listening
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/healthz" && return 0
        sleep 0.1
    done
    tail -n 5 "$prefix/error.log" "$prefix/stdout.log" >&2
    return 1
}

# ---------------------------------------------------------------- the runs
# One NATS server for the chat checks: the backplane of two chat processes.
NATS_PORT="$(free_port)"
"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
first_shot=""
for backend in $BACKENDS; do
    log "=== backend $backend"
    port="$(free_port)"
    rlog="$OUT/ringws-$backend.log"
    if ! start_ringws "$backend" "$port" "$rlog"; then
        fail "[$backend] ringws --io $backend did not answer /healthz; log: $(tail -n 3 "$rlog" | tr '\n' '|')"
        kill_pids "$RPID"
        forget_pid "$RPID"
        continue
    fi
    url="ws://127.0.0.1:$port/ws"

    # Headless Chromium via playwright-core.
    shot="$OUT/browser-$backend.png"
    run_check "[$backend] browser" 120 node "$HERE/browser.js" "$url" "$shot" "$backend"
    [ -z "$first_shot" ] && [ -f "$shot" ] && first_shot="$shot"

    # examples/chat in Chromium: a page on each of two processes that share their rooms
    # through NATS, sessions ended by --max-lifetime 4s and reconnected by the page.
    main_pid="$RPID"
    chat_pids=()
    chat_urls=()
    for side in a b; do
        cport="$(free_port)"
        if start_ringws "$backend" "$cport" "$OUT/chat-$backend-$side.log" "$CHAT_BIN" \
            --backplane "nats://127.0.0.1:$NATS_PORT" --max-lifetime 4s --max-lifetime-jitter 0; then
            chat_urls+=("http://127.0.0.1:$cport/")
        else
            fail "[$backend] chat example ($side) did not answer /healthz"
        fi
        chat_pids+=("$RPID")
    done
    RPID="$main_pid"
    if [ "${#chat_urls[@]}" = 2 ]; then
        run_check "[$backend] chat" 120 node "$HERE/chat.js" "${chat_urls[0]}" "${chat_urls[1]}" \
            "$OUT/chat-$backend.png" "$backend"
    fi
    kill_pids "${chat_pids[@]}"
    for p in "${chat_pids[@]}"; do forget_pid "$p"; done

    # wscat.
    wscat_execute "$backend" "$url"
    wscat_interactive "$backend" "$url"

    # Python websockets, directly.
    run_check "[$backend] python" 120 "$PY" "$HERE/ws_client.py" suite "$backend" "$url"

    # permessage-deflate: Chromium's default offer and Python websockets' offers
    # (with and without context takeover) against --deflate shared, then
    # --deflate dedicated.
    main_pid="$RPID"
    dport="$(free_port)"
    if start_ringws "$backend" "$dport" "$OUT/ringws-$backend-deflate.log" "$RINGWS_BIN" --deflate shared; then
        durl="ws://127.0.0.1:$dport/ws"
        run_check "[$backend deflate] browser" 120 node "$HERE/browser.js" "$durl" \
            "$OUT/browser-$backend-deflate.png" "$backend deflate" deflate
        run_check "[$backend deflate] python" 120 "$PY" "$HERE/ws_client.py" deflate "$backend deflate" "$durl"
    else
        fail "[$backend] ringws --deflate shared did not answer /healthz"
    fi
    kill_pids "$RPID"
    forget_pid "$RPID"

    # The same against --deflate dedicated, served by examples/send_echo: each
    # echo is a copy the handler sends, so the server compresses every one
    # of them itself, referring back into earlier messages, and the client's
    # inflater must keep its window.
    dport="$(free_port)"
    if start_ringws "$backend" "$dport" "$OUT/ringws-$backend-dedicated.log" "$SEND_ECHO_BIN" --deflate dedicated; then
        durl="ws://127.0.0.1:$dport/ws"
        run_check "[$backend dedicated] browser" 120 node "$HERE/browser.js" "$durl" \
            "$OUT/browser-$backend-dedicated.png" "$backend dedicated" deflate
        run_check "[$backend dedicated] python" 120 "$PY" "$HERE/ws_client.py" deflate-dedicated "$backend dedicated" "$durl"
    else
        fail "[$backend] send_echo --deflate dedicated did not answer /healthz"
    fi
    kill_pids "$RPID"
    forget_pid "$RPID"
    RPID="$main_pid"

    # nginx in front of ringws.
    nport="$(free_port)"
    if ! start_nginx "$nport" "$port"; then
        fail "[$backend] nginx did not start"
    else
        nurl="ws://127.0.0.1:$nport/ws"
        if curl -fsS --max-time 5 "http://127.0.0.1:$nport/healthz" -o /dev/null; then
            pass "[$backend via nginx] GET /healthz through the proxy: 200"
        else
            fail "[$backend via nginx] GET /healthz through the proxy failed"
        fi
        run_check "[$backend via nginx] python" 120 "$PY" "$HERE/ws_client.py" suite "$backend via nginx" "$nurl"
        wscat_execute "$backend via nginx" "$nurl"

        # Drain: two clients through nginx and one direct, then SIGTERM ringws.
        dout="$TMP/drain.out"
        timeout -k 5 60 "$PY" "$HERE/ws_client.py" drain "$backend" \
            "via nginx #1=$nurl" "via nginx #2=$nurl" "direct=$url" \
            >"$dout" 2>"$dout.err" &
        dpid=$!
        PIDS+=("$dpid")
        for _ in $(seq 150); do grep -q '^READY' "$dout" && break; kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
        if grep -q '^READY' "$dout"; then
            t0=$(date +%s.%N)
            kill -TERM "$RPID"
            wait "$dpid"
            drc=$?
            forget_pid "$dpid"
            # ringws should be gone soon after its sessions closed (drain timeout 5 s)
            for _ in $(seq 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$RPID" 2>/dev/null; then
                fail "[$backend] ringws still running 10 s after SIGTERM"
                kill_pids "$RPID"
            else
                wait "$RPID"
                src=$?
                el=$(python3 -c "import time; print('%.2f' % (time.time() - $t0))")
                if [ $src -eq 0 ]; then
                    pass "[$backend] ringws exited 0 after SIGTERM (${el}s)"
                else
                    fail "[$backend] ringws exited with status $src after SIGTERM"
                fi
            fi
            forget_pid "$RPID"
            np=$(grep -c '^PASS' "$dout")
            nf=$(grep -c '^FAIL' "$dout")
            grep -E '^(PASS|FAIL)' "$dout"
            NPASS=$((NPASS + np))
            NFAIL=$((NFAIL + nf))
            if [ "$np" -eq 0 ] && [ "$nf" -eq 0 ]; then
                fail "[$backend via nginx] drain client exited $drc without a result: $(tail -n 3 "$dout.err" | tr '\n' '|')"
            fi
        else
            fail "[$backend via nginx] drain clients could not connect: $(tail -n 3 "$dout.err" | tr '\n' '|')"
            kill_pids "$dpid"
            forget_pid "$dpid"
        fi
        cp "$TMP/nginx-$nport/error.log" "$OUT/nginx-$backend-error.log" 2>/dev/null
        kill_pids "$NPID"
        forget_pid "$NPID"
    fi
    kill_pids "$RPID"
    forget_pid "$RPID"
done

if [ -n "$first_shot" ]; then
    cp "$first_shot" "$OUT/browser.png"
    echo "# browser screenshot: $OUT/browser.png"
fi
finish
