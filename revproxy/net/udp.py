"""A listening UDP socket as sessions: one per source address, each a stream of datagrams.

``PacketSessions`` reads one UDP socket. The first datagram from a new source opens a
``SourceStream`` for it, handed to ``on_session`` in a greenlet of its own; later datagrams
from that source are queued for it, and what it sends goes back to the source from the same
socket. As in V2Ray's UDP inbound worker (app/proxyman/inbound/worker.go: a source's
connection is dropped once inactive for more than 8 s, looked at every 16 s; its queue is a
16 KiB pipe that discards what overflows) a source's session ends after ``idle`` seconds
without a datagram either way, and its queue drops what does not fit. The table of sources is
bounded: datagrams from new sources are dropped while it is full.

A ``SourceStream`` is a datagram stream (see ``DatagramStream`` in net/stream.py): each
``recv`` is one whole datagram, each ``send`` one datagram; it has no end of stream, so the
relay's pumps (net/relay.py) keep the boundaries. Closing it (the sweep does, once idle) wakes
a reader with ``ConnectionAbortedError``, which ends the relay both ways.

A session that must be served by another worker (its tunnel is there) moves as a socket of
its own: ``connected_socket`` binds a second socket to the same address, connected to the
source, and the kernel delivers that source's datagrams to it (a connected socket matches
before the unconnected one); the other worker reads and answers through it, with a
``PacketSessions`` of its own (``once``: it serves that one source, ``open`` starts its
session at once, and it closes the socket when the session ends, idle or not).
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent import get_hub
from gevent.event import Event

from revproxy.log import log

SOURCE_IDLE = 8.0  # seconds without a datagram either way before a source's session ends
SWEEP_EVERY = 4.0  # how often idle sessions are looked for
MAX_SOURCES = 1024  # sessions at once per socket
QUEUE_BYTES = 16 * 1024  # datagrams waiting for one session's consumer
MAX_DATAGRAM = 65535  # the largest UDP payload (IPv4's is 65507)
YIELD_EVERY = 63  # mask: let the sessions run once every 64 datagrams read at a stretch
_READ = 1  # libev's EV_READ


class SourceStream:
    """The datagrams of one source of a ``PacketSessions`` socket, as a stream."""

    __slots__ = ("owner", "source", "bytes_received", "bytes_sent", "last_active", "closed",
                 "_items", "_queued", "_readable", "_timeout", "_connected")

    def __init__(self, owner: PacketSessions, source: tuple) -> None:
        self.owner = owner
        self.source = source
        self.bytes_received = 0  # for the traffic counters (net/traffic.py)
        self.bytes_sent = 0
        self.last_active = time.monotonic()
        self.closed = False
        self._items: deque[bytes] = deque()
        self._queued = 0
        self._readable = Event()
        self._timeout: float | None = None
        self._connected: socket.socket | None = None

    def connected_socket(self) -> socket.socket:
        """A socket of this source's own (see the module's docstring), to hand to another
        worker; closed with this stream (the other worker holds its own descriptor)."""
        if self._connected is None:
            listener = self.owner.sock
            sock = socket.socket(listener.family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(listener.getsockname())
                sock.connect(self.source)
            except OSError:
                sock.close()
                raise
            self._connected = sock
        return self._connected

    def deliver(self, data: bytes) -> None:
        """A datagram from the source (dropped when the queue is full, as UDP may)."""
        if self.closed or self._queued + len(data) > QUEUE_BYTES:
            return
        self.last_active = time.monotonic()
        self._items.append(data)
        self._queued += len(data)
        self._readable.set()

    def recv(self) -> bytes:
        items = self._items
        while not items:
            if self.closed:
                raise ConnectionAbortedError("udp: session ended")
            self._readable.clear()
            if not self._readable.wait(self._timeout):
                raise TimeoutError("udp: no datagram")
        data = items.popleft()
        self._queued -= len(data)
        self.bytes_received += len(data)
        return data

    def send(self, data: bytes | memoryview) -> None:
        if self.closed:
            raise ConnectionAbortedError("udp: session ended")
        self.last_active = time.monotonic()
        self.bytes_sent += len(data)
        try:
            self.owner.sock.sendto(data, self.source)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer: the datagram is lost, as UDP allows
        except OSError as exc:  # (too large, unreachable): this datagram only
            log.debug("udp: cannot answer %s: %s", self.owner.describe(self.source), exc)

    def close_write(self) -> None:
        """Datagrams have no half-close: the session ends when idle."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        self._queued = 0
        self._readable.set()
        self.owner.forget(self)
        if self._connected is not None:
            self._connected.close()

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds


class PacketSessions:
    """Reads ``sock`` (a bound UDP socket) and hands each new source's ``SourceStream`` to
    ``on_session`` (run in its own greenlet, which owns the stream)."""

    def __init__(self, sock: socket.socket, on_session: Callable[[SourceStream], None], *,
                 idle: float = SOURCE_IDLE, max_sources: int = MAX_SOURCES,
                 name: str = "udp", once: bool = False) -> None:
        """``once``: close the socket as soon as no session is left (a socket connected to
        one source, see the module's docstring)."""
        sock.setblocking(False)
        self.sock = sock
        self.on_session = on_session
        self.idle = idle
        self.max_sources = max_sources
        self.name = name
        self.once = once
        self.sessions: dict[tuple, SourceStream] = {}
        self.dropped = 0  # datagrams from new sources while the table was full
        self.closed = False
        self._greenlets: list[gevent.Greenlet] = []

    def describe(self, source: tuple) -> str:
        host, port = source[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._read), gevent.spawn(self._sweep)]

    def open(self, source: tuple) -> SourceStream:
        """Start the session of ``source`` before any datagram of it arrives here."""
        stream = self.sessions[source] = SourceStream(self, source)
        gevent.spawn(self._serve, stream)
        return stream

    def forget(self, stream: SourceStream) -> None:
        if self.sessions.get(stream.source) is stream:
            del self.sessions[stream.source]
        if self.once and not self.sessions:
            self.close()

    def close(self) -> None:
        """Stop reading, end every session, close the socket."""
        if self.closed:
            return
        self.closed = True
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        for stream in list(self.sessions.values()):
            stream.close()
        self.sock.close()

    def _read(self) -> None:
        sock = self.sock
        watcher = get_hub().loop.io(sock.fileno(), _READ)
        read = 0
        try:
            while not self.closed:
                try:
                    data, source = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    get_hub().wait(watcher)
                    continue
                except OSError as exc:  # an ICMP error for an earlier answer: go on
                    if self.closed or sock.fileno() < 0:
                        return
                    log.debug("%s: %s", self.name, exc)
                    continue
                if data:  # (an empty datagram would read as the end of the stream)
                    self._arrived(data, source)
                read += 1
                if not read & YIELD_EVERY:
                    gevent.sleep(0)  # a flood must not starve the sessions
        finally:
            watcher.close()

    def _arrived(self, data: bytes, source: tuple) -> None:
        stream = self.sessions.get(source)
        if stream is None:
            if len(self.sessions) >= self.max_sources:
                if not self.dropped:
                    log.warning("%s: %d sessions at once: datagrams from new sources are "
                                "dropped", self.name, self.max_sources)
                self.dropped += 1
                return
            stream = self.sessions[source] = SourceStream(self, source)
            stream.deliver(data)
            gevent.spawn(self._serve, stream)
            return
        stream.deliver(data)

    def _serve(self, stream: SourceStream) -> None:
        try:
            self.on_session(stream)
        except Exception:  # one session must never stop the socket
            log.exception("%s: session of %s failed", self.name, self.describe(stream.source))
            stream.close()

    def _sweep(self) -> None:
        period = min(SWEEP_EVERY, self.idle / 2)
        while not self.closed:
            gevent.sleep(period)
            now = time.monotonic()
            for stream in list(self.sessions.values()):
                if now - stream.last_active > self.idle:
                    stream.close()
            if self.dropped and len(self.sessions) < self.max_sources:
                log.info("%s: %d datagrams from new sources were dropped", self.name,
                         self.dropped)
                self.dropped = 0
