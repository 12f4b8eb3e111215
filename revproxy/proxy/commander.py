"""The API's outbound (V2Ray's commander outbound): routing sends the sessions for the
``api`` tag here, and each is relayed to the gRPC server of the API process over its Unix
socket in the server's private runtime directory (revproxy/server/api.py)."""

from __future__ import annotations

import socket

import gevent.socket

from revproxy.log import log
from revproxy.net.relay import relay
from revproxy.net.session import Session
from revproxy.net.stream import SocketStream, Stream

CONNECT_TIMEOUT = 3.0


class CommanderOutbound:
    def __init__(self, tag: str, path: str) -> None:
        self.tag = tag
        self.path = path

    def open(self, session: Session) -> Stream:
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=sock.detach())
        raw.setblocking(False)  # SocketStream waits in the hub itself
        return SocketStream(raw)

    def handle(self, session: Session, stream: Stream) -> None:
        try:
            upstream = self.open(session)
        except OSError as exc:
            log.warning("api: cannot reach the API process at %s: %s", self.path, exc)
            session.ending.end()
            return
        relay(stream, upstream, on_done=session.ending.end)
