"""VMess AEAD outbound: dials a VMess server over the outbound's transport and carries the
session over it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.proxy.streams import relay_through
from revproxy.proxy.vmess.crypto import User
from revproxy.proxy.vmess.header import (
    COMMAND_TCP,
    COMMAND_UDP,
    new_request_header,
    seal_request,
)
from revproxy.proxy.vmess.stream import VMessClientStream
from revproxy.transport import PLAIN, Transport, dial


@dataclass(frozen=True)
class VMessServer:
    address: str
    port: int
    user: User
    security: int

    # Why such a server may close a connection before it answers (for a bridge's warning).
    refusal_hint = "a wrong id, a clock off by minutes, or no VMess server there?"


class VMessOutbound:
    def __init__(self, tag: str, servers: Sequence[VMessServer],
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.servers = tuple(servers)
        self.transport = transport
        self._next = itertools.cycle(self.servers)

    def open(self, session: Session) -> Stream:
        return self.open_to(session, next(self._next))

    def open_to(self, session: Session, server: VMessServer) -> Stream:
        """``open`` through ``server`` (a bridge keeps tunnels to every portal listed)."""
        command = COMMAND_UDP if session.target.network == "udp" else COMMAND_TCP
        transport = dial(self.transport, server.address, server.port)
        try:
            header = new_request_header(command, session.target.address, session.target.port,
                                        server.security)
            transport.send(seal_request(server.user.cmd_key, header, int(time.time())))
        except OSError:
            transport.close()
            raise
        return VMessClientStream(transport, header)

    def handle(self, session: Session, stream: Stream) -> None:
        relay_through(session, stream, self.open, "vmess")
