"""The relay over socket pairs and a mux pair: both directions, half-close, write-through of
mux sessions, and the connection-wide idle watch."""

from __future__ import annotations

import time

import gevent
import gevent.queue
import pytest
from gevent import socket
from gevent.event import Event

from revproxy.mux.client import MuxClient
from revproxy.mux.connection import WRITE_BUFFER
from revproxy.mux.frame import NETWORK_TCP, STATUS_KEEP, FrameDecoder, encode_new
from revproxy.mux.server import MuxServer
from revproxy.net.relay import relay
from revproxy.net.stream import SocketStream
from revproxy.policy import SessionPolicy

from .sockets import plain

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
    yield outer_a, SocketStream(plain(inner_a)), SocketStream(plain(inner_b)), outer_b
    for sock in (outer_a, inner_a, inner_b, outer_b):
        sock.close()


@pytest.fixture
def tunnel():
    """A mux client and server over a socket pair; accepted sessions are queued."""
    a, b = socket.socketpair()
    accepted = gevent.queue.Queue()
    client = MuxClient(SocketStream(plain(a)), "client")
    server = MuxServer(SocketStream(plain(b)), lambda session, frame: accepted.put(session),
                       "server")
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
    runner = gevent.spawn(relay, a, b, SessionPolicy(conn_idle=0.2))
    assert read_all(outer_a) == b""  # closed, not hung
    assert read_all(outer_b) == b""
    runner.join(TIMEOUT)
    assert runner.dead and time.monotonic() - started < TIMEOUT


def test_one_way_transfer_longer_than_the_idle_period_is_not_cut(sockets):
    outer_a, a, b, outer_b = sockets
    runner = gevent.spawn(relay, a, b, SessionPolicy(conn_idle=0.2))
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


def relay_session(tunnel, first: bytes, end_first: bool = False, **options):
    """Open a session carrying ``first`` (ended at once if asked) and relay its far end to a
    socket pair's ``inner`` end; returns (session, far end, inner, outer, done event)."""
    client, accepted = tunnel
    outer, pair_end = socket.socketpair()
    inner = plain(pair_end)
    session = client.open_session(NETWORK_TCP, "example.com", 80, first)
    if end_first:
        session.close_write()
    far = accepted.get(timeout=TIMEOUT)
    if end_first:
        gevent.sleep(0.05)  # the End arrives before the relay attaches
    done = Event()
    relay(far, SocketStream(inner), on_done=done.set, **options)
    return session, far, inner, outer, done


def test_session_written_through_to_a_socket(tunnel):
    session, far, inner, outer, done = relay_session(tunnel, b"hello")
    assert not done.is_set()  # relay() returned at once: no greenlet held
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
    assert done.wait(TIMEOUT)
    assert inner.fileno() == -1 and far.closed  # both ends closed by the relay
    outer.close()


def test_session_that_ended_before_the_relay_started(tunnel):
    _, _, _, outer, done = relay_session(tunnel, b"early", end_first=True)
    assert read_all(outer) == b"early"
    outer.close()
    assert done.wait(TIMEOUT)


def test_session_reset_closes_the_socket(tunnel):
    session, _, _, outer, done = relay_session(tunnel, b"x")
    assert outer.recv(1) == b"x"
    session.close()  # not ended first: the peer sees an error End
    assert read_all(outer) == b""
    assert done.wait(TIMEOUT)
    outer.close()


def test_idle_written_through_session_is_closed(tunnel):
    session, _, _, outer, done = relay_session(tunnel, b"x", policy=SessionPolicy(conn_idle=0.2))
    assert outer.recv(1) == b"x"
    assert read_all(outer) == b""  # closed, not hung
    assert done.wait(TIMEOUT)
    with pytest.raises(ConnectionResetError), gevent.Timeout(TIMEOUT):
        session.recv()  # the peer got an error End
    outer.close()


def test_full_tunnel_queue_pauses_reading_and_loses_nothing():
    """While the tunnel's peer reads nothing, the relay stops reading the socket once the
    write queue is full; when the peer reads again, every byte arrives, in order."""
    tunnel_end, peer = socket.socketpair()
    accepted = gevent.queue.Queue()
    server = MuxServer(SocketStream(plain(tunnel_end)), lambda s, frame: accepted.put(s), "server")
    reader = gevent.spawn(server.run)
    peer.sendall(encode_new(1, NETWORK_TCP, "example.com", 80))
    far = accepted.get(timeout=TIMEOUT)
    outer, inner = socket.socketpair()
    done = Event()
    relay(far, SocketStream(plain(inner)), on_done=done.set)
    data = bytes(range(256)) * (4 * WRITE_BUFFER // 256)  # 4 MiB: more than queue + buffers
    sender = gevent.spawn(outer.sendall, data)
    with gevent.Timeout(TIMEOUT):
        while not server.congested:
            gevent.sleep(0.01)
    taken = far.bytes_out
    gevent.sleep(0.2)
    assert far.bytes_out == taken < len(data)  # reading paused
    decoder = FrameDecoder()
    payload = bytearray()
    with gevent.Timeout(TIMEOUT):
        while len(payload) < len(data):
            for frame in decoder.feed(peer.recv(65536)):
                if frame.status == STATUS_KEEP:
                    payload += frame.payload
    assert payload == data
    sender.get(timeout=TIMEOUT)
    outer.close()
    assert not done.wait(0.1)  # the socket ended, the session's peer has not: still open
    server.close()
    reader.join(TIMEOUT)
    assert done.wait(TIMEOUT)  # the tunnel closed: the relay ended
    peer.close()


class Wrapped:
    """A stream that is not a bare socket stream (as a protocol's wrapper is): the relay runs
    its pumps instead of a splice."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream

    def recv(self) -> bytes:
        return self.stream.recv()

    def send(self, data) -> None:
        self.stream.send(data)

    def close_write(self) -> None:
        self.stream.close_write()

    def close(self) -> None:
        self.stream.close()

    def settimeout(self, seconds) -> None:
        self.stream.settimeout(seconds)


def test_a_cut_session_resets_a_wrapped_visitor(tunnel):
    """The tunnel dies under a session relayed by the pumps: the visitor's TCP connection is
    reset, not ended in good order (a truncated download must look truncated)."""
    client, accepted = tunnel
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        visitor = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    session = client.open_session(NETWORK_TCP, "example.com", 80, b"GET")
    far = accepted.get(timeout=TIMEOUT)
    runner = gevent.spawn(relay, Wrapped(SocketStream(plain(ours))), session)
    far.send(b"part of the answer")
    visitor.settimeout(TIMEOUT)
    assert visitor.recv(100) == b"part of the answer"
    client.close()  # the tunnel is gone
    with pytest.raises(ConnectionResetError):
        while visitor.recv(100):
            pass
    runner.join(TIMEOUT)
    visitor.close()
