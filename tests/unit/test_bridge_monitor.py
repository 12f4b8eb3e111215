"""The bridge's monitor with a portal tunnel over a socket pair: KeepAlive frames on every
open tunnel (a drained tunnel's idle sessions outlive the portal's silence limit), and
warnings that say why tunnels do not come up, at most one per interval."""

from __future__ import annotations

import logging

import gevent
import pytest
from gevent import socket

from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import NETWORK_TCP
from revproxy.net.session import Session
from revproxy.net.stream import SocketStream
from revproxy.reverse import portal as portal_module
from revproxy.reverse.bridge import Bridge, BridgeTunnel, TunnelPool
from revproxy.reverse.portal import PortalTunnel

from .sockets import plain

TIMEOUT = 10


class HoldingDispatcher:
    """Holds every session the portal opens, idle, as a quiet visitor would."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.sessions: list[MuxSession] = []
        self.refuse = refuse

    def handle(self, session: Session, stream: MuxSession) -> None:
        self.sessions.append(stream)

    def open(self, session: Session, server: object = None) -> SocketStream:
        assert self.refuse is not None
        raise self.refuse


def one_pool(dispatcher: HoldingDispatcher) -> TunnelPool:
    """The pool of a bridge whose outbound names no server list."""
    bridge = Bridge("bridge", "reverse.example", dispatcher)  # type: ignore[arg-type]
    pool = TunnelPool(bridge, None, "portal")
    bridge.pools = [pool]
    return pool


@pytest.fixture
def linked(monkeypatch):
    """A portal tunnel and a bridge (dialing nothing) whose tunnel is its other end; the
    portal checks every 50 ms and closes a tunnel silent for 0.5 s."""
    monkeypatch.setattr(portal_module, "HEARTBEAT_INTERVAL", 0.05)
    monkeypatch.setattr(portal_module, "PEER_SILENCE_LIMIT", 0.5)
    portal_end, bridge_end = socket.socketpair()
    dispatcher = HoldingDispatcher()
    bridge = one_pool(dispatcher)
    bridge.bridge.dialing = False
    bridge_tunnel = BridgeTunnel(bridge, SocketStream(plain(bridge_end)), 1)
    bridge.tunnels.append(bridge_tunnel)
    portal_tunnel = PortalTunnel(SocketStream(plain(portal_end)), 1, "portal", "bridge")
    runners = [gevent.spawn(bridge_tunnel.mux.run), gevent.spawn(portal_tunnel.serve)]
    with gevent.Timeout(TIMEOUT):
        while not bridge_tunnel.registered:
            gevent.sleep(0.01)
    yield portal_tunnel, bridge, bridge_tunnel, dispatcher
    bridge.stop()
    portal_tunnel.mux.close()
    gevent.killall(runners)


def test_a_drained_tunnel_is_kept_alive_while_its_sessions_go_on(linked):
    portal_tunnel, bridge, bridge_tunnel, dispatcher = linked
    portal_tunnel.mux.open_session(NETWORK_TCP, "127.0.0.1", 80)
    bridge.monitor()
    with gevent.Timeout(TIMEOUT):
        while not (dispatcher.sessions and portal_tunnel.mux.peer_sends_keepalive):
            gevent.sleep(0.01)
    portal_tunnel.drain()  # as after 256 sessions
    with gevent.Timeout(TIMEOUT):
        while not bridge_tunnel.draining:
            gevent.sleep(0.01)
    assert bridge_tunnel.visitor_sessions == 1 and portal_tunnel.visitor_sessions == 1
    for _ in range(20):  # 2 s: four times the portal's silence limit
        bridge.monitor()
        gevent.sleep(0.1)
    assert bridge.drained == [bridge_tunnel] and bridge.tunnels == []
    assert not portal_tunnel.mux.closed, "the portal closed a drained tunnel as silent"
    assert bridge.bridge.sessions == 1


def test_a_silent_bridge_still_loses_its_drained_tunnel(linked):
    portal_tunnel, bridge, bridge_tunnel, dispatcher = linked
    portal_tunnel.mux.open_session(NETWORK_TCP, "127.0.0.1", 80)
    bridge.monitor()
    with gevent.Timeout(TIMEOUT):
        while not portal_tunnel.mux.peer_sends_keepalive:
            gevent.sleep(0.01)
    portal_tunnel.drain()
    with gevent.Timeout(TIMEOUT):  # no monitor, no keepalive: a dead bridge, as it looks
        while not portal_tunnel.mux.closed:
            gevent.sleep(0.05)


def test_failed_dials_are_warned_about_once_per_interval(caplog):
    dispatcher = HoldingDispatcher(refuse=ConnectionRefusedError("connection refused"))
    bridge = one_pool(dispatcher)
    with caplog.at_level(logging.WARNING, "revproxy"):
        for _ in range(3):
            bridge._next_dial = 0.0
            bridge.monitor()
            bridge._dialer.join(TIMEOUT)  # dials run in a greenlet of their own
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["bridge bridge: cannot establish a tunnel to the portal "
                        "(reverse.example:0): connection refused (1 failed attempts, "
                        "retrying)"]
    bridge._complaints.interval = 0.0
    with caplog.at_level(logging.WARNING, "revproxy"):
        bridge._next_dial = 0.0
        bridge.monitor()
        bridge._dialer.join(TIMEOUT)
    assert "(4 failed attempts, retrying) (2 more like it since the last warning)" in \
        caplog.records[-1].getMessage()


def test_a_tunnel_the_portal_closes_unregistered_is_warned_about(caplog):
    ours, theirs = socket.socketpair()
    bridge = one_pool(HoldingDispatcher())
    bridge.bridge.dialing = False
    tunnel = BridgeTunnel(bridge, SocketStream(plain(ours)), 1)
    bridge.tunnels.append(tunnel)
    runner = gevent.spawn(tunnel.mux.run)
    theirs.close()  # as a portal that refuses the VMess handshake does, in the end
    runner.join(TIMEOUT)
    with caplog.at_level(logging.WARNING, "revproxy"):
        bridge.monitor()
    assert "cannot establish tunnel bridge#1 to the portal (reverse.example:0): the portal " \
           "closed it without a word" in caplog.text
    assert bridge.tunnels == []


def test_a_registration_after_failures_is_told(linked, caplog):
    _, bridge, bridge_tunnel, _ = linked
    bridge._failures = 3
    with caplog.at_level(logging.WARNING, "revproxy"):
        bridge.tunnel_registered(bridge_tunnel)
    assert "registered by the portal after 3 failed attempts" in caplog.text
    assert bridge._failures == 0
