"""Dokodemo-door inbound: every accepted TCP connection goes to one fixed destination."""

from __future__ import annotations

import socket
import struct

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import SocketStream

_SO_ORIGINAL_DST = 80


class DokodemoInbound:
    def __init__(self, tag: str | None, address: str | None, port: int | None,
                 follow_redirect: bool, dispatcher: Dispatcher) -> None:
        self.tag = tag
        self.address = address
        self.port = port
        self.follow_redirect = follow_redirect
        self.dispatcher = dispatcher

    def target_for(self, sock: socket.socket) -> Target | None:
        if self.follow_redirect:
            try:
                raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
                port, packed = struct.unpack_from("!2xH4s", raw)
                return Target("tcp", socket.inet_ntoa(packed), port)
            except OSError:
                pass
        if self.address is None or not self.port:
            return None
        return Target("tcp", self.address, self.port)

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        target = self.target_for(sock)
        if target is None:
            log.warning("dokodemo-door: unable to get destination for %s", address[0])
            ending.end()
            return
        session = Session(target, self.tag, source=f"{address[0]}:{address[1]}", ending=ending)
        self.dispatcher.handle(session, SocketStream(sock))
