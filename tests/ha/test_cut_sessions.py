"""Cut sessions look cut, without processes: over loopback TCP, a visitor whose tunnel dies
under its session is reset (not closed in good order), and so is the backend connection of a
bridge whose portal dies; a visitor whose tunnel vanished before answering is carried on
another tunnel instead."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket

from revproxy.dispatcher import Dispatcher
from revproxy.mux.frame import (
    NETWORK_TCP,
    STATUS_NEW,
    FrameDecoder,
    encode_end,
    encode_keep,
    encode_new,
)
from revproxy.net.session import Session, Target
from revproxy.net.stream import SocketStream
from revproxy.proxy.freedom import FreedomOutbound
from revproxy.reverse.bridge import Bridge, BridgeTunnel, TunnelPool
from revproxy.reverse.control import CONTROL_DOMAIN
from revproxy.reverse.portal import PortalOutbound, PortalTunnel
from tests.unit.sockets import plain

TIMEOUT = 10
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets (a reset needs TCP; a Unix pair has none)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


def visitor_frames(bridge_end: socket.socket, decoder: FrameDecoder) -> list:
    """The New frames of visitors (the control session's left out) the bridge end reads."""
    bridge_end.settimeout(TIMEOUT)
    found: list = []
    while not found:
        found = [f for f in decoder.feed(bridge_end.recv(65536))
                 if f.status == STATUS_NEW and f.address != CONTROL_DOMAIN]
    return found


class Tunnels:
    """A portal and its tunnels, each with the raw socket of its bridge's end."""

    def __init__(self) -> None:
        self.portal = PortalOutbound("portal", "reverse.example")
        self.runners: list[gevent.Greenlet] = []
        self.sockets: list[socket.socket] = []

    def add(self, peer: str) -> tuple[PortalTunnel, socket.socket]:
        ours, theirs = tcp_pair()
        self.portal._last_id += 1
        tunnel = PortalTunnel(SocketStream(plain(ours)), self.portal._last_id, "portal", peer)
        self.portal.tunnels.append(tunnel)
        self.runners.append(gevent.spawn(tunnel.serve))
        self.sockets.append(theirs)
        return tunnel, theirs

    def visit(self) -> socket.socket:
        outer, inner = tcp_pair()
        self.sockets.append(outer)
        outer.sendall(REQUEST)
        session = Session(Target("tcp", "backend", 80), "public", source="192.0.2.1:1")
        gevent.spawn(self.portal.serve_visitor, session, SocketStream(plain(inner)))
        return outer

    def close(self) -> None:
        for tunnel in self.portal.tunnels:
            tunnel.mux.close()
        gevent.killall(self.runners)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def tunnels():
    made = Tunnels()
    yield made
    made.close()


def read_until_cut(sock: socket.socket) -> tuple[bytes, str]:
    """What ``sock`` receives, and how it ends: "eof" or "reset"."""
    sock.settimeout(TIMEOUT)
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        return received, "reset"
    return received, "eof"


def test_a_visitor_whose_bridge_dies_mid_answer_is_reset(tunnels):
    _, bridge_end = tunnels.add("192.0.2.7:4000")
    visitor = tunnels.visit()
    with gevent.Timeout(TIMEOUT):
        [new] = visitor_frames(bridge_end, FrameDecoder())
        assert new.payload == REQUEST
        bridge_end.sendall(encode_keep(new.session_id, b"HTTP/1.1 200 OK\r\n\r\npart of it"))
        visitor.settimeout(TIMEOUT)
        assert visitor.recv(65536).endswith(b"part of it")
        bridge_end.close()  # the bridge crashes in the middle of the answer
        assert read_until_cut(visitor) == (b"", "reset")


def test_an_answer_that_ended_is_not_reset_by_the_tunnel_dying_later(tunnels):
    _, bridge_end = tunnels.add("192.0.2.7:4000")
    visitor = tunnels.visit()
    with gevent.Timeout(TIMEOUT):
        [new] = visitor_frames(bridge_end, FrameDecoder())
        bridge_end.sendall(encode_keep(new.session_id, b"whole answer")
                           + encode_end(new.session_id))
        visitor.settimeout(TIMEOUT)
        assert read_until_cut(visitor) == (b"whole answer", "eof")


def test_a_visitor_its_vanished_tunnel_never_answered_is_carried_on_another(tunnels):
    class Silent:
        """A bridge host that has acknowledged nothing since long ago."""

        last_ack = -1e9

        def unanswered(self) -> bool:
            return True

    dead, dead_end = tunnels.add("192.0.2.7:4000")
    dead.watch, dead.suspect = Silent(), True  # type: ignore[assignment]
    visitor = tunnels.visit()  # the only tunnel: picked as the last resort
    with gevent.Timeout(TIMEOUT):
        visitor_frames(dead_end, FrameDecoder())
        alive, alive_end = tunnels.add("192.0.2.8:4000")
        dead_end.close()  # (a TCP timeout, as the portal sees it)
        [new] = visitor_frames(alive_end, FrameDecoder())
        assert new.payload == REQUEST  # the same request, on the other host's tunnel
        alive_end.sendall(encode_keep(new.session_id, b"served") + encode_end(new.session_id))
        assert read_until_cut(visitor) == (b"served", "eof")
        visitor.close()
        while alive.visitor_sessions:  # the session ends with the visitor's connection
            gevent.sleep(0.01)


def test_a_visitor_its_tunnel_may_have_delivered_is_not_carried_again(tunnels):
    dead, dead_end = tunnels.add("192.0.2.7:4000")
    dead.suspect = True  # but no watch saying since when: the bridge may have it
    visitor = tunnels.visit()
    with gevent.Timeout(TIMEOUT):
        visitor_frames(dead_end, FrameDecoder())
        tunnels.add("192.0.2.8:4000")
        dead_end.close()
        assert read_until_cut(visitor) == (b"", "reset")


class ToOut:
    """Routing that sends everything to "out"."""

    def route(self, session: Session) -> str:
        return "out"


def test_a_backend_whose_portal_dies_is_reset():
    with socket.socket() as backend:
        backend.bind(("127.0.0.1", 0))
        backend.listen(1)
        dispatcher = Dispatcher(ToOut(), {  # type: ignore[arg-type]
            "out": FreedomOutbound("out", backend.getsockname())})
        bridge = Bridge("bridge", "reverse.example", dispatcher)
        bridge.dialing = False
        pool = TunnelPool(bridge, None, "portal")
        bridge.pools = [pool]
        ours, portal_end = tcp_pair()
        tunnel = BridgeTunnel(pool, SocketStream(plain(ours)), 1)
        runner = gevent.spawn(tunnel.mux.run)
        try:
            with gevent.Timeout(TIMEOUT):
                portal_end.sendall(encode_new(1, NETWORK_TCP, "backend", 80, b"upload, part 1"))
                conn, _ = backend.accept()
                conn.settimeout(TIMEOUT)
                assert conn.recv(65536) == b"upload, part 1"
                portal_end.close()  # the portal dies in the middle of the upload
                assert read_until_cut(conn) == (b"", "reset")
                conn.close()
        finally:
            tunnel.mux.close()
            runner.kill()
            portal_end.close()
