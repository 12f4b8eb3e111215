"""VLESS inbound: reads the request header over the inbound's transport, then dispatches the
session; with ``fallbacks``, what is no VLESS goes to a fallback server instead, as V2Ray 4.34
does it (a first read shorter than 18 bytes, a wrong version or an unknown user).

A failed handshake without a fallback is closed without an answer, as V2Ray closes it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import gevent
import gevent.socket

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.dial import connect
from revproxy.net.relay import relay
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import SocketStream, TunnelStream
from revproxy.proxy.streams import HANDSHAKE_TIMEOUT
from revproxy.proxy.vless.codec import (
    COMMAND_MUX,
    COMMAND_UDP,
    FALLBACK_MIN,
    Fallback,
    Request,
    RequestDecoder,
    User,
    VLESSError,
    fallback_table,
    pick_fallback,
    proxy_header,
)
from revproxy.proxy.vless.stream import VLESSServerStream
from revproxy.proxy.wire import ProtocolError
from revproxy.transport import PLAIN, Transport, wrap

FALLBACK_CONNECT_TIMEOUT = 4.0
_UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux


class VLESSInbound:
    def __init__(self, tag: str | None, users: Sequence[User], dispatcher: Dispatcher,
                 transport: Transport = PLAIN, fallbacks: Sequence[Fallback] = (),
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """``handshake_timeout``: policy level 0's ``handshake``, as V2Ray's."""
        self.tag = tag
        self.handshake_timeout = handshake_timeout
        self.users = {user.id: user for user in users}
        self.dispatcher = dispatcher
        self.transport = transport
        self.fallbacks = fallback_table(fallbacks) if fallbacks else None

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        try:
            stream, peer = wrap(self.transport, sock, address)
        except OSError as exc:
            log.info("vless: %s:%s: transport handshake failed: %s", address[0], address[1], exc)
            ending.end()
            return
        source = f"{peer[0]}:{peer[1]}"
        try:
            served = self._serve(stream, sock, peer, source, ending)
        except (OSError, ProtocolError, ValueError) as exc:
            log.info("vless: %s: %s", source, exc)
            served = False
        if not served:
            stream.close()
            ending.end()

    def _serve(self, stream: TunnelStream, sock: socket.socket, peer: tuple, source: str,
               ending: Ending) -> bool:
        """Whether the connection was handed on (to the dispatcher or a fallback)."""
        decoder: RequestDecoder[User] = RequestDecoder(self.users)
        request: Request | None = None
        fall_back: bytes | None = None  # what to hand a fallback
        try:
            with gevent.Timeout(self.handshake_timeout, TimeoutError("handshake timed out")):
                first = stream.recv()
                if not first:
                    return False
                if self.fallbacks is not None and len(first) < FALLBACK_MIN:
                    fall_back = first
                else:
                    request = decoder.feed(first)
                    while request is None:
                        data = stream.recv()
                        if not data:
                            return False
                        request = decoder.feed(data)
        except VLESSError as exc:
            if not (exc.fallback and self.fallbacks is not None):
                log.info("vless: %s rejected: %s", source, exc)
                return False
            fall_back = decoder.received
        if fall_back is not None or request is None:
            return self._fall_back(stream, sock, peer, fall_back or b"", ending)
        if request.command == COMMAND_MUX:
            log.warning("vless: %s: the Mux command is not supported", source)
            return False
        user = decoder.user
        udp = request.command == COMMAND_UDP
        session = Session(Target("udp" if udp else "tcp", request.address, request.port),
                          self.tag, source=source, email=user.email if user else None,
                          level=user.level if user else None, ending=ending)
        self.dispatcher.handle(session, VLESSServerStream(stream, udp, decoder.rest))
        return True

    def _fall_back(self, stream: TunnelStream, sock: socket.socket, peer: tuple,
                   received: bytes, ending: Ending) -> bool:
        assert self.fallbacks is not None
        fallback = pick_fallback(self.fallbacks, getattr(stream, "alpn", None), received)
        if fallback is None:
            log.warning("vless: %s:%s: no fallback for this connection", peer[0], peer[1])
            return False
        log.info("vless: %s:%s: falling back to %s", peer[0], peer[1], fallback.dest)
        target = _dial_fallback(fallback)
        try:
            head = b""
            if fallback.xver:
                head = proxy_header(fallback.xver, (peer[0], peer[1]), sock.getsockname()[:2])
            target.send(head + received)
        except BaseException:
            target.close()
            raise
        relay(stream, target, on_done=ending.end)
        return True


def _dial_fallback(fallback: Fallback) -> SocketStream:
    if fallback.network == "unix":
        return SocketStream(_connect_unix(_unix_address(fallback.dest)))
    host, _, port = fallback.dest.rpartition(":")
    return SocketStream(connect(host.strip("[]"), int(port), FALLBACK_CONNECT_TIMEOUT))


def _unix_address(dest: str) -> str:
    """Go's reading of a socket path: "@name" is abstract, "@@name" abstract and padded with
    NULs to the full path length (as HAProxy binds it)."""
    if dest.startswith("@@"):
        return ("\0" + dest[2:]).ljust(_UNIX_PATH_MAX, "\0")
    if dest.startswith("@"):
        return "\0" + dest[1:]
    return dest


def _connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        result = sock.connect_ex(path)
        if result in (errno.EINPROGRESS, errno.EAGAIN):
            with gevent.Timeout(FALLBACK_CONNECT_TIMEOUT,
                                TimeoutError("fallback connect timed out")):
                gevent.socket.wait_write(sock.fileno())
            result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if result:
            raise OSError(result, f"{path.lstrip(chr(0))}: {errno.errorcode.get(result, result)}")
    except BaseException:
        sock.close()
        raise
    return sock
