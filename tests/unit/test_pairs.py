"""Carried visitors (net/pairs.py) over real sockets: bytes and datagrams both ways through a
``Carrier``, resets passed on both ways, the far end counted by nobody, the hand-off that says
a descriptor is carried, and the portal carrying a wrapped visitor to a sibling."""

from __future__ import annotations

import os
import socket
import struct
from collections import deque

import gevent
import pytest
from gevent.event import Event
from gevent.socket import wait_read, wait_write

from revproxy.net.pairs import CarriedSocket, Carrier, UncountedStream, visitor_stream
from revproxy.net.session import Session, Target
from revproxy.net.stream import Prefixed, SocketStream
from revproxy.policy import DEFAULT
from revproxy.reverse.directory import SiblingTunnel
from revproxy.reverse.portal import PortalOutbound
from revproxy.server import handoff
from revproxy.server.handoff import Handoff
from tests.unit.test_handoff import EXAMPLE, Loop
from tests.unit.test_portal_handoff import FakeDirectory

WAIT = 5.0
_RESET = struct.pack("ii", 1, 0)


def recv(sock: socket.socket, size: int = 65536) -> bytes:
    """A cooperative recv with a deadline (the relay runs in other greenlets)."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            wait_read(sock.fileno(), WAIT, TimeoutError("nothing came"))


def tcp_visitor() -> tuple[socket.socket, socket.socket]:
    """(the visitor's end, the accepted end), non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    client.setblocking(False)
    served.setblocking(False)
    return client, served


class Datagrams:
    """A datagram stream (as a SOCKS UDP session is): recv gives queued datagrams."""

    def __init__(self) -> None:
        self.incoming: deque[bytes] = deque()
        self.sent: list[bytes] = []
        self.arrived = Event()
        self.closed = False
        self._readable = Event()

    def put(self, data: bytes) -> None:
        self.incoming.append(data)
        self._readable.set()

    def recv(self) -> bytes:
        while not self.incoming:
            if self.closed:
                raise ConnectionAbortedError("closed")
            self._readable.clear()
            self._readable.wait()
        return self.incoming.popleft()

    def send(self, data: bytes | memoryview) -> None:
        self.sent.append(bytes(data))
        self.arrived.set()

    def close_write(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self._readable.set()

    def settimeout(self, seconds: float | None) -> None:
        pass


def test_a_stream_carrier_is_a_loopback_tcp_connection() -> None:
    carrier = Carrier(datagrams=False)
    try:
        assert isinstance(carrier.far, CarriedSocket)
        assert carrier.far.family == socket.AF_INET and carrier.far.type == socket.SOCK_STREAM
        assert carrier.far.getpeername() == carrier.near.getsockname()
        assert carrier.far.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        carrier.close()


def test_bytes_go_both_ways_and_end_in_order() -> None:
    client, served = tcp_visitor()
    carrier = Carrier(datagrams=False)
    done = Event()
    far = carrier.far.dup()  # the sibling's copy (relay closes ours)
    far.setblocking(False)
    relay = gevent.spawn(carrier.relay, SocketStream(served), DEFAULT, done.set)
    try:
        client.sendall(b"up" * 1000)
        got = b""
        while len(got) < 2000:
            got += recv(far)
        assert got == b"up" * 1000
        far.sendall(b"down")
        assert recv(client) == b"down"
        client.shutdown(socket.SHUT_WR)
        assert recv(far) == b""  # the visitor's end reaches the far end as an end
        far.close()
        assert recv(client) == b""
        assert done.wait(WAIT)
    finally:
        relay.kill()
        client.close()


@pytest.mark.parametrize("cut", ["far", "visitor"])
def test_a_reset_on_either_side_resets_the_other(cut: str) -> None:
    client, served = tcp_visitor()
    carrier = Carrier(datagrams=False)
    far = carrier.far.dup()  # the sibling's copy (relay closes ours)
    far.setblocking(False)
    done = Event()
    relay = gevent.spawn(carrier.relay, SocketStream(served), DEFAULT, done.set)
    try:
        client.sendall(b"hello")
        assert recv(far) == b"hello"
        cutter, other = (far, client) if cut == "far" else (client, far)
        cutter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        cutter.close()
        with pytest.raises(ConnectionResetError):
            while recv(other):
                pass
        assert done.wait(WAIT)
    finally:
        relay.kill()
        for sock in (client, far):
            sock.close()


def test_datagrams_keep_their_boundaries_both_ways() -> None:
    visitor = Datagrams()
    carrier = Carrier(datagrams=True)
    assert isinstance(carrier.far, CarriedSocket) and carrier.far.type == socket.SOCK_SEQPACKET
    far = carrier.far.dup()  # the sibling's copy (relay closes ours)
    far.setblocking(False)
    relay = gevent.spawn(carrier.relay, visitor, DEFAULT)
    try:
        sizes = [1, 512, 2048, 9000, 65507]
        for size in sizes:
            visitor.put(b"q" * size)
        assert [len(recv(far)) for _ in sizes] == sizes
        for size in sizes:
            far.send(b"a" * size)
        while len(visitor.sent) < len(sizes):
            visitor.arrived.clear()
            assert visitor.arrived.wait(WAIT)
        assert [len(d) for d in visitor.sent] == sizes
        far.close()  # the sibling's session ended: so does this one
        relay.join(WAIT)
        assert relay.dead and visitor.closed
    finally:
        relay.kill()
        far.close()


def test_the_far_end_counts_nothing() -> None:
    a, b = socket.socketpair()
    try:
        stream = UncountedStream(a)
        a.setblocking(False)
        b.sendall(b"x" * 100)
        assert stream.recv() == b"x" * 100
        stream.send(b"y" * 50)
        stream.bytes_sent += 7  # (as the mux splice adds)
        assert (stream.bytes_received, stream.bytes_sent) == (0, 0)
    finally:
        a.close()
        b.close()
    plain, other = socket.socketpair()
    try:
        assert type(visitor_stream(plain)) is SocketStream
    finally:
        plain.close()
        other.close()


def test_the_hand_off_says_carried_and_the_receiver_keeps_it(tmp_path) -> None:
    directory = str(tmp_path / "handoff")
    os.mkdir(directory, 0o700)
    sender = handoff.Sender(directory, wait_write)
    loop = Loop(directory, {os.getpid()})
    try:
        assert Handoff.decode(Handoff(1, "p", "udp", "a", 1, "", carried=True).encode()).carried
        for datagrams in (False, True):
            carrier = Carrier(datagrams)
            offer = Handoff(7, "portal", "udp" if datagrams else "tcp", "example.com", 53,
                            "192.0.2.1:4242")
            sender.send(os.getpid(), offer, carrier.far)
            carrier.far.close()  # the sender's copy
            loop.run()
            _, visitor = loop.served[-1]
            assert isinstance(visitor, CarriedSocket)
            assert isinstance(visitor_stream(visitor), UncountedStream)
            carrier.near.send(b"ping")
            assert recv(visitor) == b"ping"
            carrier.close()
        assert loop.receiver.taken == 2
    finally:
        loop.close()
        sender.close()


def test_an_uncarried_unix_socket_is_refused(tmp_path) -> None:
    directory = str(tmp_path / "handoff")
    os.mkdir(directory, 0o700)
    sender = handoff.Sender(directory, wait_write)
    loop = Loop(directory, {os.getpid()})
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sender.send(os.getpid(), EXAMPLE, a)
        loop.run()
        assert not loop.served and loop.receiver.lost == 1
    finally:
        loop.close()
        sender.close()
        a.close()
        b.close()


class Sibling(FakeDirectory):
    """A directory whose sibling takes every hand-off, keeping its copy of the descriptor."""

    def __init__(self) -> None:
        super().__init__([SiblingTunnel(101, 5, "portal", 0, 0.0, False)], takes={101})
        self.received: list[socket.socket] = []

    def hand_off(self, tunnel: SiblingTunnel, session: Session,
                 visitor: socket.socket) -> bool:
        copy = visitor.dup()
        copy.setblocking(False)
        self.received.append(copy)
        return super().hand_off(tunnel, session, visitor)


@pytest.mark.parametrize("network", ["tcp", "udp"])
def test_a_wrapped_visitor_is_carried_to_the_sibling(network: str) -> None:
    directory = Sibling()
    portal = PortalOutbound("portal", "reverse.example", directory)
    session = Session(Target(network, "backend", 53), "public", source="192.0.2.1:1")
    ended = Event()
    session.ending.add(ended.set)
    if network == "udp":
        visitor = Datagrams()
        stream: object = visitor
        visitor.put(b"first datagram")
    else:
        client, served = tcp_visitor()
        stream = Prefixed(SocketStream(served), b"GET /")  # as a sniffer leaves it
    serving = gevent.spawn(portal.serve_visitor, session, stream)
    try:
        with gevent.Timeout(WAIT):
            while not directory.received:
                gevent.sleep(0.01)
        [far] = directory.received
        [(pid, offered, first)] = directory.offers
        assert pid == 101 and offered is session
        assert first == (b"first datagram" if network == "udp" else b"GET /")
        if network == "udp":
            visitor.put(b"second")
            assert recv(far) == b"second"
            far.send(b"answer")
            assert visitor.arrived.wait(WAIT) and visitor.sent == [b"answer"]
        else:
            client.sendall(b" HTTP/1.1")
            assert recv(far) == b" HTTP/1.1"
            far.sendall(b"200")
            assert recv(client) == b"200"
        far.close()  # the sibling is done with it
        if network == "tcp":
            assert recv(client) == b""
            client.close()
        assert ended.wait(WAIT)
    finally:
        serving.kill()
