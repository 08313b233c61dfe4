#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/TARGET/.

The seeds are the cases of tests/protocol.rs, tests/echo.rs, tests/limits.rs
and tests/faults.rs, in each target's input format:

- handshake: the bytes a client sends first (an HTTP request, perhaps with
  frames behind it);
- session: [flags][n][n x u16 cut points][client frames...] (see
  fuzz_targets/session.rs); flags bit 0 pipelines the first chunk with the
  upgrade request;
- adapter: [op, size] pairs (see fuzz_targets/adapter.rs).

Run from anywhere: python3 fuzz/seeds.py (idempotent; files are named by content).
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(fin, opcode, payload, mask=MASK, rsv=0, length=None, force_ext=None):
    """A client frame; length overrides the announced length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask is not None else 0
    if force_ext == 8 or n > 0xFFFF:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    elif force_ext == 2 or n >= 126:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | n])
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return frame(True, 8, struct.pack(">H", code) + reason)


def request(path="/ws", method="GET", version="1.1", headers=None):
    h = headers if headers is not None else [
        ("Host", "x"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    lines = [f"{method} {path} HTTP/{version}"] + [f"{k}: {v}" for k, v in h]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade_headers(**changes):
    h = {
        "Host": "x",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    h.update(changes)
    return [(k, v) for k, v in h.items() if v is not None]


def session_streams():
    text = "héllo wörld ✓ 𝄞".encode()
    yield frame(True, 1, b"hello")
    yield frame(True, 2, bytes(range(256)))
    yield frame(True, 1, b"")
    yield frame(True, 2, b"")
    yield frame(True, 2, b"x" * 125)
    yield frame(True, 2, b"y" * 126)
    yield frame(True, 2, b"z" * 4096)  # exactly --max-message-size
    yield frame(True, 2, b"z" * 4097)  # one over: 1009
    yield frame(True, 2, b"w" * 300, force_ext=8)  # non-minimal length
    yield frame(True, 1, text)
    # Fragments, a code point split between them.
    yield frame(False, 1, text[:2]) + frame(False, 0, text[2:7]) + frame(True, 0, text[7:])
    yield frame(False, 2, b"ab") + frame(True, 9, b"ping in between") + frame(True, 0, b"cd")
    yield frame(False, 2, b"a" * 3000) + frame(True, 0, b"b" * 2000)  # 1009 over fragments
    yield frame(True, 9, b"ping") + frame(True, 10, b"pong") + frame(True, 1, b"after")
    yield b"".join(frame(True, 9, struct.pack(">H", i)) for i in range(100))
    yield b"".join(frame(True, 1, f"msg {i}".encode()) for i in range(50))
    yield frame(True, 1, b"bye") + close(1000)
    yield frame(True, 8, b"")
    yield close(4999, "going ✓".encode())
    for bad in (0, 999, 1004, 1005, 1006, 1015, 2000, 5000):
        yield close(bad)
    yield close(1000, b"\xff\xfe")  # 1007
    yield frame(True, 8, b"\x03")  # one-byte close payload
    yield frame(True, 1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")  # 1007
    yield frame(False, 1, b"ok") + frame(True, 0, b"\xc0\xaf")  # 1007 across fragments
    yield frame(False, 1, b"\xf4\x90")  # fail fast in the first fragment
    yield frame(True, 1, b"x", mask=None)  # unmasked: 1002
    yield frame(True, 1, b"x", rsv=0x40)  # RSV1: 1002
    yield frame(True, 3, b"x")  # reserved opcode
    yield frame(True, 0x0B, b"x")
    yield frame(False, 9, b"x")  # fragmented ping
    yield frame(True, 9, b"p" * 126)  # control over 125
    yield frame(True, 8, struct.pack(">H", 1000) + b"r" * 124)  # 126-byte close
    yield frame(True, 0, b"orphan")  # continuation without a start
    yield frame(False, 1, b"a") + frame(True, 1, b"b")  # new message inside one
    yield frame(True, 2, b"", length=1 << 63)  # 2^63 length header: 1009
    yield frame(True, 2, b"", length=(1 << 64) - 1)
    yield frame(True, 2, b"abc", length=100)  # EOF mid-payload
    yield frame(True, 2, b"abc")[:1]  # EOF mid-header
    yield frame(True, 2, b"x" * 200)[:3]


def main():
    out = {"handshake": [], "session": []}
    for s in session_streams():
        out["session"].append(b"\x00\x00" + s)
        out["session"].append(b"\x01\x00" + s)
        if len(s) > 4:
            cuts = struct.pack("<HHH", 1, len(s) // 2, len(s) - 1)
            out["session"].append(b"\x01\x03" + cuts + s)
    hs = out["handshake"]
    hs.append(request())
    hs.append(request() + frame(True, 1, b"pipelined with the upgrade"))
    hs.append(request() + close(1000))
    hs.append(request(headers=upgrade_headers()) + frame(True, 9, b"p") + frame(True, 2, b"x", length=1 << 63))
    hs.append(request(method="POST"))
    hs.append(request(headers=upgrade_headers(Upgrade=None)))
    hs.append(request(headers=upgrade_headers(Connection="keep-alive")))
    hs.append(request(headers=upgrade_headers(**{"Sec-WebSocket-Version": "8"})))
    hs.append(request(headers=upgrade_headers(**{"Sec-WebSocket-Key": "c2hvcnQ="})))
    hs.append(request(headers=upgrade_headers(**{"Sec-WebSocket-Key": None})))
    hs.append(request(headers=upgrade_headers() + [("Sec-WebSocket-Key", KEY)]))
    hs.append(request(version="1.0"))
    hs.append(request(path="/other"))
    hs.append(request(path="/healthz", headers=[("Host", "x")]))
    hs.append(request(path="/readyz", headers=[("Host", "x")]))
    hs.append(request(path="/metrics", headers=[("Host", "x"), ("Connection", "close")]))
    hs.append(request(path="/healthz", headers=[("Host", "x")]) + request())
    hs.append(request(headers=upgrade_headers(**{"Content-Length": "5"})) + b"hello")
    hs.append(request(headers=upgrade_headers(**{"Transfer-Encoding": "chunked"})) + b"0\r\n\r\n")
    hs.append(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webso")  # slowloris, then EOF
    hs.append(b"GET /ws HTTP/1.1\r\n")
    hs.append(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    hs.append(b"BREW /ws HTCPCP/1.0\r\n\r\n")
    hs.append(b"GET /ws HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10000 + b"\r\n\r\n")
    # adapter: [op, size] pairs (see fuzz_targets/adapter.rs): 0 peer write,
    # 1 adapter read, 2 adapter write, 3 flush, 4 peer read, 5 vectored
    # write, 6 peer shutdown, 7 a read left armed (polled once, then other ops).
    out["adapter"] = [
        bytes([0, 10, 1, 3, 1, 200, 2, 20, 3, 0, 4, 0]),
        bytes([0, 255, 0, 255, 1, 0, 1, 130, 1, 255, 6, 0, 1, 255, 1, 255]),
        bytes([2, 255, 2, 255, 2, 255, 5, 250, 3, 0, 4, 0]),
        bytes([7, 100, 0, 50, 1, 100, 7, 1, 0, 1, 1, 1]),
        bytes([0, 127] * 20 + [1, 0] * 40),
        bytes([2, 0] * 64 + [3, 0]),
        bytes([6, 0, 7, 5, 1, 5]),
    ]
    for target, seeds in out.items():
        d = os.path.join(HERE, "seeds", target)
        os.makedirs(d, exist_ok=True)
        for s in seeds:
            name = hashlib.sha1(s).hexdigest()
            with open(os.path.join(d, name), "wb") as f:
                f.write(s)
        print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
