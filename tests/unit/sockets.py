"""Socket helpers for the unit tests."""

from __future__ import annotations

import socket


def plain(sock) -> socket.socket:
    """One end of a gevent socket pair as the plain non-blocking socket ``SocketStream``
    wants (the gevent socket object is left detached)."""
    raw = socket.socket(sock.family, sock.type, fileno=sock.detach())
    raw.setblocking(False)
    return raw
