"""``policy`` levels (revproxy/policy.py and the loader): what each level sets, revproxy's
defaults for what it leaves out, V2Ray's bufferSize units, and the relay's idle timer
obeying a session's limits (``connIdle``, ``downlinkOnly``, 0 meaning at once)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.event
import pytest

from revproxy.config import parse_config
from revproxy.net.relay import relay
from revproxy.net.stream import SocketStream
from revproxy.policy import MAX_BUFFER, MIN_BUFFER, Policy, SessionPolicy, buffer_bytes

BASE = {"inbounds": [{"tag": "in", "port": 1, "listen": "127.0.0.1", "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1"}}],
        "outbounds": [{"protocol": "freedom"}]}


def test_levels_are_read_as_v2ray_reads_them() -> None:
    config = parse_config({**BASE, "policy": {"levels": {
        "0": {"handshake": 2, "connIdle": 60, "uplinkOnly": 0, "downlinkOnly": 5,
              "bufferSize": 64, "statsUserUplink": True},
        "7": {"connIdle": 9}}}}, "c.json")
    assert config.warnings == ()
    policy = config.policy.sessions()
    assert policy.for_level(0) == SessionPolicy(2.0, 60.0, 0.0, 5.0, 64 * 1024)
    seven = policy.for_level(7)
    assert seven.conn_idle == 9.0 and seven.handshake == SessionPolicy().handshake
    assert policy.for_level(3) == SessionPolicy()
    assert config.policy.level(0).stats_user_uplink


def test_buffer_sizes() -> None:
    assert buffer_bytes(4) == MIN_BUFFER  # V2Ray would hold 4 KiB; a mux frame is 8 KiB
    assert buffer_bytes(0) == MIN_BUFFER
    assert buffer_bytes(-1) == MAX_BUFFER
    assert buffer_bytes(1024) == 1024 * 1024
    assert buffer_bytes(10**6) == MAX_BUFFER


def test_a_bad_level_is_refused() -> None:
    from revproxy.config import ConfigError
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "policy": {"levels": {"x": {}, "1": {"connIdle": -1}}}}, "c.json")
    assert len(info.value.problems) == 2


def _pair() -> tuple[SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return SocketStream(ours), theirs


def _closed_within(policy: SessionPolicy, action, limit: float) -> float:
    """Relay two socket pairs under ``policy``; ``action(client, server)`` runs first; the
    seconds until the client's end sees the close."""
    a, client = _pair()
    b, server = _pair()
    done = gevent.event.Event()
    start = time.monotonic()
    job = gevent.spawn(relay, a, b, policy, done.set)
    try:
        action(client, server)
        assert done.wait(limit), "the relay did not end"
        return time.monotonic() - start
    finally:
        job.kill()
        client.close()
        server.close()


def test_conn_idle_ends_a_silent_relay() -> None:
    took = _closed_within(SessionPolicy(conn_idle=0.3), lambda c, s: None, 5)
    assert 0.2 < took < 3


def test_downlink_only_after_the_uplink_ended() -> None:
    def half_close(client: socket.socket, server: socket.socket) -> None:
        client.shutdown(socket.SHUT_WR)

    took = _closed_within(SessionPolicy(conn_idle=30, downlink_only=0.3), half_close, 5)
    assert took < 3


def test_uplink_only_zero_ends_at_once_when_the_downlink_ends() -> None:
    def server_done(client: socket.socket, server: socket.socket) -> None:
        server.shutdown(socket.SHUT_WR)

    took = _closed_within(SessionPolicy(conn_idle=30, uplink_only=0), server_done, 5)
    assert took < 2


def test_policy_repr_and_default() -> None:
    assert Policy().for_level(0) == SessionPolicy()
    assert "Policy" in repr(Policy([(1, SessionPolicy())]))
