"""Faults from peers, with real processes on loopback: a handshake flood at the VMess port
(idle, partial and garbage connections), running out of file descriptors, and a bridge killed
in the middle of a download. Each checks that the others are still served and that nothing
is dropped silently; timings are generous bounds so the tests cannot hang (the figures are in
``scripts/bench --faults``)."""

from __future__ import annotations

import os
import socket
import time

import psutil
import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.backend import PAGE
from tests.integration.conftest import (
    USER_ID,
    free_port,
    request,
    start_end,
    wait_served,
)

TIMEOUT = 30.0


def wait_until(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def site(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_config(USER_ID, public, tunnel, "info"),
                       tmp_path)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp_path)
    wait_served(public, procs=(portal, bridge))
    yield public, tunnel, portal, bridge
    bridge.stop()
    portal.stop()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_a_handshake_flood_is_shed_and_visitors_are_served(site):
    public, tunnel, portal, _ = site
    flood = []
    for i in range(150):
        sock = socket.create_connection(("127.0.0.1", tunnel), timeout=5)
        if i % 3 == 1:
            sock.sendall(os.urandom(10))  # a partial header
        elif i % 3 == 2:
            sock.sendall(os.urandom(4000))  # garbage
        flood.append(sock)  # i % 3 == 0: idle
    try:
        # Visitors are served while the flood is held open.
        for _ in range(10):
            assert request(public, timeout=20) == (200, PAGE)
        # One handshake deadline (4 s) plus the drain: every flood connection is closed by
        # the server, whatever it sent.
        wait_until(lambda: all(closed_by_server(s) for s in flood), "the flood to be closed")
    finally:
        for sock in flood:
            sock.close()
    assert portal.alive()
    assert "Traceback" not in portal.output()
    assert request(public, timeout=20) == (200, PAGE)


def test_out_of_file_descriptors_no_spin_and_recovery(backend, tmp_path):
    """A portal at its fd limit neither spins on accept nor drops what it accepted without a
    word; once visitors leave it serves again."""
    public, tunnel = free_port(), free_port()
    config = portal_config(USER_ID, public, tunnel)
    config["server"] = {"workers": 1}
    portal = start_end("revproxy", "portal", config, tmp_path)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp_path)
    held: list[socket.socket] = []
    try:
        wait_served(public, procs=(portal, bridge))
        worker = psutil.Process(portal.pid).children()[0]
        # Lower the worker's limit in place (prlimit), to just above what it uses now.
        in_use = worker.num_fds()
        worker.rlimit(psutil.RLIMIT_NOFILE, (in_use + 40, in_use + 40))
        for _ in range(120):  # many more than it can take: each visitor costs it 2 fds
            held.append(socket.create_connection(("127.0.0.1", public), timeout=5))
        time.sleep(1.0)
        before = worker.cpu_times()
        time.sleep(3.0)
        after = worker.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert busy < 1.5, f"the worker spun at its fd limit: {busy:.2f} s CPU in 3 s"
        assert "Too many open files" in portal.output() or "EMFILE" in portal.output()
        for sock in held:
            sock.close()
        held.clear()
        wait_served(public, timeout=TIMEOUT, procs=(portal, bridge))
        assert portal.alive()
    finally:
        for sock in held:
            sock.close()
        bridge.stop()
        portal.stop()


def test_a_killed_bridge_resets_the_download_promptly(site):
    """The visitor of a download cut by a bridge crash sees a reset, not an orderly end that
    would pass the truncated file for a whole one."""
    public, _, portal, bridge = site
    sock = socket.create_connection(("127.0.0.1", public), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET /blob/209715200 HTTP/1.1\r\nHost: x\r\n\r\n")
    received = len(sock.recv(65536))
    assert received
    bridge.signal_all(9)  # master and workers, as a crash or a power cut of the process
    killed = time.monotonic()
    ended = None
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                ended = "eof"
                break
            received += len(data)
    except ConnectionResetError:
        ended = "reset"
    except TimeoutError:
        pytest.fail("the visitor's download neither ended nor was reset")
    finally:
        sock.close()
    assert ended == "reset" and time.monotonic() - killed < TIMEOUT
    assert received < 209715200  # it was cut, not finished
    assert portal.alive()
