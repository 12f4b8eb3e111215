"""The byte-stream interface every connection end offers, and its socket implementations.

A *stream* is what the relay moves bytes between: a TCP socket, a VMess-wrapped socket, or a
mux session inside a tunnel. ``recv`` returns ``b""`` at end of stream and raises
``TimeoutError`` when nothing arrives within the stream's timeout. A stream that can relay a
socket by itself is a ``Splicer`` (the relay asks it to; a mux session is one).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from gevent import get_hub, getcurrent
from gevent.socket import wait as wait_on_watcher

from revproxy.policy import SessionPolicy

RECV_SIZE = 65536
_READ = 1  # libev's EV_READ
_WRITE = 2  # libev's EV_WRITE
_DATAGRAM_LOST = (errno.EMSGSIZE, errno.ENOBUFS, errno.EAGAIN)


class Stream(Protocol):
    def recv(self) -> bytes: ...

    def send(self, data: bytes | memoryview) -> None: ...

    def close_write(self) -> None: ...

    def close(self) -> None: ...

    def settimeout(self, seconds: float | None) -> None: ...


class TunnelStream(Stream, Protocol):
    """A stream a mux connection writes through: it can also send from a hub callback."""

    def send_nowait(self, data: bytes) -> bool:
        """Send without waiting; False if some bytes were kept for ``flush``."""
        ...

    def flush(self) -> None:
        """Send what ``send_nowait`` kept, waiting as needed (``send`` does this first)."""
        ...


class Splicer(Stream, Protocol):
    """A stream that relays a ``SocketStream`` to itself without the relay's pumps."""

    def splice(self, stream: SocketStream, policy: SessionPolicy,
               on_done: Callable[[], None] | None) -> bool:
        """Relay ``stream`` ⇄ self as ``relay`` would (the same idle rules: ``stream`` is
        the side the connection came from), close both and call ``on_done`` when done;
        return at once. False if this stream cannot now."""
        ...


class SocketStream:
    """A connected TCP socket as a stream.

    ``sock`` is a plain non-blocking socket: calls go straight to the kernel and wait in the
    hub only when they would block. (gevent's cooperative socket does the same, but its
    construction, close and per-call wrappers cost about 5 µs per connection.) Closing the
    stream wakes a greenlet waiting on it with an error.
    """

    __slots__ = ("sock", "timeout", "bytes_received", "bytes_sent", "_drained", "_backlog",
                 "_watchers", "_waiting")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # What moved, for the traffic counters (net/traffic.py); the mux splice, which uses
        # the socket directly, adds to them too.
        self.bytes_received = 0
        self.bytes_sent = 0
        self.timeout: float | None = None
        self._drained = False
        self._backlog = b""  # what send_nowait could not send, to go before anything else
        self._watchers: dict[int, Any] = {}  # events -> io watcher, made on first wait
        self._waiting: list[tuple[Any, Any]] = []  # (watcher, greenlet) blocked on us

    def recv(self) -> bytes:
        sock = self.sock
        if self._drained:
            # The last read returned less than asked: another now would almost always fail
            # with EAGAIN, a wasted system call and exception per message.
            self._wait(_READ)
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                self._wait(_READ)
                continue
            self._drained = len(data) < RECV_SIZE
            self.bytes_received += len(data)
            return data

    def send(self, data: bytes | memoryview) -> None:
        self.bytes_sent += len(data)
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(view):
            self._wait(_WRITE)
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                pass

    def send_nowait(self, data: bytes) -> bool:
        self.bytes_sent += len(data)
        if self._backlog:
            self._backlog += data
            return False
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return True
        self._backlog = data[sent:]
        return False

    def flush(self) -> None:
        if self._backlog:
            self.send(b"")

    def close_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        waiting = self._waiting
        if waiting:
            # Stop the watchers before the descriptor goes, then wake their greenlets.
            loop = get_hub().loop
            for watcher, greenlet in waiting:
                watcher.stop()
                loop.run_callback(greenlet.throw, ConnectionAbortedError("stream closed"))
            waiting.clear()
        watchers = self._watchers
        if watchers:
            for watcher in watchers.values():
                watcher.close()
            watchers.clear()
        self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def _wait(self, events: int) -> None:
        # One watcher per direction, kept for the stream's life (as gevent's socket does):
        # making one per wait costs an allocation and a system call per message.
        watcher = self._watchers.get(events)
        if watcher is None or watcher.callback is not None:  # none yet, or busy elsewhere
            fd = self.sock.fileno()
            if fd < 0:
                raise ConnectionAbortedError("stream closed")
            watcher = get_hub().loop.io(fd, events)
            self._watchers.setdefault(events, watcher)
        entry = (watcher, getcurrent())
        self._waiting.append(entry)
        try:
            wait_on_watcher(watcher, self.timeout, TimeoutError("timed out"))
        finally:
            if entry in self._waiting:
                self._waiting.remove(entry)
            if self._watchers.get(events) is not watcher:
                watcher.close()  # a spare for a second waiter


class DatagramStream:
    """A connected UDP socket as a stream of datagrams: each ``recv`` is one datagram and there
    is no end of stream (the relay's idle timeout ends it)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        while True:
            data = self.sock.recv(RECV_SIZE)
            if data:  # (an empty datagram would read as the end of the stream: skipped)
                return data

    def send(self, data: bytes | memoryview) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            if exc.errno not in _DATAGRAM_LOST:
                raise
            # Too large, or no buffer space: this datagram is lost, as UDP allows.

    def close_write(self) -> None:
        """UDP has no half-close."""

    def close(self) -> None:
        self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)


def tune_socket(sock: socket.socket) -> None:
    """Options every proxied TCP connection gets: no Nagle delay, keepalive probes."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


_WRAPPED = ("transport", "inner", "stream")  # where stream wrappers keep what they wrap
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


def socket_of(stream: object) -> socket.socket | None:
    """The TCP socket under ``stream`` and its wrappers (VMess, TLS, WebSocket...), if any."""
    for _ in range(8):
        if isinstance(stream, SocketStream):
            return stream.sock
        inner = None
        for name in _WRAPPED:
            inner = getattr(stream, name, None)
            if inner is not None and not isinstance(inner, (str, bytes, int)):
                break
            inner = None
        if inner is None:
            return None
        stream = inner
    return None


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` send a reset: its peer must see a cut connection as cut, not as
    an orderly end of stream."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass  # closed already


class Prefixed:
    """``stream`` with ``early`` bytes (read by a handshake, a sniffer or a PROXY header
    parser) given out first; everything else goes to the stream beneath."""

    __slots__ = ("stream", "_early")

    def __init__(self, stream: Stream, early: bytes) -> None:
        self.stream = stream
        self._early = early

    def recv(self) -> bytes:
        if self._early:
            early, self._early = self._early, b""
            return early
        return self.stream.recv()

    def send(self, data: bytes | memoryview) -> None:
        self.stream.send(data)

    def send_nowait(self, data: bytes) -> bool:
        send_nowait: Callable[[bytes], bool] | None = getattr(self.stream, "send_nowait", None)
        if send_nowait is None:
            self.stream.send(data)
            return True
        return send_nowait(data)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def close_write(self) -> None:
        self.stream.close_write()

    def close(self) -> None:
        self.stream.close()

    def settimeout(self, seconds: float | None) -> None:
        self.stream.settimeout(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # byte counts and the like of the stream beneath
