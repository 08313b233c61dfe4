#!/usr/bin/env bash
# Autobahn|TestSuite (fuzzingclient, cases 1-10) against ringws, once per I/O backend.
#
# Needs nothing installed by hand: finds pyenv's Python 2.7, builds a cached
# Python 2.7 virtualenv with the pinned wstest (tests/autobahn/requirements.txt),
# starts ringws on a free loopback port per backend, runs wstest, and judges
# target/autobahn/<backend>/index.json with summarize.py against allowlist.txt.
#
# Environment knobs:
#   RINGWS_BIN          server binary            (default: target/release/ringws)
#   AUTOBAHN_BACKENDS   backends to run          (default: "uring epoll")
#   AUTOBAHN_CASES      case patterns            (default: "1.* 2.* ... 10.*")
#   AUTOBAHN_EXCLUDE    case patterns left out   (default: "12.* 13.*", the
#                       permessage-deflate cases; to run them, set
#                       AUTOBAHN_CASES="12.* 13.*" AUTOBAHN_EXCLUDE=""
#                       RINGWS_EXTRA_ARGS="--deflate shared")
#   AUTOBAHN_TIMEOUT    seconds per backend      (default: 900)
#   AUTOBAHN_OUT        reports directory        (default: target/autobahn)
#   AUTOBAHN_VENV       cached 2.7 virtualenv    (default: ~/.cache/ringws/autobahn-venv)
#   AUTOBAHN_PYTHON2    python2.7 interpreter    (default: found via pyenv)
#   RINGWS_WORKERS      --workers for ringws     (default: 2)
#   RINGWS_EXTRA_ARGS   extra ringws arguments   (default: none)
# Last line printed: "autobahn: N passed, M failed".
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

RINGWS_BIN="${RINGWS_BIN:-target/release/ringws}"
BACKENDS="${AUTOBAHN_BACKENDS:-uring epoll}"
CASES="${AUTOBAHN_CASES:-1.* 2.* 3.* 4.* 5.* 6.* 7.* 8.* 9.* 10.*}"
EXCLUDE="${AUTOBAHN_EXCLUDE-12.* 13.*}"
TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ringws"
VENV="${AUTOBAHN_VENV:-$CACHE/autobahn-venv}"
VENV_TOOL="$CACHE/virtualenv-tool"
OUT="${AUTOBAHN_OUT:-$ROOT/target/autobahn}"
# wstest runs in each backend's directory: the reports' path must not be relative.
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
WORKERS="${RINGWS_WORKERS:-2}"
read -r -a EXTRA_ARGS <<< "${RINGWS_EXTRA_ARGS:-}"

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    echo "autobahn: 0 passed, 1 failed"
    exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
forget_pid() { # drop one pid from PIDS
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
trap cleanup EXIT
trap 'log "interrupted"; cleanup; trap - EXIT; echo "autobahn: 0 passed, 1 failed"; exit 130' INT TERM

# ---------------------------------------------------------------- python 2.7
find_python2() {
    local cand root
    if [ -n "${AUTOBAHN_PYTHON2:-}" ]; then
        echo "$AUTOBAHN_PYTHON2"
        return
    fi
    cand="$HOME/.pyenv/versions/2.7.18/bin/python2.7"
    [ -x "$cand" ] && { echo "$cand"; return; }
    root="${PYENV_ROOT:-}"
    if [ -z "$root" ] && command -v pyenv >/dev/null 2>&1; then root="$(pyenv root 2>/dev/null)"; fi
    if [ -n "$root" ]; then
        for cand in $(ls -d "$root"/versions/2.7*/bin/python2.7 2>/dev/null | sort -rV); do
            [ -x "$cand" ] && { echo "$cand"; return; }
        done
    fi
    for cand in python2.7 python2; do
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
            command -v "$cand"
            return
        fi
    done
}

PY2="$(find_python2)"
if [ -z "$PY2" ] || ! "$PY2" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    die "Python 2.7 not found (looked for ~/.pyenv/versions/2.7.18, \$(pyenv root)/versions/2.7*, python2.7 on PATH; set AUTOBAHN_PYTHON2). wstest needs Python 2.7."
fi
command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to install virtualenv and to parse reports)"

# ---------------------------------------------------------------- cached venv
REQ="$HERE/requirements.txt"
STAMP_WANT="$("$PY2" -c 'import sys; print(sys.version.split()[0])') $(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$VENV/bin/wstest" ] && [ "$(cat "$VENV/.ringws-stamp" 2>/dev/null)" = "$STAMP_WANT" ]; then
    log "using cached wstest venv $VENV"
else
    log "building wstest venv in $VENV (Python 2.7: $PY2); takes a minute or a few"
    t0=$SECONDS
    if [ ! -x "$VENV_TOOL/bin/virtualenv" ]; then
        rm -rf "$VENV_TOOL"
        python3 -m venv "$VENV_TOOL" &&
            "$VENV_TOOL/bin/pip" install -q --disable-pip-version-check 'virtualenv<20.22' ||
            die "could not install virtualenv<20.22 with python3's pip"
    fi
    rm -rf "$VENV"
    "$VENV_TOOL/bin/virtualenv" -q -p "$PY2" "$VENV" || die "virtualenv for Python 2.7 failed"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-python-version-warning -r "$REQ" ||
        die "pip install of autobahntestsuite into $VENV failed"
    "$VENV/bin/wstest" -a >/dev/null 2>&1 || die "wstest does not run in $VENV"
    echo "$STAMP_WANT" > "$VENV/.ringws-stamp"
    log "venv ready in $((SECONDS - t0))s"
fi
log "$("$VENV/bin/wstest" -a 2>/dev/null | tr '\n' ' ')"

# ---------------------------------------------------------------- server
[ -x "$RINGWS_BIN" ] || die "ringws binary not found at $RINGWS_BIN (run 'cargo build --release' first or set RINGWS_BIN)"

# A free port below 32768 (tests/free_port.py says why).
free_port() {
    python3 "$HERE/../free_port.py"
}

wait_healthy() { # port pid
    local i
    for i in $(seq 150); do
        kill -0 "$2" 2>/dev/null || return 1
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/healthz" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

stop_server() { # pid -> exit status of the server after SIGTERM
    local pid="$1" rc
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null
    rc=$?
    forget_pid "$pid"
    return $rc
}

rm -rf "$OUT"
mkdir -p "$OUT"
SUMMARY_ARGS=()
for backend in $BACKENDS; do
    dir="$OUT/$backend"
    mkdir -p "$dir"
    port="$(free_port)"
    log "[$backend] starting $RINGWS_BIN --io $backend on 127.0.0.1:$port"
    "$RINGWS_BIN" --bind 127.0.0.1 --port "$port" --io "$backend" --workers "$WORKERS" \
        "${EXTRA_ARGS[@]}" > "$dir/ringws.log" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    SUMMARY_ARGS+=("$backend=$dir")
    if ! wait_healthy "$port" "$spid"; then
        log "[$backend] ringws did not become healthy on /healthz; log tail:"
        tail -n 20 "$dir/ringws.log" >&2
        stop_server "$spid"
        continue
    fi

    cases_json="$(printf '%s\n' $CASES | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))')"
    exclude_json="$(printf '%s\n' $EXCLUDE | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))')"
    cat > "$dir/spec.json" <<EOF
{
  "options": {"failByDrop": true},
  "outdir": "$dir",
  "servers": [
    {"agent": "ringws-$backend", "url": "ws://127.0.0.1:$port/ws"}
  ],
  "cases": $cases_json,
  "exclude-cases": $exclude_json,
  "exclude-agent-cases": {}
}
EOF
    log "[$backend] running wstest -m fuzzingclient (timeout ${TIMEOUT}s, log $dir/wstest.log)"
    t0=$SECONDS
    (cd "$dir" && exec timeout -k 10 "$TIMEOUT" "$VENV/bin/wstest" -m fuzzingclient -s spec.json) \
        > "$dir/wstest.log" 2>&1 &
    wpid=$!
    PIDS+=("$wpid")
    wait "$wpid"
    wrc=$?
    forget_pid "$wpid"
    if [ "$wrc" -eq 124 ] || [ "$wrc" -eq 137 ]; then
        log "[$backend] wstest timed out after ${TIMEOUT}s"
        rm -f "$dir/index.json" # partial results are not trusted
    elif [ "$wrc" -ne 0 ]; then
        log "[$backend] wstest exited with $wrc; log tail:"
        tail -n 20 "$dir/wstest.log" >&2
    fi
    log "[$backend] wstest took $((SECONDS - t0))s"
    if ! kill -0 "$spid" 2>/dev/null; then
        log "[$backend] ringws died during the run; log tail:"
        tail -n 20 "$dir/ringws.log" >&2
    fi
    stop_server "$spid"
    src=$?
    [ "$src" -eq 0 ] || log "[$backend] warning: ringws exited with status $src after SIGTERM"
done

AUTOBAHN_RUN_LABEL="$CASES${EXCLUDE:+ (excluded: $EXCLUDE)}${EXTRA_ARGS[*]:+; ringws ${EXTRA_ARGS[*]}}" \
    python3 "$HERE/summarize.py" "$HERE/allowlist.txt" "${SUMMARY_ARGS[@]}"
