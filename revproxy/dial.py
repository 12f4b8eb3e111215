"""Outgoing TCP connections for the outbounds."""

from __future__ import annotations

import ipaddress

from gevent import socket

from revproxy.stream import tune_socket

CONNECT_TIMEOUT = 10.0


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, tuned TCP socket in blocking (cooperative) mode. An IP literal skips the
    resolver, which in gevent is a hop through its thread pool."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
    sock.settimeout(None)
    tune_socket(sock)
    return sock
