"""What the transport modules share: the ``Layer`` protocol each layer implements, the
error a bad peer raises, the address type."""

from __future__ import annotations

from typing import Protocol

from revproxy.net.stream import TunnelStream

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
