"""Outgoing TCP connections for the outbounds."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os

from gevent import socket

from revproxy.stream import tune_socket

CONNECT_TIMEOUT = 10.0
_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, tuned TCP socket in blocking (cooperative) mode. An IP literal skips the
    resolver, which in gevent is a hop through its thread pool."""
    family = _ip_family(host)
    if family is None:
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            _connect_ip(sock, (host, port), timeout)
        except OSError:
            sock.close()
            raise
    sock.settimeout(None)
    tune_socket(sock)
    return sock


@functools.lru_cache(maxsize=256)
def _ip_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an IP literal, None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _connect_ip(sock: socket.socket, address: tuple[str, int], timeout: float) -> None:
    # To a local address the kernel has usually finished the handshake by the time the
    # non-blocking connect returns EINPROGRESS, so ask once more before waiting: the common
    # case of a bridge in front of a service on its own host then needs no wait in the hub.
    sock.settimeout(0.0)
    result = sock.connect_ex(address)
    if result in _IN_PROGRESS:
        result = sock.connect_ex(address)
    if result in _IN_PROGRESS:
        sock.settimeout(timeout)
        sock.connect(address)  # waits, then raises the error if it failed
    elif result not in (0, errno.EISCONN):
        raise OSError(result, os.strerror(result))
