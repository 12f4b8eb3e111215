"""VLESS outbound: dials a server over the outbound's transport, sends the request header at
once (a bridge's tunnel must announce itself before the portal speaks) and carries the
session. A session to "v1.mux.cool" goes as the Mux command, as V2Ray sends it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.proxy.streams import relay_through
from revproxy.proxy.vless.codec import (
    COMMAND_MUX,
    COMMAND_TCP,
    COMMAND_UDP,
    MUX_ADDRESS,
    Request,
    User,
    encode_request,
)
from revproxy.proxy.vless.stream import VLESSClientStream
from revproxy.proxy.wire import AddressError
from revproxy.transport import PLAIN, Transport, dial


@dataclass(frozen=True)
class VLESSServer:
    address: str
    port: int
    users: tuple[User, ...]

    # Why such a server may close a connection before it answers (for a bridge's warning).
    refusal_hint = "a wrong id, or no VLESS server there?"


class VLESSOutbound:
    def __init__(self, tag: str, servers: Sequence[VLESSServer],
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.servers = tuple(servers)
        self.transport = transport
        self._next = itertools.cycle(self.servers)

    def open(self, session: Session) -> Stream:
        return self.open_to(session, next(self._next))

    def open_to(self, session: Session, server: VLESSServer) -> Stream:
        """``open`` through ``server`` (a bridge keeps tunnels to every portal listed)."""
        target = session.target
        udp = target.network == "udp"
        command = COMMAND_UDP if udp else COMMAND_TCP
        if target.address == MUX_ADDRESS:
            command = COMMAND_MUX
        user = random.choice(server.users)
        try:
            header = encode_request(Request(user.id, command, target.address, target.port))
        except AddressError as exc:
            raise ConnectionRefusedError(f"vless: {exc}") from None
        transport = dial(self.transport, server.address, server.port)
        try:
            transport.send(header)
        except BaseException:
            transport.close()
            raise
        return VLESSClientStream(transport, udp)

    def handle(self, session: Session, stream: Stream) -> None:
        relay_through(session, stream, self.open, "vless")
