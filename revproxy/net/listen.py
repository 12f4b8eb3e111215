"""Listening TCP sockets, bound by the master before it forks (gevent-free: the master
imports this module)."""

from __future__ import annotations

import socket

BACKLOG = 2048


def bind_listener(listen: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket. Accepted connections inherit its TCP_NODELAY and SO_KEEPALIVE
    (Linux copies both), which saves two system calls per connection."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    try:
        sock.bind((listen, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
