"""One stalled party on a tunnel, with real processes on loopback: a visitor that stops reading a
large download, and a backend that stops reading an upload. Twenty other visitors' requests
through the same portal (one worker per end, one tunnel) all succeed and the revproxy ends'
memory stays bounded. Between two revproxy ends the stalled session is paused (revproxy's
PAUSE/RESUME signals, mux/connection.py) and loses nothing when its party reads again; with
V2Ray at the other end, which offers no signals, it is reset, and the reset is plain
Mux.Cool. No timing is asserted (latency figures belong in scripts/bench); timeouts only keep
a broken build from hanging."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time

import psutil
import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.conftest import (
    USER_ID,
    V2RAY,
    Proc,
    free_port,
    start_end,
    wait_served,
)
from tests.integration.test_server import Loop, bridge_with, portal_with

TIMEOUT = 60
OTHERS = 20
ROUNDS = 10  # requests each other visitor completes at least, across the stall
STALLED_SIZE = 200_000_000
MEMORY_BOUND = 64 * 2**20  # RSS growth of one end's processes; unbounded buffering is 200 MB
TCP_ESTABLISHED, TCP_CLOSE = 1, 7


@pytest.fixture(scope="module")
def fault_backend(tmp_path_factory) -> int:
    """The port of a backend serving the integration pages plus ``POST /stall``
    (tests/faults/stalling_backend.py)."""
    tmp = tmp_path_factory.mktemp("stalling-backend")
    port_file = tmp / "port"
    proc = Proc("backend", [sys.executable, "-m", "tests.faults.stalling_backend",
                            str(port_file)], tmp)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if time.monotonic() > deadline or not proc.alive():
            pytest.fail(f"backend did not start: {proc.output()}")
        time.sleep(0.05)
    yield int(port_file.read_text())
    proc.stop()


def kinds(*combos: tuple[str, str]):
    return [pytest.param(combo, id=f"{combo[0]}_bridge-{combo[1]}_portal",
                         marks=[pytest.mark.skipif(V2RAY is None and "v2ray" in combo,
                                                   reason="v2ray binary not installed")])
            for combo in combos]


@contextlib.contextmanager
def ends(tmp, backend: int, bridge_kind: str, portal_kind: str):
    """Portal and bridge, one worker each and one tunnel for revproxy; yields (public port,
    the revproxy ends)."""
    public, tunnel = free_port(), free_port()
    portal = start_end(portal_kind, "portal",
                       portal_with(tmp, public, tunnel, 1) if portal_kind == "revproxy"
                       else portal_config(USER_ID, public, tunnel), tmp)
    bridge = start_end(bridge_kind, "bridge",
                       bridge_with(tmp, backend, tunnel, 1, min_tunnels=1, max_tunnels=1)
                       if bridge_kind == "revproxy" else bridge_config(USER_ID, backend, tunnel),
                       tmp)
    try:
        wait_served(public, procs=(portal, bridge))
        revproxy_ends = [proc for proc, kind in ((portal, portal_kind), (bridge, bridge_kind))
                         if kind == "revproxy"]
        yield public, revproxy_ends
    finally:
        bridge.stop()
        portal.stop()


class PeakMemory(threading.Thread):
    """Samples the RSS of each process tree until stopped; ``growth()`` is the largest rise
    over the first sample, per tree."""

    def __init__(self, procs: list[Proc]) -> None:
        super().__init__(daemon=True)
        self.roots = [psutil.Process(proc.pid) for proc in procs]
        self.first = [self._rss(root) for root in self.roots]
        self.peak = list(self.first)
        self.stop_flag = threading.Event()
        self.start()

    @staticmethod
    def _rss(root: psutil.Process) -> int:
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stop_flag.wait(0.1):
            now = [self._rss(root) for root in self.roots]
            self.peak = [max(p, n) for p, n in zip(self.peak, now, strict=True)]

    def growth(self) -> list[int]:
        self.stop_flag.set()
        self.join(TIMEOUT)
        return [peak - first for peak, first in zip(self.peak, self.first, strict=True)]


def tcp_state(sock: socket.socket) -> int:
    """The connection's TCP state, read without consuming anything (first byte of tcp_info)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def stalled_visitor(port: int) -> socket.socket:
    """A visitor asking for the big download with a 4 KiB receive buffer, not reading."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(f"GET /blob/{STALLED_SIZE} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return stalled


def other_visitors(port: int) -> list[Loop]:
    loops = [Loop(port) for _ in range(OTHERS)]
    for loop in loops:
        loop.start()
    return loops


def finish(loops: list[Loop]) -> None:
    """Let every loop complete ``ROUNDS`` requests (or fail), stop them, check none failed."""
    wait_for(lambda: all(loop.ok + len(loop.failed) >= ROUNDS for loop in loops),
             "the other visitors' requests")
    for loop in loops:
        loop.finish()
    failures = [failure for loop in loops for failure in loop.failed]
    assert failures == []
    assert all(loop.ok >= ROUNDS for loop in loops)


def test_a_stalled_visitor_is_paused_and_the_others_are_served(fault_backend, tmp_path):
    with ends(tmp_path, fault_backend, "revproxy", "revproxy") as (public, revproxy_ends):
        memory = PeakMemory(revproxy_ends)
        stalled = stalled_visitor(public)  # it reads only later
        loops = other_visitors(public)
        finish(loops)
        assert tcp_state(stalled) == TCP_ESTABLISHED  # waiting, not reset
        assert all(growth < MEMORY_BOUND for growth in memory.growth())
        received = 0
        stalled.settimeout(TIMEOUT)
        while received < STALLED_SIZE and (data := stalled.recv(1 << 20)):
            received += len(data)
        assert received > STALLED_SIZE  # every byte of the body, and the head before it
        stalled.close()


@pytest.mark.parametrize("combo", kinds(("v2ray", "revproxy")))
def test_a_stalled_visitor_is_reset_and_the_others_are_served(combo, fault_backend,
                                                              tmp_path):
    with ends(tmp_path, fault_backend, *combo) as (public, revproxy_ends):
        memory = PeakMemory(revproxy_ends)
        stalled = stalled_visitor(public)  # and it never reads
        loops = other_visitors(public)
        wait_for(lambda: tcp_state(stalled) != TCP_ESTABLISHED, "the stalled visitor's end")
        finish(loops)
        assert tcp_state(stalled) == TCP_CLOSE  # a reset, not an orderly end (CLOSE_WAIT)
        received = 0
        stalled.settimeout(TIMEOUT)
        with pytest.raises(ConnectionResetError):
            while data := stalled.recv(1 << 20):
                received += len(data)
        assert received < STALLED_SIZE
        stalled.close()
        assert all(growth < MEMORY_BOUND for growth in memory.growth())


def test_a_stalled_backend_pauses_the_upload_and_the_others_are_served(fault_backend,
                                                                       tmp_path):
    with ends(tmp_path, fault_backend, "revproxy", "revproxy") as (public, revproxy_ends):
        memory = PeakMemory(revproxy_ends)
        sock = socket.create_connection(("127.0.0.1", public), timeout=TIMEOUT)
        sock.sendall(f"POST /stall HTTP/1.1\r\nHost: t\r\n"
                     f"Content-Length: {STALLED_SIZE}\r\n\r\n".encode())
        sock.setblocking(False)
        chunk, sent = b"u" * (1 << 16), 0
        loops = other_visitors(public)
        while not all(loop.ok + len(loop.failed) >= ROUNDS for loop in loops):
            try:  # the visitor keeps offering its upload; the portal stops taking it
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
        finish(loops)
        assert sent < STALLED_SIZE // 4
        assert tcp_state(sock) == TCP_ESTABLISHED  # waiting, not reset
        sock.close()
        assert all(growth < MEMORY_BOUND for growth in memory.growth())


@pytest.mark.parametrize("combo", kinds(("revproxy", "v2ray")))
def test_a_stalled_backend_is_reset_and_the_others_are_served(combo, fault_backend, tmp_path):
    with ends(tmp_path, fault_backend, *combo) as (public, revproxy_ends):
        memory = PeakMemory(revproxy_ends)
        outcome: list[BaseException] = []

        def upload() -> None:
            chunk = b"u" * (1 << 20)
            try:
                with socket.create_connection(("127.0.0.1", public), timeout=TIMEOUT) as sock:
                    sock.sendall(f"POST /stall HTTP/1.1\r\nHost: t\r\n"
                                 f"Content-Length: {STALLED_SIZE}\r\n\r\n".encode())
                    for _ in range(STALLED_SIZE // len(chunk)):
                        sock.sendall(chunk)
                    outcome.append(AssertionError("the whole upload went through"))
            except OSError as exc:
                outcome.append(exc)

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        loops = other_visitors(public)
        uploader.join(TIMEOUT)
        assert not uploader.is_alive(), "the stalled upload was never ended"
        finish(loops)
        assert len(outcome) == 1
        assert isinstance(outcome[0], (ConnectionResetError, BrokenPipeError)), outcome[0]
        assert all(growth < MEMORY_BOUND for growth in memory.growth())
