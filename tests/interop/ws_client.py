#!/usr/bin/env python3
"""Python `websockets` (a strict RFC 6455 client) against ringws.

usage:
  ws_client.py suite LABEL URL     echo, fragments, ping, close codes, limits
  ws_client.py deflate LABEL URL   against `ringws --deflate shared`: the offer is
                                   accepted (with and without the client's own
                                   client_no_context_takeover), JSON and binary
                                   echo through compression both ways
  ws_client.py deflate-dedicated LABEL URL
                                   the same against `--deflate dedicated`: the
                                   server keeps context (no
                                   server_no_context_takeover in its answer),
                                   also with a 12-bit server window offered (the
                                   server then compresses every echo itself,
                                   referring back into earlier messages)
  ws_client.py drain LABEL [NAME=]URL...
                                   connect to every URL, print READY, then expect
                                   the server to close each with 1001 (SIGTERM
                                   drain, sent by run.sh once READY is printed)

Prints one "PASS [LABEL] name: detail" / "FAIL [LABEL] name: detail" line per
check and exits 1 if any failed.
"""
import asyncio
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

STEP_TIMEOUT = 15
MAX_MESSAGE = int(os.environ.get("RINGWS_MAX_MESSAGE_SIZE", str(16 << 20)))

results = []


def report(ok, label, name, detail):
    line = "%s [%s] python %s: %s" % ("PASS" if ok else "FAIL", label, name, detail)
    results.append(ok)
    print(line, flush=True)


def pattern(n, seed=7):
    # deterministic, non-repeating-looking bytes without importing random
    return bytes(((i * 2654435761 + seed) >> 13) & 0xFF for i in range(n))


async def step(label, name, coro):
    try:
        ok, detail = await asyncio.wait_for(coro, STEP_TIMEOUT)
    except Exception as e:  # a failed step must not stop the others
        ok, detail = False, "%s: %s" % (type(e).__name__, e)
    report(ok, label, name, detail)


async def recv_fragments(ws):
    frags = []
    async for frag in ws.recv_streaming():
        frags.append(frag)
    return frags


async def suite(label, url):
    # Offer permessage-deflate (the default) so the decline is exercised too.
    async with connect(url, max_size=4 << 20, open_timeout=10, close_timeout=5) as ws:
        async def handshake():
            ext = ws.response.headers.get("Sec-WebSocket-Extensions")
            offered = ws.request.headers.get("Sec-WebSocket-Extensions")
            return (ws.response.status_code == 101 and ext is None,
                    "101, offered %r, answered %s" % (offered, "no extension" if ext is None else repr(ext)))
        await step(label, "handshake declines permessage-deflate", handshake())

        async def text():
            msg = "Hello ringws \u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9 \u2713 \U0001F680"
            await ws.send(msg)
            got = await ws.recv()
            return got == msg, repr(got)
        await step(label, "text echo", text())

        async def binary():
            msg = pattern(4096)
            await ws.send(msg)
            got = await ws.recv()
            return got == msg and isinstance(got, bytes), "%d bytes back (%s)" % (len(got), type(got).__name__)
        await step(label, "binary echo", binary())

        async def empty():
            await ws.send("")
            got = await ws.recv()
            return got == "", repr(got)
        await step(label, "empty text echo", empty())

        async def frag_text():
            parts = ["frag", "men", "ted \u2713 ", "text"]
            await ws.send(iter(parts))
            frags = await recv_fragments(ws)
            got = "".join(frags)
            return got == "".join(parts), "sent %d fragments + empty FIN frame, got %r back in %d frame(s)" % (len(parts), got, len(frags))
        await step(label, "fragmented text echo", frag_text())

        async def frag_binary():
            data = pattern(3000, seed=3)
            parts = [data[:1], data[1:1000], data[1000:]]
            await ws.send(iter(parts))
            frags = await recv_fragments(ws)
            got = b"".join(frags)
            return got == data, "sent %d fragments + empty FIN frame, got %d bytes back in %d frame(s)" % (len(parts), len(got), len(frags))
        await step(label, "fragmented binary echo", frag_binary())

        async def big():
            msg = pattern(1 << 20, seed=99)
            await ws.send(msg)
            got = await ws.recv()
            return got == msg, "%d bytes back" % len(got)
        await step(label, "1 MiB binary echo", big())

        async def ping():
            waiter = await ws.ping(b"ringws-ping")
            latency = await asyncio.wait_for(waiter, 5)
            # the connection must still echo after the control frame
            await ws.send("after ping")
            got = await ws.recv()
            return got == "after ping", "pong after %.2f ms, echo still works" % (latency * 1000)
        await step(label, "ping/pong", ping())

        async def close4001():
            await ws.close(4001, "python done")
            rcvd = ws.protocol.close_rcvd
            return (rcvd is not None and rcvd.code == 4001,
                    "server answered close %s" % (None if rcvd is None else "%d %r" % (rcvd.code, rcvd.reason)))
        await step(label, "close 4001 echoed", close4001())

    async def close1000():
        async with connect(url, open_timeout=10, close_timeout=5, compression=None) as ws2:
            await ws2.send("bye")
            await ws2.recv()
            await ws2.close()
            rcvd = ws2.protocol.close_rcvd
            return (rcvd is not None and rcvd.code == 1000,
                    "server answered close %s" % (None if rcvd is None else rcvd.code))
    await step(label, "close 1000 echoed", close1000())

    async def oversize():
        size = MAX_MESSAGE + 1
        # No `async with`: websockets 17 trips over its own closing of an
        # already-closed transport in __aexit__ after this exchange.
        ws3 = await connect(url, open_timeout=10, close_timeout=5, compression=None,
                            max_size=None, write_limit=1 << 20)
        try:
            await ws3.send(b"\0" * size)
            await asyncio.wait_for(ws3.recv(), 10)
            return False, "a %d-byte message was echoed although the limit is %d" % (size, MAX_MESSAGE)
        except ConnectionClosed:
            rcvd = ws3.protocol.close_rcvd
            return (rcvd is not None and rcvd.code == 1009,
                    "%d-byte message: server closed with %s" % (size, None if rcvd is None else "%d %r" % (rcvd.code, rcvd.reason)))
        finally:
            try:
                await ws3.close()
            except Exception:
                pass
    await step(label, "message over --max-message-size closes 1009", oversize())


async def drain(label, urls):
    conns = []
    for arg in urls:
        cut = arg.find("=ws")
        name, url = (arg[:cut], arg[cut + 1:]) if cut > 0 else (arg, arg)
        ws = await connect(url, open_timeout=10, close_timeout=5, ping_interval=None)
        await ws.send("before drain")
        ok = await asyncio.wait_for(ws.recv(), 5) == "before drain"
        conns.append((name, ws, ok))
    print("READY", flush=True)

    async def wait_one(ws, echo_ok):
        try:
            await asyncio.wait_for(ws.wait_closed(), 12)
        except asyncio.TimeoutError:
            await ws.close()
            return False, "not closed by the server within 12 s of SIGTERM"
        rcvd = ws.protocol.close_rcvd
        ok = echo_ok and rcvd is not None and rcvd.code == 1001
        return ok, "server sent close %s" % (None if rcvd is None else "%d %r" % (rcvd.code, rcvd.reason))

    for (name, ws, echo_ok) in conns:
        await step(label, "SIGTERM drain -> close 1001 (%s)" % name, wait_one(ws, echo_ok))


async def deflate(label, url, dedicated=False):
    import json
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    offers = [(True, None), (False, None)]
    if dedicated:
        offers.append((True, 12))
    for (takeover, server_bits) in offers:
        name = ("with" if takeover else "without") + " context takeover"
        if server_bits:
            name += ", server_max_window_bits=%d" % server_bits
        factory = ClientPerMessageDeflateFactory(
            client_no_context_takeover=not takeover, client_max_window_bits=True,
            server_max_window_bits=server_bits)
        async with connect(url, extensions=[factory], compression=None, max_size=4 << 20,
                           open_timeout=10, close_timeout=5) as ws:
            async def handshake():
                ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                offered = ws.request.headers.get("Sec-WebSocket-Extensions")
                active = [type(e).__name__ for e in ws.protocol.extensions]
                server_keeps = "server_no_context_takeover" not in ext
                return ("permessage-deflate" in ext and "client_no_context_takeover" in ext
                        and server_keeps == dedicated and active == ["PerMessageDeflate"],
                        "offered %r, answered %r" % (offered, ext))
            await step(label, "deflate handshake (client offers %s)" % name, handshake())

            async def echoes():
                sizes = []
                for i in range(50):
                    msg = json.dumps({"seq": i, "user": "ana", "text": "hello " * (i * 13)})
                    await ws.send(msg)
                    got = await ws.recv()
                    if got != msg:
                        return False, "message %d differs" % i
                    sizes.append(len(msg))
                data = pattern(300000)
                await ws.send(data)
                if await ws.recv() != data:
                    return False, "300 kB binary differs"
                await ws.send(iter(["frag " * 100, "mented " * 100]))
                got = await ws.recv()
                if got != "frag " * 100 + "mented " * 100:
                    return False, "fragmented text differs"
                return True, "50 JSON messages (%d..%d B), 300 kB binary, a fragmented text" % (
                    min(sizes), max(sizes))
            await step(label, "deflate echo (%s)" % name, echoes())


def main(argv):
    if len(argv) < 4 or argv[1] not in ("suite", "drain", "deflate", "deflate-dedicated"):
        sys.exit(__doc__)
    mode, label, urls = argv[1], argv[2], argv[3:]
    try:
        if mode == "suite":
            asyncio.run(suite(label, urls[0]))
        elif mode in ("deflate", "deflate-dedicated"):
            asyncio.run(deflate(label, urls[0], dedicated=mode == "deflate-dedicated"))
        else:
            asyncio.run(drain(label, urls))
    except Exception as e:
        report(False, label, mode, "%s: %s" % (type(e).__name__, e))
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
