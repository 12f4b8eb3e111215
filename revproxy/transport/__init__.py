"""Transports: how a protocol's bytes travel, V2Ray's ``streamSettings``.

A protocol never knows which transport carries it. It calls two functions:

``dial(transport, host, port)``
    an outbound's connection to a server: TCP (with its socket options), then TLS, then the
    WebSocket handshake or the HTTP-header disguise, as configured;
``wrap(transport, sock, address)``
    the same layers, server side, around a socket an inbound accepted; gives the stream and
    the peer's address (which a PROXY protocol header or a proxy's ``X-Forwarded-For`` may
    change).

Both give a ``revproxy.net.stream.Stream``. Plain TCP gives the ``SocketStream`` itself, so
the relay's fast paths and the portal's hand-off of visitor sockets keep working; any other
transport gives a wrapper, which the portal serves in the worker that accepted it.

A ``Transport`` is made once per configuration generation by ``prepare(settings)``: it loads
certificates (so a reload picks up renewed ones). ``listener_options(settings)`` gives what an
inbound's ``sockopt`` does to its listening socket (set where it is bound). The modules:

``core``
    ``Transport``, ``prepare``, ``dial``, ``wrap``: the layers stacked bottom up.
``base``
    the ``Layer`` protocol each layer implements, ``TransportError``.
``settings``
    what the transports read from ``streamSettings`` (protocols the configuration meets).
``tcp``
    outgoing socket options (``sockopt``: mark, TCP Fast Open, transparent proxying).
``proxyprotocol``
    the PROXY protocol header (v1 and v2) an inbound may accept in front of everything.
``tls``
    TLS through Python's ``ssl`` on memory buffers over the socket stream.
``websocket``
    the HTTP/1.1 upgrade (answering bad requests as V2Ray does); binary data frames read and
    written whole, any other frame through ``wsproto``.
``httpheader``
    V2Ray's HTTP request/response disguise for TCP.
``http1``
    the sans-IO HTTP/1.1 head parser and writer the last two share.

Codecs (``http1``, ``httpheader``'s request/answer logic, ``websocket``'s handshake,
``proxyprotocol``) are sans-IO; each layer's stream class is the thin I/O around them.
"""

from revproxy.transport.base import TransportError
from revproxy.transport.core import (
    PLAIN,
    Transport,
    dial,
    listener_options,
    prepare,
    wrap,
)

__all__ = ["PLAIN", "Transport", "TransportError", "dial", "listener_options", "prepare",
           "wrap"]
