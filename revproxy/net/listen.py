"""Listening TCP sockets and bound UDP sockets, bound by the master before it forks
(gevent-free: the master imports this module).

Listening sockets travel to the workers keyed by their inbound's index; an inbound's UDP
socket (dokodemo-door with ``network`` "udp") under ``udp_listener_key(index)``."""

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


def udp_listener_key(index: int) -> int:
    """Where the UDP socket of inbound ``index`` goes among the listeners (negative: the
    TCP ones use the inbound indexes themselves)."""
    return -1 - index


def bind_datagram(listen: str, port: int) -> socket.socket:
    """A bound UDP socket (SO_REUSEADDR, as the TCP listener, so a restart rebinds at once)."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen, port))
    except OSError:
        sock.close()
        raise
    return sock
