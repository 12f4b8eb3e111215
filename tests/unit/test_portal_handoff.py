"""A visitor's way across workers, without processes: the portal hands a visitor bound for a
sibling's tunnel to the tunnel directory (with its first payload and routing on the session),
chooses again when that sibling cannot take it, and serves a handed-over session (one that
carries its tunnel id) through the dispatcher like any other."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gevent
import pytest
from gevent import socket

from revproxy.dispatcher import Dispatcher
from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import STATUS_NEW, FrameDecoder
from revproxy.net.session import Session, Target
from revproxy.net.stream import SocketStream
from revproxy.reverse.control import CONTROL_DOMAIN
from revproxy.reverse.directory import ListedTunnel, Listing, Role, SiblingTunnel
from revproxy.reverse.portal import PortalOutbound, PortalTunnel

from .sockets import plain

TIMEOUT = 10


class FakeDirectory:
    def __init__(self, siblings: Sequence[SiblingTunnel], takes: set[int]) -> None:
        self.siblings = list(siblings)
        self.takes = takes
        self.offers: list[tuple[int, Session, bytes]] = []

    def list_tunnel(self, role: Role, tunnel: ListedTunnel) -> Listing | None:
        return None

    def sibling_portal_tunnels(self, tag: str) -> Sequence[SiblingTunnel]:
        return self.siblings

    def hand_off(self, tunnel: SiblingTunnel, session: Session,
                 visitor: socket.socket) -> bool:
        self.offers.append((tunnel.pid, session, session.first_payload))
        return tunnel.pid in self.takes

    def bridge_pools(self, tag: str) -> list[tuple[int, int]]:
        return []

    def portal_tunnel_counts(self) -> dict[int, int]:
        return {}

    def siblings_hold(self, role: Role, tag: str) -> bool:
        return False


class Router:
    def pick(self, inbound_tag: str | None, target: Target) -> str:
        return "portal"


@pytest.fixture
def visitor():
    """(the visitor's socket, the accepted end as a stream)."""
    outer, inner = socket.socketpair()
    yield outer, SocketStream(plain(inner))
    outer.close()


def local_tunnel(portal: PortalOutbound) -> tuple[PortalTunnel, socket.socket]:
    """A registered tunnel of ``portal`` whose bridge end is returned, unread."""
    ours, theirs = socket.socketpair()
    tunnel = PortalTunnel(SocketStream(plain(ours)), 1, portal.tag, "bridge")
    portal._last_id = 1
    portal.tunnels.append(tunnel)
    return tunnel, theirs


def new_frames(bridge_end: socket.socket) -> list:
    decoder = FrameDecoder()
    bridge_end.settimeout(TIMEOUT)
    found = []
    while not found:
        found = [f for f in decoder.feed(bridge_end.recv(65536)) if f.status == STATUS_NEW]
    return found


def test_a_visitor_for_a_sibling_tunnel_is_handed_over_with_its_first_payload(visitor):
    outer, stream = visitor
    directory = FakeDirectory([SiblingTunnel(101, 5, "portal", 0, 0.0, False),
                               SiblingTunnel(102, 6, "portal", 1, 0.0, False)], takes={102})
    portal = PortalOutbound("portal", "reverse.example", directory)
    outer.sendall(b"GET / HTTP/1.1\r\n\r\n")
    session = Session(Target("tcp", "backend", 80), "public", source="192.0.2.1:1")
    ended = []
    session.ending.add(lambda: ended.append(True))
    with gevent.Timeout(TIMEOUT):
        portal.serve_visitor(session, stream)
    # The least loaded sibling went away: the next one took it.
    assert [pid for pid, _, _ in directory.offers] == [101, 102]
    assert all(first == b"GET / HTTP/1.1\r\n\r\n" for _, _, first in directory.offers)
    assert ended == [True]


def test_a_handed_over_session_is_carried_on_its_tunnel(visitor):
    outer, stream = visitor
    portal = PortalOutbound("portal", "reverse.example")
    tunnel, bridge_end = local_tunnel(portal)
    dispatcher = Dispatcher(Router(), {"portal": portal})  # type: ignore[arg-type]
    session = Session(Target("tcp", "backend", 80), "public", source="192.0.2.1:1",
                      outbound_tag="portal", tunnel_id=1, first_payload=b"hello")
    with gevent.Timeout(TIMEOUT):
        dispatcher.handle(session, stream)
        [frame] = new_frames(bridge_end)
    assert (frame.address, frame.port, frame.payload) == ("backend", 80, b"hello")
    assert dispatcher.active == 1 and dispatcher.total == 1  # counted like any session
    assert tunnel.visitor_sessions == 1
    bridge_end.close()  # the bridge goes: the session ends, and the count with it
    with gevent.Timeout(TIMEOUT):
        tunnel.mux.run()
        while dispatcher.active:
            gevent.sleep(0.01)


def test_a_pre_routed_session_writes_no_second_access_line(visitor, caplog):
    _, stream = visitor
    portal = PortalOutbound("portal", "reverse.example")
    dispatcher = Dispatcher(Router(), {"portal": portal})  # type: ignore[arg-type]
    session = Session(Target("tcp", "backend", 80), "public", outbound_tag="portal",
                      tunnel_id=9)
    with caplog.at_level(logging.INFO, "revproxy"):
        dispatcher.handle(session, stream)  # no tunnel here: ends at once
    assert not [r for r in caplog.records if r.name == "revproxy.access"]
    assert "found no tunnel" in caplog.text
    assert dispatcher.active == 0 and dispatcher.total == 1


def test_what_a_portal_refuses_from_a_sibling():
    portal = PortalOutbound("portal", "reverse.example")
    portal._last_id = 3
    visitor = Target("tcp", "backend", 80)
    assert portal.handoff_refusal(3, visitor) is None
    assert "no tunnel 4" in (portal.handoff_refusal(4, visitor) or "")
    assert "no tunnel 0" in (portal.handoff_refusal(0, visitor) or "")
    for address in ("reverse.example", CONTROL_DOMAIN):
        assert portal.handoff_refusal(1, Target("tcp", address, 0)) is not None


def test_the_control_session_is_no_visitor():
    portal = PortalOutbound("portal", "reverse.example")
    tunnel, bridge_end = local_tunnel(portal)
    runner = gevent.spawn(tunnel.serve)
    with gevent.Timeout(TIMEOUT):
        [control] = new_frames(bridge_end)
    assert control.address == CONTROL_DOMAIN
    assert tunnel.active_sessions == 1 and tunnel.visitor_sessions == 0
    extra = tunnel.mux.open_session(1, "backend", 80)
    assert isinstance(extra, MuxSession) and tunnel.visitor_sessions == 1
    tunnel.drain()  # closes the control session
    assert tunnel.active_sessions == 1 and tunnel.visitor_sessions == 1
    tunnel.mux.close()
    runner.join(TIMEOUT)


def test_a_tunnel_that_cannot_open_the_session_is_skipped(visitor):
    """As V2Ray's dispatcher does: the next tunnel is tried before the visitor sees an
    error."""
    outer, stream = visitor
    portal = PortalOutbound("portal", "reverse.example")
    broken, _ = local_tunnel(portal)

    def closed_meanwhile(*_args: object) -> MuxSession:
        raise ConnectionResetError("mux: tunnel closed")

    broken.mux.open_session = closed_meanwhile  # type: ignore[method-assign]
    ours, theirs = socket.socketpair()
    good = PortalTunnel(SocketStream(plain(ours)), 2, portal.tag, "bridge")
    portal.tunnels.append(good)
    outer.sendall(b"GET / HTTP/1.1\r\n\r\n")
    session = Session(Target("tcp", "backend", 80), "public", source="192.0.2.1:1")
    with gevent.Timeout(TIMEOUT):
        portal.serve_visitor(session, stream)
        [frame] = new_frames(theirs)
    assert frame.payload == b"GET / HTTP/1.1\r\n\r\n" and good.visitor_sessions == 1
    theirs.close()
