#!/usr/bin/env python3
"""A small RFC 6455 WebSocket client on the Python standard library only (3.8+).

No TLS (ws:// only), no extensions. It exists so the deploy checks need nothing installed.

Subcommands
-----------
pod-check   Start a server command the way the Knative pod would, connect real WebSocket
            clients on 127.0.0.1, send SIGTERM, and check the drain contract:
            every client gets Close 1001, /readyz answers 503 and new upgrades 503 while
            draining, the process exits 0 within the grace period. Used by deploy/pod-local.sh.

                wsclient.py pod-check --clients 8 --grace 7 --env RINGWS_WORKERS=1 -- CMD...

            --expect-fail: the command must instead exit non-zero before serving
            (a forced io_uring backend where io_uring is forbidden).

            For a server inside a container runtime (deploy/runc-local.sh): --port is the
            port it listens on, --term-cmd the command that delivers SIGTERM (`runc kill ID
            TERM`) in place of kill(2) on CMD, --pid-file the file where CMD writes the server's
            PID (`runc run --pid-file`), read for the /proc checks (--expect-status,
            --expect-ro-root, --expect-seccomp).

hold        Open N connections to a URL, echo one message on each, hold them open (answering
            pings) for a while, and report how they ended. For watching Knative scale
            (deploy/README.md); runs inside the cluster with
                kubectl run ... --image=python:3.12-slim -i -- python - hold ... < deploy/wsclient.py

                wsclient.py hold --url ws://ringws.default.svc.cluster.local/ws --clients 2000 --seconds 600
"""

import argparse
import base64
import hashlib
import os
import random
import resource
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    pass


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------

def encode_frame(opcode, payload=b"", fin=True, mask=True):
    """One frame; clients must mask (RFC 6455 5.3)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes(head) + key + masked


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


def parse_frame(buf):
    """Parse one server frame from the front of buf.

    Returns (fin, opcode, payload, consumed) or None if buf holds less than a frame.
    Raises ProtocolError for frames a server must not send (masked, reserved bits).
    """
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    if b0 & 0x70:
        raise ProtocolError("reserved bits set (no extension was negotiated)")
    if b1 & 0x80:
        raise ProtocolError("server frame is masked")
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack_from("!H", buf, 2)[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack_from("!Q", buf, 2)[0]
        pos = 10
    if len(buf) < pos + n:
        return None
    return bool(b0 & 0x80), b0 & 0x0F, bytes(buf[pos:pos + n]), pos + n


def parse_close(payload):
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
    return None, ""


# --------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------

def accept_key(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def read_http_head(sock, deadline):
    """Read an HTTP response head. Returns (status, headers dict, bytes after the head)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise ProtocolError("connection closed during the HTTP response (%r)" % buf[:200])
        buf += chunk
        if len(buf) > 65536:
            raise ProtocolError("HTTP response head too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProtocolError("bad status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers, rest


def http_get(host, port, path, timeout=2.0):
    """GET over a fresh connection. Returns (status, headers, body)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                   % (path, host, port)).encode())
        status, headers, rest = read_http_head(s, deadline)
        body = rest
        want = int(headers.get("content-length", "-1"))
        while want < 0 or len(body) < want:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            body += chunk
        return status, headers, body


class Client:
    """One blocking WebSocket connection."""

    def __init__(self, sock, rest=b""):
        self.sock = sock
        self.buf = bytearray(rest)

    @classmethod
    def connect(cls, host, port, path="/ws", timeout=3.0, host_header=None, pipelined=b""):
        """Open a connection and upgrade it. `pipelined` bytes (e.g. a frame) are sent in the
        same write as the request, as eager clients do."""
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = base64.b64encode(os.urandom(16)).decode()
            req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                   % (path, host_header or "%s:%d" % (host, port), key))
            sock.sendall(req.encode() + pipelined)
            status, headers, rest = read_http_head(sock, deadline)
            if status != 101:
                raise UpgradeRefused(status, headers)
            if headers.get("sec-websocket-accept") != accept_key(key):
                raise ProtocolError("wrong Sec-WebSocket-Accept %r" % headers.get("sec-websocket-accept"))
            if headers.get("upgrade", "").lower() != "websocket":
                raise ProtocolError("101 without Upgrade: websocket")
            return cls(sock, rest)
        except BaseException:
            sock.close()
            raise

    def send(self, opcode, payload=b"", fin=True):
        self.sock.sendall(encode_frame(opcode, payload, fin))

    def recv_frame(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            f = parse_frame(self.buf)
            if f:
                del self.buf[:f[3]]
                return f[:3]
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete frame within %.1fs" % timeout)
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("TCP closed by the server")
            self.buf += chunk

    def recv_message(self, timeout):
        """Next data message as (opcode, payload), answering pings; a Close frame comes
        back as (OP_CLOSE, payload)."""
        deadline = time.monotonic() + timeout
        parts, first_op = [], None
        while True:
            fin, op, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if op == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                return OP_CLOSE, payload
            if op == OP_CONT:
                if first_op is None:
                    raise ProtocolError("continuation frame without a first fragment")
            else:
                if first_op is not None:
                    raise ProtocolError("new data frame inside a fragmented message")
                first_op = op
            parts.append(payload)
            if fin:
                return first_op, b"".join(parts)

    def wait_eof(self, timeout):
        """After the close handshake, the server should close TCP. True if it did."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.sock.recv(65536):
                    return True
        except (socket.timeout, OSError):
            return False
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class UpgradeRefused(Exception):
    def __init__(self, status, headers):
        super().__init__("upgrade answered %d" % status)
        self.status, self.headers = status, headers


# --------------------------------------------------------------------------------------
# pod-check
# --------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.failed = 0
        self.passed = 0

    def ok(self, msg):
        self.passed += 1
        print("    ok    " + msg, flush=True)

    def fail(self, msg):
        self.failed += 1
        print("    FAIL  " + msg, flush=True)

    def check(self, cond, msg, detail=""):
        if cond:
            self.ok(msg)
        else:
            self.fail(msg + (": " + detail if detail else ""))
        return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_http(port, path, want, deadline, proc):
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "process exited with %s" % proc.returncode
        try:
            status, _, _ = http_get("127.0.0.1", port, path, timeout=0.5)
            if status == want:
                return None
            last = "answered %d" % status
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    return "no %d within the deadline (last: %s)" % (want, last)


def client_worker(idx, cl, laggard, got_close, may_reply, grace, result):
    """Wait for the server's Close; answer it (the laggard only once allowed)."""
    try:
        op, payload = cl.recv_message(grace)
        while op != OP_CLOSE:  # a late echo is fine, keep reading
            op, payload = cl.recv_message(grace)
        code, reason = parse_close(payload)
        result["code"], result["reason"] = code, reason
        got_close.set()
        if laggard:
            may_reply.wait(grace)
        try:
            cl.send(OP_CLOSE, close_payload(code if code else 1000))
        except OSError as e:
            result["reply_error"] = str(e)
        result["eof"] = cl.wait_eof(grace)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        result["error"] = "%s: %s" % (type(e).__name__, e)
        got_close.set()
    finally:
        cl.close()


def server_pid(args, proc):
    """The server's PID: CMD itself, or the one CMD wrote to --pid-file."""
    if not args.pid_file:
        return proc.pid
    try:
        with open(args.pid_file) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def check_proc(rep, args, pid):
    """/proc checks of the running server: status fields and a read-only root."""
    try:
        with open("/proc/%d/status" % pid) as f:
            status = {k: v.split()[0] if v.split() else ""
                      for k, _, v in (l.partition(":") for l in f)}
    except (OSError, TypeError) as e:
        if args.expect_seccomp or args.expect_status or args.expect_ro_root:
            rep.fail("/proc status of the server (pid %s): %s" % (pid, e))
        return
    print("    /proc/%d/status Seccomp: %s (0 none, 2 filter), Uid: %s, Gid: %s, CapEff: %s, "
          "NoNewPrivs: %s" % (pid, status.get("Seccomp", "?"), status.get("Uid", "?"),
                              status.get("Gid", "?"), status.get("CapEff", "?"),
                              status.get("NoNewPrivs", "?")), flush=True)
    if args.expect_seccomp:
        rep.check(status.get("Seccomp") == "2", "a seccomp filter is in force")
    for kv in args.expect_status:
        k, _, v = kv.partition("=")
        rep.check(status.get(k) == v, "/proc status %s: %s" % (k, v),
                  "got %r" % status.get(k))
    if args.expect_ro_root:
        try:
            with open("/proc/%d/mountinfo" % pid) as f:
                root = [l.split() for l in f if l.split()[4] == "/"]
            opts = root[-1][5].split(",") if root else []
            rep.check("ro" in opts, "root filesystem mounted read-only", ",".join(opts))
        except OSError as e:
            rep.fail("root filesystem mounted read-only: %s" % e)


def pod_check(args):
    rep = Report()
    port = args.port or free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PORT": str(port),
           # what Knative puts in every user container
           "K_SERVICE": "ringws", "K_CONFIGURATION": "ringws", "K_REVISION": "ringws-00001"}
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    log_path = args.log
    print("    start PORT=%d %s" % (port, " ".join(args.cmd)), flush=True)
    log = open(log_path, "wb")
    proc = subprocess.Popen(args.cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    clients = []
    try:
        if args.expect_fail:
            try:
                rc = proc.wait(timeout=args.ready_timeout)
            except subprocess.TimeoutExpired:
                rc = None
            rep.check(rc not in (None, 0), "exits non-zero instead of serving",
                      "still running" if rc is None else "exit code %s" % rc)
            last = tail(log_path, 3).strip().splitlines()
            if last:
                print("    log   " + last[-1], flush=True)
            if args.expect_log:
                rep.check(any(args.expect_log.lower() in l.lower() for l in last),
                          "log gives the reason: %r" % args.expect_log)
            return rep

        t_start = time.monotonic()
        err = wait_http(port, "/readyz", 200, t_start + args.ready_timeout, proc)
        if not rep.check(err is None, "ready: /readyz 200", err or ""):
            print(tail(log_path), flush=True)
            return rep
        print("    ready after %.2fs" % (time.monotonic() - t_start), flush=True)
        status, _, _ = http_get("127.0.0.1", port, "/healthz")
        rep.check(status == 200, "/healthz 200", "got %d" % status)
        check_proc(rep, args, server_pid(args, proc))
        with open(log_path, errors="replace") as f:
            startup_log = f.read().splitlines()
        for line in startup_log:
            if "uring" in line.lower() or "epoll" in line.lower():
                print("    log   " + line.rstrip()[:240], flush=True)
        if args.expect_log:
            rep.check(any(args.expect_log.lower() in l.lower() for l in startup_log),
                      "startup log mentions %r" % args.expect_log)

        # Connect and echo one message per client.
        n_ok = 0
        for i in range(args.clients):
            try:
                msg = ("hello %d" % i).encode()
                if i == 0:
                    # first frame pipelined behind the upgrade request
                    cl = Client.connect("127.0.0.1", port, args.path,
                                        pipelined=encode_frame(OP_TEXT, msg))
                else:
                    cl = Client.connect("127.0.0.1", port, args.path)
                    if i % 3 == 2:
                        msg = os.urandom(300 + 1000 * i)  # 16-bit length, binary
                        cl.send(OP_BINARY, msg)
                    else:
                        cl.send(OP_TEXT, msg)
                clients.append(cl)
                op, got = cl.recv_message(3.0)
                want_op = OP_BINARY if i % 3 == 2 else OP_TEXT
                if op == want_op and got == msg:
                    n_ok += 1
                else:
                    rep.fail("client %d: echo mismatch (opcode %d, %d bytes)" % (i, op, len(got)))
            except Exception as e:  # noqa: BLE001
                rep.fail("client %d: %s: %s" % (i, type(e).__name__, e))
        rep.check(n_ok == args.clients, "%d/%d clients upgraded and got their echo"
                  % (n_ok, args.clients), "see above")
        if n_ok != args.clients:
            return rep

        # SIGTERM; every client must get Close 1001.
        got_close = [threading.Event() for _ in clients]
        may_reply = threading.Event()
        results = [{} for _ in clients]
        lag = len(clients) - 1  # the laggard answers only after the draining checks
        threads = [threading.Thread(target=client_worker, daemon=True,
                                    args=(i, cl, i == lag, got_close[i], may_reply, args.grace,
                                          results[i]))
                   for i, cl in enumerate(clients)]
        for t in threads:
            t.start()
        t_term = time.monotonic()
        if args.term_cmd:
            term = subprocess.run(shlex.split(args.term_cmd), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=args.grace)
            rep.check(term.returncode == 0, "SIGTERM delivered: %s" % args.term_cmd,
                      "exit code %d: %s" % (term.returncode, term.stderr.strip()[-200:]))
        else:
            os.kill(proc.pid, signal.SIGTERM)
            print("    sent SIGTERM to pid %d" % proc.pid, flush=True)
        got_close[lag].wait(args.grace)

        # Draining: the laggard has not answered, so the server is still up and draining.
        if proc.poll() is None:
            try:
                status, _, body = http_get("127.0.0.1", port, "/readyz")
                rep.check(status == 503, "draining: /readyz 503", "got %d %r" % (status, body[:40]))
            except OSError as e:
                rep.fail("draining: /readyz: %s" % e)
            try:
                Client.connect("127.0.0.1", port, args.path).close()
                rep.fail("draining: new upgrade refused with 503: it was accepted")
            except UpgradeRefused as e:
                rep.check(e.status == 503, "draining: new upgrade refused with 503",
                          "got %d" % e.status)
                rep.check("retry-after" in e.headers, "draining: the 503 carries Retry-After")
            except OSError as e:
                rep.fail("draining: new upgrade: %s" % e)
        else:
            rep.fail("server exited (code %s) while a session was still closing"
                     % proc.returncode)
        may_reply.set()
        for t in threads:
            t.join(max(0.0, t_term + args.grace - time.monotonic()))

        bad = ["client %d: %s" % (i, r.get("error") or "close code %s" % r.get("code"))
               for i, r in enumerate(results) if r.get("code") != 1001]
        rep.check(not bad, "all %d clients got Close 1001 (going away)" % len(clients),
                  "; ".join(bad))
        reasons = sorted({r.get("reason", "") for r in results if r.get("reason")})
        if reasons:
            print("    close reason(s): %s" % ", ".join(repr(r) for r in reasons), flush=True)
        no_eof = [i for i, r in enumerate(results) if r.get("code") == 1001 and not r.get("eof")]
        rep.check(not no_eof, "server closed TCP after each close handshake",
                  "clients %s saw no EOF" % no_eof)

        try:
            rc = proc.wait(timeout=max(0.0, t_term + args.grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t_term
        if rep.check(rc is not None, "exited within the %.1fs grace period (%.2fs after SIGTERM)"
                     % (args.grace, took), "still running after %.1fs" % args.grace):
            rep.check(rc == 0, "exit code 0", "exit code %s" % rc)
        return rep
    finally:
        for cl in clients:
            cl.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if rep.failed:
            print("    --- server log (tail) ---\n" + tail(log_path), flush=True)


# --------------------------------------------------------------------------------------
# hold
# --------------------------------------------------------------------------------------

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def hold(args):
    u = urllib.parse.urlsplit(args.url)
    if u.scheme != "ws":
        print("only ws:// URLs are supported", file=sys.stderr)
        return 2
    host, port, path = u.hostname, u.port or 80, (u.path or "/") + ("?" + u.query if u.query else "")
    limit = raise_nofile()
    if args.clients + 16 > limit:
        print("open-file limit %d is too low for %d clients" % (limit, args.clients), file=sys.stderr)
        return 2
    sel = selectors.DefaultSelector()
    conns, failed = {}, {}
    t0 = time.monotonic()
    for i in range(args.clients):
        try:
            cl = Client.connect(host, port, path, timeout=10, host_header=args.host)
            msg = b"hold %d" % i
            cl.send(OP_TEXT, msg)
            op, got = cl.recv_message(10)
            if got != msg:
                raise ProtocolError("echo mismatch")
        except UpgradeRefused as e:
            failed["HTTP %d" % e.status] = failed.get("HTTP %d" % e.status, 0) + 1
            continue
        except Exception as e:  # noqa: BLE001
            key = type(e).__name__
            failed[key] = failed.get(key, 0) + 1
            continue
        cl.sock.setblocking(False)
        conns[cl.sock.fileno()] = cl
        sel.register(cl.sock, selectors.EVENT_READ, cl)
        if (i + 1) % 500 == 0:
            print("%d connected (%.0fs)" % (len(conns), time.monotonic() - t0), flush=True)
        if args.rate:
            time.sleep(1.0 / args.rate)
    print("%d connected, %d failed %s" % (len(conns), sum(failed.values()), failed or ""), flush=True)
    closes = {}
    end = time.monotonic() + args.seconds
    last_report = time.monotonic()
    while conns and time.monotonic() < end:
        for key, _ in sel.select(timeout=1.0):
            cl = key.data
            try:
                chunk = cl.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                closes["TCP closed"] = closes.get("TCP closed", 0) + 1
                sel.unregister(cl.sock)
                del conns[cl.sock.fileno()]
                cl.close()
                continue
            cl.buf += chunk
            while True:
                f = parse_frame(cl.buf)
                if not f:
                    break
                del cl.buf[:f[3]]
                fin, op, payload = f[:3]
                if op == OP_PING:
                    cl.sock.setblocking(True)
                    cl.send(OP_PONG, payload)
                    cl.sock.setblocking(False)
                elif op == OP_CLOSE:
                    code, _ = parse_close(payload)
                    k = "Close %s" % code
                    closes[k] = closes.get(k, 0) + 1
                    try:
                        cl.sock.setblocking(True)
                        cl.send(OP_CLOSE, close_payload(code or 1000))
                    except OSError:
                        pass
                    sel.unregister(cl.sock)
                    del conns[cl.sock.fileno()]
                    cl.close()
                    break
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            print("%d open, ended: %s" % (len(conns), closes or "none"), flush=True)
    print("done: %d still open, ended: %s" % (len(conns), closes or "none"), flush=True)
    for cl in conns.values():
        try:
            cl.sock.setblocking(True)
            cl.send(OP_CLOSE, close_payload(1000))
        except OSError:
            pass
        cl.close()
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd_name", required=True)

    p = sub.add_parser("pod-check", help="start a server, drain it with SIGTERM, check the contract")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--grace", type=float, default=7.0,
                   help="seconds from SIGTERM by which the process must have exited")
    p.add_argument("--ready-timeout", type=float, default=5.0)
    p.add_argument("--path", default="/ws")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the server (on top of PORT and K_* variables)")
    p.add_argument("--log", default=os.devnull, help="file for the server's output")
    p.add_argument("--expect-seccomp", action="store_true",
                   help="check that a seccomp filter is in force in the server process")
    p.add_argument("--expect-log", metavar="TEXT",
                   help="check that a line of the server's startup log contains TEXT (any case)")
    p.add_argument("--expect-fail", action="store_true",
                   help="the command must exit non-zero before becoming ready")
    p.add_argument("--port", type=int, default=0,
                   help="the port the server listens on (default: a free one, passed as PORT)")
    p.add_argument("--term-cmd", metavar="COMMAND",
                   help="run this to send SIGTERM (e.g. 'runc kill ID TERM') instead of kill(2)")
    p.add_argument("--pid-file", help="where CMD writes the server's PID, for the /proc checks")
    p.add_argument("--expect-status", action="append", default=[], metavar="FIELD=VALUE",
                   help="check the first word of a /proc/PID/status field, e.g. Uid=65532")
    p.add_argument("--expect-ro-root", action="store_true",
                   help="check that the server's root filesystem is mounted read-only")
    p.add_argument("cmd", nargs="+")

    h = sub.add_parser("hold", help="open N connections and keep them open")
    h.add_argument("--url", required=True, help="ws://host[:port]/path")
    h.add_argument("--host", help="Host header, when connecting to an ingress by address")
    h.add_argument("--clients", type=int, default=100)
    h.add_argument("--seconds", type=float, default=300)
    h.add_argument("--rate", type=float, default=0, help="connections per second (0: as fast as possible)")

    args = ap.parse_args(argv)
    if args.cmd_name == "pod-check":
        rep = pod_check(args)
        # Not the "N passed, N failed" form: that line belongs to the caller's summary.
        print("    result: %d checks ok, %d failed" % (rep.passed, rep.failed), flush=True)
        return 1 if rep.failed or rep.passed == 0 else 0
    return hold(args)


if __name__ == "__main__":
    random.seed()
    sys.exit(main(sys.argv[1:]))
