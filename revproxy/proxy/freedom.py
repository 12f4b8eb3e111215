"""Freedom outbound: connects straight to the session's destination (TCP or UDP), or to its
``redirect``; TCP through the outbound's transport (``streamSettings``), as V2Ray's does."""

from __future__ import annotations

from gevent import socket

from revproxy.log import log
from revproxy.net.relay import relay
from revproxy.net.session import Session
from revproxy.net.stream import DatagramStream, Stream
from revproxy.transport import PLAIN, Transport, dial


class FreedomOutbound:
    def __init__(self, tag: str, redirect: tuple[str, int] | None = None,
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.redirect = redirect
        self.transport = transport

    def destination(self, session: Session) -> tuple[str, int]:
        host, port = session.target.address, session.target.port
        if self.redirect is not None:
            host = self.redirect[0] or host
            port = self.redirect[1] or port
        return host, port

    def open(self, session: Session) -> Stream:
        if session.target.network == "udp":
            return self._open_udp(session)
        return dial(self.transport, *self.destination(session))

    def _open_udp(self, session: Session) -> Stream:
        host, port = self.destination(session)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return DatagramStream(sock)

    def handle(self, session: Session, stream: Stream) -> None:
        try:
            upstream = self.open(session)
        except OSError as exc:
            host, port = self.destination(session)
            log.warning("freedom: failed to open connection to %s:%s: %s", host, port, exc)
            session.ending.end()
            return
        session.upstream = upstream  # counted as this outbound's traffic
        relay(stream, upstream, on_done=session.ending.end)
