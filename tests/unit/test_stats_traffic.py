"""A worker's traffic counters (revproxy/net/traffic.py): bytes read from the streams that
count them, credited to inbound, outbound and user keys, sampled while sessions last."""

from __future__ import annotations

import socket

from revproxy.net.session import Session, Target
from revproxy.net.stream import SocketStream
from revproxy.net.traffic import (
    HANDSHAKE_FAILURES,
    KIND_INBOUND,
    KIND_OUTBOUND,
    KIND_USER,
    Traffic,
    counted,
)

KEYS = {(KIND_INBOUND, "in"): 0, (KIND_OUTBOUND, "out"): 1, (KIND_USER, "a@b"): 2,
        (KIND_OUTBOUND, "portal"): 3}


class Counting:
    def __init__(self) -> None:
        self.bytes_received = 0
        self.bytes_sent = 0


class Wrapper:
    """A TLS or VMess stream: it counts nothing itself."""

    def __init__(self, inner: object, attribute: str = "inner") -> None:
        setattr(self, attribute, inner)


def session() -> Session:
    return Session(Target("tcp", "example.com", 80), "in", email="a@b")


def test_counted_finds_the_socket_under_wrappers() -> None:
    bottom = Counting()
    assert counted(bottom) is bottom
    assert counted(Wrapper(Wrapper(bottom, "transport"))) is bottom
    assert counted(Wrapper(Wrapper(bottom), "stream")) is bottom
    assert counted(Wrapper(None)) is None
    assert counted(None) is None


def test_inbound_outbound_and_user_are_counted_from_their_connections() -> None:
    traffic = Traffic(KEYS)
    accepted, opened = Counting(), Counting()
    s = session()
    metered = traffic.start(s, Wrapper(accepted), "in", "out", "a@b")
    s.upstream = opened
    accepted.bytes_received, accepted.bytes_sent = 100, 5000
    opened.bytes_sent, opened.bytes_received = 120, 4900  # the outbound's own framing
    traffic.sample()
    assert traffic.totals(KIND_INBOUND, "in") == (100, 5000, 1)
    assert traffic.totals(KIND_USER, "a@b") == (100, 5000, 1)
    assert traffic.totals(KIND_OUTBOUND, "out") == (120, 4900, 1)
    accepted.bytes_sent += 1000
    traffic.end(metered)
    traffic.end(metered)  # twice is once
    assert traffic.totals(KIND_INBOUND, "in") == (100, 6000, 1)
    assert len(traffic) == 0
    traffic.sample()
    assert traffic.totals(KIND_INBOUND, "in") == (100, 6000, 1)


def test_an_outbound_without_a_connection_is_credited_with_the_inbounds_bytes() -> None:
    traffic = Traffic(KEYS)
    accepted = Counting()
    metered = traffic.start(session(), accepted, "in", "portal")
    accepted.bytes_received, accepted.bytes_sent = 7, 70
    traffic.end(metered)
    assert traffic.totals(KIND_OUTBOUND, "portal") == (7, 70, 1)


def test_a_dialed_stream_is_forgotten_once_closed() -> None:
    """The bridge's tunnels: opened through the dispatcher, never ended there."""
    traffic = Traffic(KEYS)
    a, b = socket.socketpair()
    stream = SocketStream(a)
    s = Session(Target("tcp", "tunnel.example", 0), "in")
    s.upstream = stream
    traffic.start(s, None, "in", "out")
    stream.sock.setblocking(False)
    stream.send(b"x" * 10)
    traffic.sample()
    assert traffic.totals(KIND_OUTBOUND, "out") == (10, 0, 1)
    assert traffic.totals(KIND_INBOUND, "in") == (10, 0, 1)  # mirrored
    stream.close()
    traffic.sample()
    assert len(traffic) == 0
    b.close()


def test_unknown_keys_and_handed_over_sessions() -> None:
    traffic = Traffic(KEYS)
    assert traffic.start(session(), Counting(), "other", "other") is None
    traffic.start(session(), Counting(), "in", "other", new=False)
    assert traffic.totals(KIND_INBOUND, "in") == (0, 0, 0)
    assert traffic.totals(KIND_INBOUND, "nothing") == (0, 0, 0)
    traffic.count(HANDSHAKE_FAILURES)
    assert traffic.events[HANDSHAKE_FAILURES] == 1


def test_a_socket_stream_counts_what_it_moves() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    stream = SocketStream(a)
    stream.send(b"hello")
    assert stream.send_nowait(b"!!")
    b.sendall(b"abc")
    assert stream.recv() == b"abc"
    assert (stream.bytes_received, stream.bytes_sent) == (3, 7)
    stream.close()
    b.close()
