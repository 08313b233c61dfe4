# Helpers the benchmark scripts share (sourced by compare.sh, fanout.sh and
# deflate.sh after they set BENCH, their name, and QUIET_PCT / QUIET_MAX).

log() { printf '%s\n' "$*" >&2; }

# Percentage of all CPUs busy over the next second (/proc/stat).
busy_pct() {
    local a b
    read -r -a a </proc/stat
    sleep 1
    read -r -a b </proc/stat
    local busy=$(((b[1] - a[1]) + (b[2] - a[2]) + (b[3] - a[3]) + (b[6] - a[6]) + (b[7] - a[7]) + (b[8] - a[8])))
    local idle=$(((b[4] - a[4]) + (b[5] - a[5])))
    echo $((100 * busy / (busy + idle + 1)))
}

# Waits (up to QUIET_MAX s) until the machine is less than QUIET_PCT % busy:
# the server under test is idle at this point, so anything busy is someone
# else's work.
wait_quiet() {
    local start=$SECONDS pct
    while pct=$(busy_pct) && [[ $pct -ge $QUIET_PCT ]]; do
        if [[ $((SECONDS - start)) -ge $QUIET_MAX ]]; then
            log "   machine still ${pct} % busy after ${QUIET_MAX} s; measuring anyway (the table flags disturbed runs)"
            return 0
        fi
        if [[ $((SECONDS - start)) -le 1 ]]; then
            log "   machine ${pct} % busy (other work); waiting up to ${QUIET_MAX} s for it to settle"
        fi
    done
}

# Moves PORT on to the next port nothing listens on (all below 32768, the
# start of Linux's ephemeral range, with the scripts' default PORT_BASE).
next_port() {
    PORT=$((PORT + 1))
    while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
        PORT=$((PORT + 1))
    done
    if [[ $PORT -ge 32768 ]]; then
        log "$BENCH: port $PORT is in the ephemeral range; lower PORT_BASE"
        return 1
    fi
}

# One figure from a JSON line (numbers only; empty when null).
field() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.e+-]*\)[,}].*/\1/p" <<<"$1"; }
# One string from a JSON line (empty when null; no escapes expected).
sfield() { sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" <<<"$1"; }

# awk functions for the tables: median and range of a space-separated list
# of numbers, and a number rounded ("–" when missing). Put "$AWK_STATS"
# before an awk program.
AWK_STATS='
function median(list,    n, v, i, j, t) {
    n = split(list, v, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
    return n % 2 ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2
}
function num(v) { return v == "" ? "–" : sprintf("%.0f", v) }
function minmax(list,    n, v, i, lo, hi) {
    n = split(list, v, " ")
    if (n == 0) return "–"
    lo = hi = v[1] + 0
    for (i = 2; i <= n; i++) { if (v[i] + 0 < lo) lo = v[i] + 0; if (v[i] + 0 > hi) hi = v[i] + 0 }
    return sprintf("%.0f–%.0f", lo, hi)
}
'
