"""Idle visitors across tunnel drains, with real processes on loopback: 700 keep-alive visitors
open in three waves through one revproxy portal and bridge (one worker each, one serving
tunnel), each wave's tunnel drained after 256 sessions and replaced; then all of them
stay idle past the portal's silence limit (10 s; drained tunnels were once closed as silent
after about 11 s, with their visitors on them). None is closed by the proxy: each still gets
an answer on its own connection afterwards. No timing is asserted; the hold is long enough to
cover the silence limit twice and more."""

from __future__ import annotations

import contextlib
import socket
import time

from tests.integration.conftest import free_port, start_end, wait_served
from tests.integration.test_server import bridge_with, portal_with

VISITORS = 700  # more than two drains' worth (256 sessions each)
HOLD = 30.0  # seconds idle; the old cut came at +11 s
TIMEOUT = 30
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    """Read one HTTP response (head and a Content-Length body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} bytes")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return head.split(b"\r\n")[0] + b" " + body


def test_idle_visitors_outlive_the_drains_of_their_tunnels(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_with(tmp_path, public, tunnel, 1), tmp_path)
    bridge = start_end("revproxy", "bridge",
                       bridge_with(tmp_path, backend, tunnel, 1, min_tunnels=1, max_tunnels=1),
                       tmp_path)
    held: list[socket.socket] = []
    try:
        wait_served(public, procs=(portal, bridge))
        for wave, drains in ((300, 1), (300, 2), (VISITORS - 600, 2)):
            for _ in range(wave):
                sock = socket.create_connection(("127.0.0.1", public), timeout=TIMEOUT)
                held.append(sock)
                sock.sendall(REQUEST)
                assert answer(sock).endswith(b"hello from the hidden host\n")
            # The portal drains a tunnel past 256 sessions at its next heartbeat: then the
            # next wave rides the bridge's replacement.
            deadline = time.monotonic() + TIMEOUT
            while portal.output().count("draining tunnel") < drains:
                assert time.monotonic() < deadline, portal.output()[-3000:]
                time.sleep(0.2)
        time.sleep(HOLD)
        assert portal.alive() and bridge.alive()
        closed = []
        for index, sock in enumerate(held):
            try:
                sock.sendall(REQUEST)
                if not answer(sock).startswith(b"HTTP/1.1 200"):
                    closed.append(index)
            except OSError:
                closed.append(index)
        assert closed == [], f"{len(closed)} of {VISITORS} idle visitors were cut"
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        bridge.stop()
        portal.stop()
