#!/usr/bin/env python3
"""Prints a free loopback port below 32768 (20000-32000).

A port from the kernel's ephemeral range (what binding port 0 gives) could be
taken by a client's socket before the server binds it. Used by the Autobahn
and interop scripts.
"""
import random
import socket

for _ in range(1000):
    port = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 20000-32000")
