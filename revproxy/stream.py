"""The byte-stream interface every connection end offers, and its plain-socket implementation.

A *stream* is what the relay moves bytes between: a TCP socket, a VMess-wrapped socket, or a
mux session inside a tunnel. ``recv`` returns ``b""`` at end of stream and raises
``TimeoutError`` when nothing arrives within the stream's timeout.
"""

from __future__ import annotations

import socket
from typing import Protocol

RECV_SIZE = 65536


class Stream(Protocol):
    def recv(self) -> bytes: ...

    def send(self, data: bytes | memoryview) -> None: ...

    def close_write(self) -> None: ...

    def close(self) -> None: ...

    def settimeout(self, seconds: float | None) -> None: ...


class SocketStream:
    """A connected TCP socket as a stream."""

    __slots__ = ("sock", "_drained")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._drained = False

    def recv(self) -> bytes:
        data = recv_more(self.sock, self._drained)
        self._drained = len(data) < RECV_SIZE
        return data

    def send(self, data: bytes | memoryview) -> None:
        sendall(self.sock, data)

    def close_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)


class DatagramStream:
    """A connected UDP socket as a stream of datagrams: each ``recv`` is one datagram and there
    is no end of stream (the relay's idle timeout ends it)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def send(self, data: bytes | memoryview) -> None:
        self.sock.send(data)

    def close_write(self) -> None:
        """UDP has no half-close."""

    def close(self) -> None:
        self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)


def recv_more(sock: socket.socket, drained: bool) -> bytes:
    """Up to ``RECV_SIZE`` bytes from a cooperative socket. After a read that left the
    socket ``drained`` (it returned less than asked), wait for readability first: trying
    again would almost always fail with EAGAIN, a wasted syscall and exception per message.
    (Uses gevent's socket internals, the same in 22.10 and later.)"""
    if drained:
        event = sock._read_event
        if event is not None:  # None once closed: recv raises the error
            sock._wait(event)
    return sock.recv(RECV_SIZE)


def sendall(sock: socket.socket, data: bytes | memoryview) -> None:
    """``sock.sendall`` without gevent's per-call SO_SNDBUF query: most writes go out in
    one ``send``."""
    sent = sock.send(data)
    if sent == len(data):
        return
    view = memoryview(data)
    while sent < len(view):
        sent += sock.send(view[sent:])


def tune_socket(sock: socket.socket) -> None:
    """Options every proxied TCP connection gets: no Nagle delay, keepalive probes."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass
