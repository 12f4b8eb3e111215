"""``Transport``, ``prepare``, and the two functions protocols call: ``dial`` and ``wrap``."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gevent import Timeout

from revproxy.net.dial import CONNECT_TIMEOUT, connect
from revproxy.net.stream import SocketStream, TunnelStream

ACCEPT_HANDSHAKE_TIMEOUT = 4.0  # V2Ray: the WebSocket server's header timeout, VMess's handshake
DIAL_HANDSHAKE_TIMEOUT = 8.0  # V2Ray: the WebSocket client's handshake timeout

Address = tuple  # a socket address: (host, port) or (host, port, flowinfo, scope_id)


class TransportError(ConnectionError):
    """A transport handshake failed (the peer was answered as V2Ray would, if at all)."""


class Layer(Protocol):
    """One layer above TCP: TLS, WebSocket, the HTTP header. ``client`` and ``server`` run
    its handshake over ``stream`` and give the stream above it; on failure they raise
    ``OSError`` (``TransportError`` for a bad peer) and leave ``stream`` to the caller.
    Every stream can also be written from a hub callback (``TunnelStream``): a mux tunnel
    may ride on it."""

    def client(self, stream: TunnelStream, host: str, port: int) -> TunnelStream: ...

    def server(self, stream: TunnelStream, peer: Address) -> tuple[TunnelStream, Address]: ...


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


def prepare(settings: object | None) -> Transport:
    """The transport for ``streamSettings`` (None: plain TCP)."""
    return PLAIN


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
