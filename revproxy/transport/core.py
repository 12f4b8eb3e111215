"""``Transport``, ``prepare``, and the two functions protocols call: ``dial`` and ``wrap``."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from gevent import Timeout

from revproxy.net.dial import CONNECT_TIMEOUT, connect
from revproxy.net.listen import ListenerOptions
from revproxy.net.stream import SocketStream, TunnelStream
from revproxy.transport.base import Address, Layer
from revproxy.transport.settings import StreamSettings

ACCEPT_HANDSHAKE_TIMEOUT = 4.0  # V2Ray: the WebSocket server's header timeout, VMess's handshake
DIAL_HANDSHAKE_TIMEOUT = 8.0  # V2Ray: the WebSocket client's handshake timeout

@dataclass(frozen=True, slots=True)
class Transport:
    """A configuration's ``streamSettings``, ready to use.

    ``layers`` run bottom up (TLS before WebSocket); ``before_connect`` prepares an outgoing
    socket (socket options); ``accept_header`` reads a PROXY protocol header off an accepted
    connection first.
    """

    layers: tuple[Layer, ...] = ()
    before_connect: Callable[[socket.socket], None] | None = None
    accept_header: Callable[[SocketStream, Address], tuple[TunnelStream, Address]] | None = None

    @property
    def plain(self) -> bool:
        """Whether streams are bare sockets (``SocketStream``)."""
        return not self.layers and self.accept_header is None


PLAIN = Transport()


def prepare(settings: StreamSettings | None, *, server: bool) -> Transport:
    """The transport for ``streamSettings`` (None: plain TCP), for an inbound (``server``) or
    an outbound. Loads the TLS certificates: call it once per configuration generation.
    Raises ``OSError`` if a certificate cannot be loaded."""
    if settings is None:
        return PLAIN
    layers: list[Layer] = []
    websocket = settings.network == "ws"
    if settings.tls is not None:
        from revproxy.transport.tls import TLSLayer

        layers.append(TLSLayer(settings.tls, server=server, websocket=websocket))
    if websocket:
        from revproxy.transport.websocket import WebSocketLayer

        assert settings.websocket is not None
        layers.append(WebSocketLayer(settings.websocket, secure=settings.tls is not None))
    elif settings.http_header is not None:
        from revproxy.transport.httpheader import HeaderLayer

        layers.append(HeaderLayer(settings.http_header))
    before_connect = accept_header = None
    if server:
        if settings.accept_proxy_protocol:
            from revproxy.transport.proxyprotocol import read_proxy_header

            accept_header = read_proxy_header
    else:
        from revproxy.transport.tcp import outgoing_options

        before_connect = outgoing_options(settings.sockopt)
    if not layers and before_connect is None and accept_header is None:
        return PLAIN
    return Transport(tuple(layers), before_connect, accept_header)


def listener_options(settings: StreamSettings | None) -> ListenerOptions | None:
    """What an inbound's ``sockopt`` does to its listening socket (None: nothing), for
    ``revproxy.net.listen.bind_listener``."""
    return None if settings is None else ListenerOptions.of(settings.sockopt)


def dial(transport: Transport, host: str, port: int,
         timeout: float = CONNECT_TIMEOUT) -> TunnelStream:
    """A stream to ``host``:``port`` over ``transport``, its handshakes done."""
    stream = SocketStream(connect(host, port, timeout, transport.before_connect))
    if not transport.layers:
        return stream
    stacked: TunnelStream = stream
    try:
        with Timeout(DIAL_HANDSHAKE_TIMEOUT,
                     TimeoutError(f"handshake with {host}:{port} timed out")):
            for layer in transport.layers:
                stacked = layer.client(stacked, host, port)
    except BaseException:
        stacked.close()
        raise
    return stacked


def wrap(transport: Transport, sock: socket.socket,
         address: Address) -> tuple[TunnelStream, Address]:
    """The stream of an accepted connection, its handshakes done, and the peer's address.

    A peer that fails a handshake was answered as V2Ray answers (or not at all) and raises
    ``OSError``; closing ``sock`` is the caller's business."""
    stream = SocketStream(sock)
    if transport.plain:
        return stream, address
    stacked: TunnelStream = stream
    peer = address
    try:
        with Timeout(ACCEPT_HANDSHAKE_TIMEOUT, TimeoutError("transport handshake timed out")):
            if transport.accept_header is not None:
                stacked, peer = transport.accept_header(stream, peer)
            for layer in transport.layers:
                stacked, peer = layer.server(stacked, peer)
    except BaseException:
        stacked.close()
        raise
    return stacked, peer
