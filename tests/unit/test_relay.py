"""The relay over socket pairs and a mux pair: both directions, half-close, write-through of
mux sessions, and the connection-wide idle watch."""

from __future__ import annotations

import time

import gevent
import gevent.queue
import pytest
from gevent import socket

from revproxy.mux.client import MuxClient
from revproxy.mux.frame import NETWORK_TCP
from revproxy.mux.server import MuxServer
from revproxy.relay import relay
from revproxy.stream import SocketStream

TIMEOUT = 10


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    with gevent.Timeout(TIMEOUT):
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def sockets():
    """Two socket pairs: (outer_a, inner_a), (inner_b, outer_b); the relay joins the inners."""
    outer_a, inner_a = socket.socketpair()
    inner_b, outer_b = socket.socketpair()
    yield outer_a, SocketStream(inner_a), SocketStream(inner_b), outer_b
    for sock in (outer_a, inner_a, inner_b, outer_b):
        sock.close()


@pytest.fixture
def tunnel():
    """A mux client and server over a socket pair; accepted sessions are queued."""
    a, b = socket.socketpair()
    accepted = gevent.queue.Queue()
    client = MuxClient(SocketStream(a), "client")
    server = MuxServer(SocketStream(b), lambda session, frame: accepted.put(session), "server")
    runners = [gevent.spawn(client.run), gevent.spawn(server.run)]
    yield client, accepted
    client.close()
    server.close()
    gevent.joinall(runners, timeout=TIMEOUT)


def test_both_directions_and_half_close(sockets):
    outer_a, a, b, outer_b = sockets
    runner = gevent.spawn(relay, a, b)
    outer_a.sendall(b"request")
    outer_a.shutdown(socket.SHUT_WR)
    assert read_all(outer_b) == b"request"  # the half-close came through
    outer_b.sendall(b"x" * 300_000)  # the other way still flows
    outer_b.shutdown(socket.SHUT_WR)
    assert read_all(outer_a) == b"x" * 300_000
    runner.join(TIMEOUT)
    assert runner.successful()


def test_idle_connection_is_closed(sockets):
    outer_a, a, b, outer_b = sockets
    started = time.monotonic()
    runner = gevent.spawn(relay, a, b, idle=0.2)
    assert read_all(outer_a) == b""  # closed, not hung
    assert read_all(outer_b) == b""
    runner.join(TIMEOUT)
    assert runner.dead and time.monotonic() - started < TIMEOUT


def test_one_way_transfer_longer_than_the_idle_period_is_not_cut(sockets):
    outer_a, a, b, outer_b = sockets
    runner = gevent.spawn(relay, a, b, idle=0.2)
    received = gevent.spawn(read_all, outer_b)
    deadline = time.monotonic() + 1.0  # five idle periods, traffic one way only
    sent = 0
    while time.monotonic() < deadline:
        outer_a.sendall(b"y" * 1000)
        sent += 1000
        gevent.sleep(0.01)
    outer_a.shutdown(socket.SHUT_WR)
    assert len(received.get(timeout=TIMEOUT)) == sent
    outer_b.shutdown(socket.SHUT_WR)
    runner.join(TIMEOUT)
    assert runner.successful()


def test_session_written_through_to_a_socket(tunnel):
    client, accepted = tunnel
    outer, inner = socket.socketpair()
    session = client.open_session(NETWORK_TCP, "example.com", 80, b"hello")
    far = accepted.get(timeout=TIMEOUT)
    runner = gevent.spawn(relay, far, SocketStream(inner))
    assert outer.recv(5) == b"hello"
    session.send(b"z" * 200_000)
    session.close_write()
    assert read_all(outer) == b"z" * 200_000  # the session's End is the socket's EOF
    outer.sendall(b"reply")  # the socket's direction is still open
    outer.shutdown(socket.SHUT_WR)
    chunks = []
    with gevent.Timeout(TIMEOUT):
        while data := session.recv():
            chunks.append(data)
    assert b"".join(chunks) == b"reply"
    runner.join(TIMEOUT)
    assert runner.successful()
    outer.close()


def test_session_that_ended_before_the_relay_started(tunnel):
    client, accepted = tunnel
    outer, inner = socket.socketpair()
    session = client.open_session(NETWORK_TCP, "example.com", 80, b"early")
    session.close_write()
    far = accepted.get(timeout=TIMEOUT)
    gevent.sleep(0.05)  # the End arrives before the relay attaches
    runner = gevent.spawn(relay, far, SocketStream(inner))
    assert read_all(outer) == b"early"
    outer.close()
    runner.join(TIMEOUT)
    assert runner.dead


def test_session_reset_closes_the_socket(tunnel):
    client, accepted = tunnel
    outer, inner = socket.socketpair()
    session = client.open_session(NETWORK_TCP, "example.com", 80, b"x")
    far = accepted.get(timeout=TIMEOUT)
    runner = gevent.spawn(relay, far, SocketStream(inner))
    assert outer.recv(1) == b"x"
    session.close()  # not ended first: the peer sees an error End
    assert read_all(outer) == b""
    runner.join(TIMEOUT)
    assert runner.dead
    outer.close()
