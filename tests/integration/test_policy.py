"""``policy`` for real: a level's ``connIdle`` closes an idle visitor, both straight through
a freedom outbound and through a portal and bridge (revproxy at both ends); generous
bounds, since the idle timer looks once per period (so between one and two periods). A SOCKS
inbound's ``userLevel`` gives its clients that level's ``handshake`` time and its visitors
that level's ``connIdle``, in the worker a visitor is handed over to as well."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.conftest import USER_ID, free_port, start_end, wait_served

CONN_IDLE = 2


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never says a word (nor closes)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for sock in held:
        sock.close()
    listener.close()


def seconds_until_closed(port: int, limit: float = 30.0) -> float:
    """Connect, say nothing, and time how long until the server side ends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as visitor:
        start = time.monotonic()
        try:
            data = visitor.recv(1)
        except ConnectionResetError:
            data = b""
        assert data == b""
        return time.monotonic() - start


def policy(conn_idle: int) -> dict:
    return {"levels": {"0": {"connIdle": conn_idle, "handshake": 4}}}


def test_conn_idle_closes_an_idle_connection(tmp_path, silent_server) -> None:
    public = free_port()
    config = {
        "log": {"loglevel": "info"},
        "policy": policy(CONN_IDLE),
        "inbounds": [{"tag": "in", "listen": "127.0.0.1", "port": public,
                      "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": silent_server}}],
        "outbounds": [{"protocol": "freedom"}],
        "server": {"workers": 1},
    }
    proc = start_end("revproxy", "direct", config, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", public), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.alive(), proc.output()
                time.sleep(0.1)
        took = seconds_until_closed(public)
        assert CONN_IDLE * 0.75 <= took <= CONN_IDLE * 2 + 4, took
    finally:
        proc.stop()


def test_conn_idle_closes_an_idle_visitor_of_a_portal(tmp_path, backend) -> None:
    public, tunnel = free_port(), free_port()
    portal = portal_config(USER_ID, public, tunnel, loglevel="info")
    portal["policy"] = policy(CONN_IDLE)
    portal["server"] = {"workers": 1}
    bridge = bridge_config(USER_ID, backend, tunnel, loglevel="info")
    bridge["server"] = {"workers": 1}
    ends = [start_end("revproxy", "portal", portal, tmp_path),
            start_end("revproxy", "bridge", bridge, tmp_path)]
    try:
        wait_served(public, procs=tuple(ends))
        took = seconds_until_closed(public)
        # The backend answers nothing until asked: the visitor is idle from the start.
        assert CONN_IDLE * 0.75 <= took <= CONN_IDLE * 2 + 4, took
    finally:
        for end in ends:
            end.stop()


# -- the level of a SOCKS inbound (``userLevel``), as V2Ray gives it (issue 14)

SOCKS_CONNECT = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"  # to 127.0.0.1:80


def socks_inbound(port: int, level: int) -> dict:
    return {"tag": "external", "listen": "127.0.0.1", "port": port, "protocol": "socks",
            "settings": {"userLevel": level}}


def wait_accepting(port: int, proc) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and proc.alive(), proc.output()
            time.sleep(0.1)


def test_a_socks_handshake_has_its_user_level_s_time(tmp_path) -> None:
    public = free_port()
    config = {
        "log": {"loglevel": "info"},
        # The level's 1 s, not level 0's (nor revproxy's default of 4 s).
        "policy": {"levels": {"0": {"handshake": 8}, "1": {"handshake": 1}}},
        "inbounds": [socks_inbound(public, 1)],
        "outbounds": [{"protocol": "freedom"}],
        "server": {"workers": 1},
    }
    proc = start_end("revproxy", "direct", config, tmp_path)
    try:
        wait_accepting(public, proc)
        with socket.create_connection(("127.0.0.1", public), timeout=30) as client:
            client.sendall(b"\x05\x02\x00")  # a greeting one method short
            start = time.monotonic()
            try:
                data = client.recv(1)
            except ConnectionResetError:
                data = b""
            took = time.monotonic() - start
        assert data == b""
        assert 0.5 <= took < 3.9, took  # level 0's is 8 s, the old fixed one 4 s
    finally:
        proc.stop()


def test_conn_idle_of_a_socks_user_level_holds_in_every_portal_worker(tmp_path,
                                                                     silent_server) -> None:
    """A SOCKS visitor of a two-worker portal whose one tunnel is in the other worker is
    handed over: the level travels with it."""
    public, tunnel = free_port(), free_port()
    portal = portal_config(USER_ID, public, tunnel, loglevel="debug")
    portal["inbounds"][0] = socks_inbound(public, 1)
    portal["policy"] = {"levels": {"1": {"connIdle": CONN_IDLE}}}  # level 0's: 300 s
    portal["server"] = {"workers": 2}
    bridge = bridge_config(USER_ID, silent_server, tunnel, loglevel="info")
    bridge["reverse"]["bridges"][0].update(minTunnels=1, maxTunnels=1)
    bridge["server"] = {"workers": 1}
    ends = [start_end("revproxy", "portal", portal, tmp_path),
            start_end("revproxy", "bridge", bridge, tmp_path)]
    visitors: list[tuple[socket.socket, float]] = []
    try:
        deadline = time.monotonic() + 30
        while "registered" not in ends[0].output():
            assert time.monotonic() < deadline and all(e.alive() for e in ends), \
                ends[0].output()[-3000:]
            time.sleep(0.1)
        time.sleep(1.5)  # the sibling sees the tunnel in the state table
        # The two workers share the listener: visit until one visitor was handed over.
        for _ in range(30):
            visitor = socket.create_connection(("127.0.0.1", public), timeout=30)
            visitor.sendall(SOCKS_CONNECT)
            answer = b""
            while len(answer) < 12:
                data = visitor.recv(12 - len(answer))
                assert data, answer
                answer += data
            assert answer[:4] == b"\x05\x00\x05\x00", answer
            visitors.append((visitor, time.monotonic()))
            time.sleep(0.1)
            if "hand-over of" in ends[0].output():
                break
        assert "hand-over of" in ends[0].output(), "no visitor was handed over"
        for visitor, opened in visitors:
            try:
                data = visitor.recv(1)
            except ConnectionResetError:
                data = b""
            took = time.monotonic() - opened
            assert data == b""
            assert CONN_IDLE * 0.75 <= took <= CONN_IDLE * 2 + 4, took
    finally:
        for visitor, _ in visitors:
            visitor.close()
        for end in ends:
            end.stop()
