"""HTTP outbound: a tunnel through an HTTP proxy with CONNECT (HTTP/1.1 only; V2Ray also
speaks HTTP/2 to a proxy that offers "h2" over TLS, revproxy does not), with Basic auth when
the server has ``users`` (one picked at random per connection). UDP sessions are refused, as
V2Ray refuses them."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.proxy.http.codec import HeadReader, connect_request, parse_response
from revproxy.proxy.streams import HANDSHAKE_TIMEOUT, prefixed, read_handshake, relay_through
from revproxy.proxy.wire import ProtocolError
from revproxy.transport import PLAIN, Transport, dial


@dataclass(frozen=True)
class HTTPServer:
    """An HTTP proxy; ``accounts`` are (user, password) pairs."""

    address: str
    port: int
    accounts: tuple[tuple[str, str], ...] = ()


class HTTPOutbound:
    def __init__(self, tag: str, servers: Sequence[HTTPServer],
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.servers = tuple(servers)
        self.transport = transport
        self._next = itertools.cycle(self.servers)

    def open(self, session: Session) -> Stream:
        target = session.target
        if target.network != "tcp":
            raise ConnectionRefusedError("http: UDP is not supported by the HTTP outbound")
        server = next(self._next)
        account = random.choice(server.accounts) if server.accounts else None
        host = f"[{target.address}]" if ":" in target.address else target.address
        stream = dial(self.transport, server.address, server.port)
        try:
            alpn = getattr(stream, "alpn", None)
            if alpn not in (None, "", "http/1.1"):
                raise ConnectionRefusedError(f"http: the proxy negotiated {alpn!r}")
            stream.send(connect_request(f"{host}:{target.port}", account))
            received = read_handshake(stream, HeadReader().feed, HANDSHAKE_TIMEOUT)
            if received is None:
                raise ConnectionResetError("http: the proxy closed the connection")
            head, rest = received
            response = parse_response(head)
            if response.status != 200:
                raise ConnectionRefusedError(
                    f"http: proxy responded with non 200 code: {response.status} "
                    f"{response.reason}")
        except ProtocolError as exc:
            stream.close()
            raise ConnectionRefusedError(f"http: bad answer from the proxy: {exc}") from None
        except BaseException:
            stream.close()
            raise
        return prefixed(stream, rest)

    def handle(self, session: Session, stream: Stream) -> None:
        relay_through(session, stream, self.open, "http")
