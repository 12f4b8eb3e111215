"""Shadowsocks outbound: a TCP session goes over the outbound's transport, its destination
sealed in the first chunk, sent at once (as V2Ray sends it); a UDP session goes as
Shadowsocks packets over a UDP socket to the server (transports do not apply to UDP)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import gevent.socket

from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.proxy.shadowsocks.codec import encode_request
from revproxy.proxy.shadowsocks.crypto import Method, Opener, Sealer
from revproxy.proxy.shadowsocks.stream import ShadowsocksPacketStream, ShadowsocksStream
from revproxy.proxy.streams import relay_through
from revproxy.proxy.wire import AddressError
from revproxy.transport import PLAIN, Transport, dial


@dataclass(frozen=True)
class ShadowsocksServer:
    address: str
    port: int
    method: Method
    key: bytes

    # Why such a server may close a connection before it answers (for a bridge's warning).
    refusal_hint = "a wrong password or method, or no Shadowsocks server there?"


class ShadowsocksOutbound:
    def __init__(self, tag: str, servers: Sequence[ShadowsocksServer],
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.servers = tuple(servers)
        self.transport = transport
        self._next = itertools.cycle(self.servers)

    def open(self, session: Session) -> Stream:
        return self.open_to(session, next(self._next))

    def open_to(self, session: Session, server: ShadowsocksServer) -> Stream:
        """``open`` through ``server`` (a bridge keeps tunnels to every portal listed)."""
        target = session.target
        if target.network == "udp":
            return self._open_udp(server, session)
        sealer = Sealer(server.method, server.key)
        try:
            header = encode_request(sealer, target.address, target.port)
        except AddressError as exc:
            raise ConnectionRefusedError(f"shadowsocks: {exc}") from None
        transport = dial(self.transport, server.address, server.port)
        try:
            transport.send(header)
        except BaseException:
            transport.close()
            raise
        return ShadowsocksStream(transport, Opener(server.method, server.key), sealer)

    def _open_udp(self, server: ShadowsocksServer, session: Session) -> Stream:
        family, kind, proto, _, address = gevent.socket.getaddrinfo(
            server.address, server.port, 0, gevent.socket.SOCK_DGRAM)[0]
        sock = gevent.socket.socket(family, kind, proto)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return ShadowsocksPacketStream(sock, server.method, server.key,
                                       session.target.address, session.target.port)

    def handle(self, session: Session, stream: Stream) -> None:
        relay_through(session, stream, self.open, "shadowsocks")
