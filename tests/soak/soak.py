#!/usr/bin/env python3
"""Soak companion for tests/soak/run.sh (Python 3 stdlib only).

While ringws-load drives steady traffic, this process:

- churns: connections join at --join-rate per second, each lives 1-10 s,
  echoing a random message (1 B - 4 KiB, random bytes, binary or text) every
  200 ms and checking every echoed byte; each leaves in one of three ways:
  a Close handshake (half of them), a plain TCP close, or a reset (SO_LINGER 0);
  a Ping from the server (its idle check may ping a session that has not
  sent its first frame yet) is answered with a Pong, as RFC 6455 requires,
  and counted;
- samples the server every second: RSS (/proc/PID/status VmRSS), open fds
  (/proc/PID/fd), ringws_sessions_open (/metrics); written to --csv;
- after --seconds, stops the churn, waits for ringws-load (--load-pid) to end,
  then checks and prints one line per check ("check NAME: ok|FAIL ...").

Checks (the slope limits are stated here and in run.sh):
  echo          no echo mismatch and no unexpected connection failure in the churn
  rss_slope     least-squares slope of RSS over the second half of the samples
                (never the first 30 s): fails when over --rss-slope-kib KiB/s
                (default 4 KiB/s, ~14 MiB/hour), over 3 standard errors (RSS
                swings by several MiB as the allocator purges; the error is
                widened for autocorrelated samples) and when the fitted rise
                across the window exceeds 1 MiB and, for windows under 180 s,
                the RSS swing (max - min) seen between 10 s and the window's
                start and --cache-kib (caches bounded by design that fill over
                minutes): a 60 s run only catches gross leaks. Runs with fewer
                than 20 samples in the window are not judged.
  fd_slope      the same test on (open fds - sessions_open), limit --fd-slope
                (default 0.1 fd/s, and 2 fds across the window): descriptors
                not tied to a session must not pile up (fds_baseline is the
                exact check)
  gauge         sessions_open never above the clients that could be connected
  gauge_zero    sessions_open back to 0 within 10 s after all clients left
  fds_baseline  open fds back to the idle server's (--base-fds) within 10 s after
Exit status: 0 if every check passed.
"""
import argparse
import asyncio
import base64
import csv
import os
import random
import socket
import struct
import sys
import time

KEY = base64.b64encode(b"ringws-soak-key!").decode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def sessions_open(host, port):
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("ringws_sessions_open "):
            return int(float(line.split()[1]))
    raise RuntimeError("no ringws_sessions_open in /metrics")


def frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def read_frame(r):
    h = await r.readexactly(2)
    if h[0] & 0x70 or h[1] & 0x80:
        raise ValueError(f"bad server frame header {h.hex()}")
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    return h[0] & 0x80 != 0, h[0] & 0x0F, await r.readexactly(n)


async def read_reply(r, w, pings):
    """The next frame that is not a Ping. Pings are counted in pings[0] and
    answered with a Pong (same payload) through w; with w None (our Close is
    sent: nothing may follow it) they are only skipped."""
    while True:
        fin, op, got = await read_frame(r)
        if op != 9:
            return fin, op, got
        pings[0] += 1
        if w is not None:
            w.write(frame(10, got))


class Churn:
    def __init__(self, host, port, join_rate, rng):
        self.host, self.port = host, port
        self.join_rate = join_rate
        self.rng = rng
        self.open = 0  # connections that may hold a session now
        self.peak_open = 0
        self.sessions = 0
        self.echoes = 0
        self.pings = [0]  # server Pings answered
        self.mismatches = 0
        self.failures = 0
        self.first_failure = None
        self.stop = False
        self.tasks = set()

    def fail(self, what):
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = what

    async def session(self):
        rng = random.Random(self.rng.random())
        lifetime = rng.uniform(1, 10)
        ending = rng.choice(["close", "close", "fin", "reset"])
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        w = None
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
            w.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail(f"upgrade refused: {head[:40]!r}")
                return
            self.sessions += 1
            end = time.monotonic() + lifetime
            while time.monotonic() < end and not self.stop:
                size = rng.choice([1, 20, 125, 126, 1000, rng.randint(1, 4096)])
                if rng.random() < 0.3:
                    payload = "".join(rng.choice("aé✓𝄞z ") for _ in range(size // 3 + 1)).encode()
                    opcode = 1
                else:
                    payload = rng.randbytes(size)
                    opcode = 2
                w.write(frame(opcode, payload))
                fin, op, got = await asyncio.wait_for(read_reply(r, w, self.pings), 5)
                if (fin, op, got) != (True, opcode, payload):
                    self.mismatches += 1
                    self.fail(f"echo mismatch: sent {opcode}/{len(payload)} B, got {op}/{len(got)} B")
                    return
                self.echoes += 1
                await asyncio.sleep(0.2)
            if ending == "close":
                w.write(frame(8, struct.pack("!H", 1000)))
                _, op, got = await asyncio.wait_for(read_reply(r, None, self.pings), 5)
                if op != 8 or got[:2] != struct.pack("!H", 1000):
                    self.fail(f"close answered with {op} {got!r}")
                rest = await asyncio.wait_for(r.read(), 5)
                if rest:
                    self.fail(f"bytes after the server's Close: {rest[:20]!r}")
            elif ending == "reset":
                sock = w.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (
            OSError,
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as e:
            self.fail(f"{type(e).__name__}: {e}")
        finally:
            if w is not None:
                w.close()
            self.open -= 1

    async def run(self):
        interval = 1.0 / self.join_rate
        next_at = time.monotonic()
        while not self.stop:
            t = asyncio.ensure_future(self.session())
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0, next_at - time.monotonic()))

    async def finish(self):
        self.stop = True
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=30)


def trend(xs, ys):
    """Least-squares slope of ys over xs and its standard error, the error
    widened for autocorrelated samples (lag-1 autocorrelation r of the
    residuals: n_eff = n (1 - r) / (1 + r)), since RSS swings slowly."""
    n = len(xs)
    if n < 4:
        return 0.0, float("inf")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, float("inf")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    res = [y - my - b * (x - mx) for x, y in zip(xs, ys)]
    ss = sum(e * e for e in res)
    if ss == 0:
        return b, 0.0
    r = sum(res[i] * res[i + 1] for i in range(n - 1)) / ss
    r = min(max(r, 0.0), 0.95)
    se = (ss / (n - 2) / sxx) ** 0.5 * ((1 + r) / (1 - r)) ** 0.5
    return b, se


def rising(b, se, limit, span, floor):
    """A trend is rising when its slope is over the limit, clearly not noise
    (over 3 standard errors), and adds more than `floor` over the window."""
    return b > limit and b > 3 * se and b * span > floor


def swing(samples, col, start, end):
    """Range (max - min) of column `col` over samples with start <= t < end."""
    vals = [s[col] for s in samples if start <= s[0] < end]
    return max(vals) - min(vals) if vals else 0


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by run.sh) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True, help="ringws process")
    ap.add_argument("--load-pid", type=int, help="ringws-load process to wait for")
    ap.add_argument("--load-connections", type=int, default=0)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--join-rate", type=float, default=20)
    ap.add_argument("--rss-slope-kib", type=float, default=4.0)
    # What the server's caches, bounded by design, may still add after the
    # first 30 s of a short run (KiB).
    ap.add_argument("--cache-kib", type=int, default=0)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--base-fds", type=int, help="fds of the idle server (default: at start)")
    ap.add_argument("--fd-slope", type=float, default=0.1)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)

    base_fds = a.base_fds if a.base_fds is not None else fd_count(a.pid)
    churn = Churn(host, port, a.join_rate, random.Random(a.seed))
    churner = asyncio.ensure_future(churn.run())
    samples = []  # (t, rss KiB, fds, sessions_open, churn open)
    gauge_over = []
    t0 = time.monotonic()
    with open(a.csv, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t_s", "rss_kib", "fds", "sessions_open", "churn_open"])
        while time.monotonic() - t0 < a.seconds:
            await asyncio.sleep(1 - ((time.monotonic() - t0) % 1))
            t = round(time.monotonic() - t0, 3)
            try:
                row = (t, rss_kib(a.pid), fd_count(a.pid), await sessions_open(host, port), churn.open)
            except (OSError, RuntimeError, asyncio.TimeoutError) as e:
                churn.fail(f"sampling failed at {t}s: {e}")
                break
            samples.append(row)
            out.writerow(row)
            f.flush()
            if row[3] > a.load_connections + churn.peak_open:
                gauge_over.append(row)
    churner.cancel()
    await churn.finish()

    # ringws-load ends by itself (its --duration); wait for it.
    deadline = time.monotonic() + 60
    while a.load_pid and pid_alive(a.load_pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)

    results = []

    def check(name, ok, detail):
        results.append(ok)
        print(f"check {name}: {'ok' if ok else 'FAIL'} {detail}", flush=True)

    check(
        "echo",
        churn.mismatches == 0 and churn.failures == 0,
        f"churn: {churn.sessions} sessions, {churn.echoes} echoes verified, "
        f"{churn.pings[0]} server pings answered, "
        f"{churn.mismatches} mismatches, {churn.failures} failures"
        + (f" (first: {churn.first_failure})" if churn.first_failure else ""),
    )
    # The trend window: the second half, and never the first 30 s (the
    # churn reaches its steady population after 10 s, pools fill).
    start = max(a.seconds / 2, 30)
    half = [s for s in samples if s[0] >= start]
    xs = [s[0] for s in half]
    span = xs[-1] - xs[0] if len(xs) > 1 else 0
    if len(half) < 20:
        check("rss_slope", True, f"run too short to judge a trend ({len(half)} samples after {start:.0f} s)")
        check("fd_slope", True, f"run too short to judge a trend ({len(half)} samples after {start:.0f} s)")
    else:
        rss_b, rss_se = trend(xs, [s[1] for s in half])
        # RSS swings by several MiB as the allocator purges: in a short
        # window (under 180 s) one upswing looks like a trend, so there a
        # rise within the swing already seen before the window is not one.
        # A backend's bounded caches that fill over minutes (--cache-kib)
        # count as that swing too.
        floor = max(1024, swing(samples, 1, 10, start), a.cache_kib) if span < 180 else 1024
        check(
            "rss_slope",
            not rising(rss_b, rss_se, a.rss_slope_kib, span, floor),
            f"{rss_b:+.2f} ± {rss_se:.2f} KiB/s over {len(half)} samples from {start:.0f} s "
            f"(fails above {a.rss_slope_kib} KiB/s, 3 standard errors and a rise over the "
            f"window above {floor} KiB, the swing before it or 1 MiB); "
            f"RSS {samples[0][1]} -> {samples[-1][1]} KiB, "
            f"min {min(s[1] for s in samples)}, max {max(s[1] for s in samples)} KiB",
        )
        fd_b, fd_se = trend(xs, [s[2] - s[3] for s in half])
        check(
            "fd_slope",
            not rising(fd_b, fd_se, a.fd_slope, span, 2),
            f"{fd_b:+.4f} ± {fd_se:.4f} fd/s of (fds - sessions) over {len(half)} samples "
            f"(fails above {a.fd_slope} fd/s, 3 standard errors and 2 fds over the window); "
            f"fds max {max(s[2] for s in samples)}",
        )
    check(
        "gauge",
        not gauge_over,
        f"sessions_open max {max((s[3] for s in samples), default=0)} "
        f"(clients: {a.load_connections} steady + at most {churn.peak_open} churning)"
        + (f"; over at {gauge_over[0]}" if gauge_over else ""),
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            g = await sessions_open(host, port)
        except (OSError, RuntimeError, asyncio.TimeoutError):
            g = -1
        if g == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    check("gauge_zero", g == 0, f"sessions_open {g} after all clients left")
    deadline = time.monotonic() + 10
    while True:
        fds = fd_count(a.pid)
        if fds <= base_fds or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    check("fds_baseline", fds <= base_fds, f"fds {base_fds} before, {fds} after")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
