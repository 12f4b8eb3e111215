"""SOCKS outbound: a SOCKS5 CONNECT through a server, with a username and password when the
server has ``users`` (one picked at random per connection, as V2Ray picks). UDP sessions are
refused for now (SOCKS5 UDP needs the ASSOCIATE relay of the UDP path still to come)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.proxy.socks.codec import ClientHandshake
from revproxy.proxy.streams import prefixed, read_handshake, relay_through
from revproxy.proxy.wire import ProtocolError
from revproxy.transport import PLAIN, Transport, dial


@dataclass(frozen=True)
class SocksServer:
    """A SOCKS5 server; ``accounts`` are (user, password) pairs."""

    address: str
    port: int
    accounts: tuple[tuple[str, str], ...] = ()


class SocksOutbound:
    def __init__(self, tag: str, servers: Sequence[SocksServer],
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.servers = tuple(servers)
        self.transport = transport
        self._next = itertools.cycle(self.servers)

    def open(self, session: Session) -> Stream:
        target = session.target
        if target.network != "tcp":
            raise ConnectionRefusedError("socks: UDP through a SOCKS server is not supported yet")
        server = next(self._next)
        account = random.choice(server.accounts) if server.accounts else None
        handshake = ClientHandshake("tcp", target.address, target.port, account)
        stream = dial(self.transport, server.address, server.port)

        def feed(data: bytes) -> bool | None:
            answer = handshake.feed(data)
            if answer:
                stream.send(answer)
            return True if handshake.done else None

        try:
            stream.send(handshake.start())
            if read_handshake(stream, feed) is None:
                raise ConnectionResetError("socks: the server closed the connection")
        except ProtocolError as exc:
            stream.close()
            raise ConnectionRefusedError(f"socks: {exc}") from None
        except BaseException:
            stream.close()
            raise
        return prefixed(stream, handshake.rest)

    def handle(self, session: Session, stream: Stream) -> None:
        relay_through(session, stream, self.open, "socks")

