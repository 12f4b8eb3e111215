"""``policy`` for real: a level's ``connIdle`` closes an idle visitor, both straight through
a freedom outbound and through a portal and bridge (revproxy at both ends); generous
bounds, since the idle timer looks once per period (so between one and two periods)."""

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
