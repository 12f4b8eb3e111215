"""Dokodemo-door inbound: every accepted TCP connection goes to one fixed destination, or with
``followRedirect`` to the one it was bound for before a firewall redirected it (its original
destination for ``sockopt.tproxy`` "redirect", the default; its local address for "tproxy").
The connection arrives through the inbound's transport (``streamSettings``).

With ``network`` "udp" (or "tcp,udp") the inbound also reads a UDP socket: each source
address is one session with a "udp" target (``handle_datagrams``; net/udp.py keeps the
sources apart and ends idle ones), whose stream yields and takes whole datagrams.
``followRedirect`` applies to TCP only here: UDP goes to the fixed destination."""

from __future__ import annotations

import socket
import struct

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.session import Ending, Session, Target
from revproxy.net.udp import SourceStream
from revproxy.transport import PLAIN, Transport, wrap

_SO_ORIGINAL_DST = 80


class DokodemoInbound:
    def __init__(self, tag: str | None, address: str | None, port: int | None,
                 follow_redirect: bool, dispatcher: Dispatcher, transport: Transport = PLAIN,
                 tproxy: str = "off") -> None:
        self.tag = tag
        self.address = address
        self.port = port
        self.follow_redirect = follow_redirect
        self.dispatcher = dispatcher
        self.transport = transport
        self.tproxy = tproxy

    def target_for(self, sock: socket.socket) -> Target | None:
        if self.follow_redirect and self.tproxy == "tproxy":
            host, port = sock.getsockname()[:2]  # TPROXY keeps the original destination
            return Target("tcp", host, port)
        if self.follow_redirect:
            try:
                raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
                port, packed = struct.unpack_from("!2xH4s", raw)
                return Target("tcp", socket.inet_ntoa(packed), port)
            except OSError:
                pass
        if self.address is None:
            return None
        return Target("tcp", self.address, self.port or 0)  # no port is port 0, as in V2Ray

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        target = self.target_for(sock)
        if target is None:
            log.warning("dokodemo-door: unable to get destination for %s", address[0])
            ending.end()
            return
        try:
            stream, address = wrap(self.transport, sock, address)
        except OSError as exc:
            log.info("dokodemo-door: %s:%s: transport handshake failed: %s", address[0],
                     address[1], exc)
            ending.end()  # closes the socket
            return
        session = Session(target, self.tag, source=f"{address[0]}:{address[1]}", ending=ending)
        self.dispatcher.handle(session, stream)

    def handle_datagrams(self, stream: SourceStream) -> None:
        """One source's datagrams: a session to the fixed destination, network "udp"."""
        host, port = stream.source[:2]
        if self.address is None:
            log.warning("dokodemo-door: unable to get destination for %s (UDP)", host)
            stream.close()
            return
        target = Target("udp", self.address, self.port or 0)
        self.dispatcher.handle(Session(target, self.tag, source=f"{host}:{port}"), stream)
