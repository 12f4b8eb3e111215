"""Outgoing TCP connections for the outbounds."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable

import gevent.socket
from gevent import Timeout

from revproxy.net.stream import tune_socket

CONNECT_TIMEOUT = 10.0
_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT,
            before_connect: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A connected, tuned, non-blocking TCP socket (for ``SocketStream``). A name is resolved
    and its addresses tried in turn; an IP literal skips the resolver, which in gevent is a
    hop through its thread pool. ``before_connect`` may set socket options first (its
    ``OSError`` ends the attempt)."""
    family = _ip_family(host)
    if family is not None:
        return _connect(family, (host, port), timeout, before_connect)
    error: OSError = OSError(f"{host}: no address")
    for family, _, _, _, address in gevent.socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        try:
            return _connect(family, address[:2], timeout, before_connect)
        except OSError as exc:
            error = exc
    raise error


@functools.lru_cache(maxsize=256)
def _ip_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an IP literal, None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _connect(family: int, address: tuple[str, int], timeout: float,
             before_connect: Callable[[socket.socket], None] | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if before_connect is not None:
            before_connect(sock)
        # To a local address the kernel has usually finished the handshake by the time the
        # non-blocking connect returns EINPROGRESS, so ask once more before waiting: the
        # common case of a bridge in front of a service on its own host then needs no wait.
        result = sock.connect_ex(address)
        if result in _IN_PROGRESS:
            result = sock.connect_ex(address)
        if result in _IN_PROGRESS:
            with Timeout(timeout, TimeoutError(f"connect to {address[0]}:{address[1]} timed out")):
                gevent.socket.wait_write(sock.fileno())
            result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if result not in (0, errno.EISCONN):
            raise OSError(result, os.strerror(result))
    except BaseException:
        sock.close()
        raise
    tune_socket(sock)
    return sock
