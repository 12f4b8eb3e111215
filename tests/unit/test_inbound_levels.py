"""The policy level of the SOCKS, HTTP and Shadowsocks inbounds, as V2Ray gives it: the
loader's ``userLevel`` (socks, http) and ``level`` (shadowsocks) reach the inbound, which
gives its sessions that level and its clients that level's ``handshake`` time; and an
inbound closes a client whose handshake takes longer (real sockets; generous bounds)."""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
import pytest

from revproxy.config import parse_config
from revproxy.dispatcher import Dispatcher
from revproxy.instance import build_inbound
from revproxy.net.session import Ending, Session
from revproxy.net.stream import Stream
from revproxy.proxy.http.inbound import HTTPInbound
from revproxy.proxy.shadowsocks.crypto import METHODS, password_key
from revproxy.proxy.shadowsocks.inbound import ShadowsocksInbound
from revproxy.proxy.socks.inbound import SocksInbound
from revproxy.proxy.vmess.replay import MemoryReplayFilter
from revproxy.routing import Router

SETTINGS: dict[str, dict[str, Any]] = {
    "socks": {"userLevel": 2},
    "http": {"userLevel": 2},
    "shadowsocks": {"method": "aes-128-gcm", "password": "p", "level": 2},
}


@pytest.mark.parametrize("protocol", sorted(SETTINGS))
def test_the_configured_level_and_its_handshake_reach_the_inbound(protocol: str) -> None:
    config = parse_config({
        "policy": {"levels": {"0": {"handshake": 5}, "2": {"handshake": 1, "connIdle": 7}}},
        "inbounds": [{"tag": "in", "port": 1, "listen": "127.0.0.1", "protocol": protocol,
                      "settings": SETTINGS[protocol]}],
        "outbounds": [{"protocol": "freedom"}]}, "c.json")
    dispatcher = Dispatcher(Router((), None), {}, policy=config.policy.sessions())
    handler = build_inbound(config.inbounds[0], dispatcher, MemoryReplayFilter(),
                            config.policy.sessions())
    inbound = handler.__self__  # type: ignore[attr-defined]
    assert (inbound.level, inbound.handshake) == (2, 1.0)


class _Recorder(Dispatcher):
    """Records the sessions it is handed (and closes their streams)."""

    def __init__(self) -> None:
        super().__init__(Router((), None), {})
        self.sessions: list[Session] = []

    def handle(self, session: Session, stream: Stream) -> None:
        self.sessions.append(session)
        stream.close()


def _serve(inbound: Any, client_bytes: bytes) -> tuple[float, bytes]:
    """Accept one connection to ``inbound``, send ``client_bytes`` and time until the
    inbound ends the connection; also what it answered."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname(), timeout=15)
        sock, address = listener.accept()
    finally:
        listener.close()
    with client:
        server = gevent.spawn(inbound.handle_connection, sock, address, Ending())
        start = time.monotonic()
        client.sendall(client_bytes)
        received = b""
        while True:
            gevent.sleep(0.01)
            client.settimeout(0.01)
            try:
                data = client.recv(4096)
            except TimeoutError:
                assert time.monotonic() - start < 15, "not closed"
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                break
            received += data
        server.join(5)
        return time.monotonic() - start, received


def test_a_socks_handshake_gets_its_level_s_time_and_its_session_that_level() -> None:
    recorder = _Recorder()
    took, answer = _serve(SocksInbound("in", recorder, level=2, handshake=0.5), b"\x05\x01")
    assert took < 3.5 and answer == b""  # the default is 4 s
    recorder = _Recorder()
    _serve(SocksInbound("in", recorder, level=2, handshake=0.5),
           b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert [session.level for session in recorder.sessions] == [2]


def test_an_http_request_head_gets_its_level_s_time_and_its_session_that_level() -> None:
    recorder = _Recorder()
    took, _ = _serve(HTTPInbound("in", recorder, level=3, handshake=0.5), b"CONNECT a:1 HT")
    assert took < 3.5
    recorder = _Recorder()
    _serve(HTTPInbound("in", recorder, level=3, handshake=0.5),
           b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert [session.level for session in recorder.sessions] == [3]


def test_a_shadowsocks_header_gets_its_level_s_time() -> None:
    method = METHODS["aes-128-gcm"]
    inbound = ShadowsocksInbound("in", method, password_key("p", method.key_size), _Recorder(),
                                 level=1, handshake=0.5)
    took, _ = _serve(inbound, b"\x00" * 10)  # part of a salt
    assert took < 3.5
