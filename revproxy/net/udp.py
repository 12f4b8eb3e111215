"""A listening UDP socket as sessions: one per source address, each a stream of datagrams.

``PacketSessions`` reads one UDP socket. The first datagram from a new source opens a
``SourceStream`` for it, handed to ``on_session`` in a greenlet of its own; later datagrams
from that source are queued for it, and what it sends goes back to the source from the same
socket. As in V2Ray's UDP inbound worker (app/proxyman/inbound/worker.go: a source's
connection is dropped once inactive for more than 8 s, looked at every 16 s; its queue is a
16 KiB pipe that discards what overflows) a source's session ends after ``idle`` seconds
without a datagram either way, and its queue drops what does not fit. The table of sources is
bounded: datagrams from new sources are dropped while it is full.

A ``SourceStream`` is a datagram stream: each ``recv`` is one whole datagram, each ``send``
one datagram; it has no end of stream, so the relay's pumps (net/relay.py) keep the
boundaries. Closing it (the sweep does, once idle) wakes a reader with
``ConnectionAbortedError``, which ends the relay both ways. ``DatagramSocket`` is the other
kind: a connected UDP socket (freedom's way out).

Both are ``DatagramPort``s: besides being pulled with ``recv`` they can push each datagram to
a *sink* as it arrives, and the relay pairs two such ports (or one and a mux UDP session)
with a ``DatagramSplice`` instead of a greenlet per direction: a datagram then goes from the
socket read (a hub callback) through the other port's ``send`` (which never waits: what does
not fit is dropped, as UDP may) with no greenlet switch and no queue.

A datagram that went out is mostly answered within tens of microseconds (a request to a
server, across the tunnel and back). Sleeping in the poll until then costs more than the
answer's way: the wake-up of a process whose CPU went idle is an interrupt to another CPU,
dear on a virtual machine (a round trip through a portal and a bridge on one host has six of
them). So after a datagram goes out the loop *lingers*: for ``LINGER`` seconds it polls
without sleeping, handing the CPU to any other runnable process at each turn
(``sched_yield``), as Go's scheduler spins before it parks a thread. A busy loop never gets
there; an idle one spends at most ``LINGER`` per datagram.

A session that must be served by another worker (its tunnel is there) moves as a socket of
its own: ``connected_socket`` binds a second socket to the same address, connected to the
source, and the kernel delivers that source's datagrams to it (a connected socket matches
before the unconnected one); the other worker reads and answers through it, with a
``PacketSessions`` of its own (``once``: it serves that one source, ``open`` starts its
session at once, and it closes the socket when the session ends, idle or not).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import gevent
from gevent import get_hub, getcurrent
from gevent.event import Event
from gevent.socket import wait as wait_on_watcher

from revproxy.log import log
from revproxy.net.relay import IdleWatch
from revproxy.policy import SessionPolicy

SOURCE_IDLE = 8.0  # seconds without a datagram either way before a source's session ends
SWEEP_EVERY = 4.0  # how often idle sessions are looked for
MAX_SOURCES = 1024  # sessions at once per socket
QUEUE_BYTES = 16 * 1024  # datagrams waiting for one session's consumer
MAX_DATAGRAM = 65535  # the largest UDP payload (IPv4's is 65507)
READ_BATCH = 64  # datagrams read in one hub callback at most: then the others run
LINGER = 100e-6  # seconds the loop polls without sleeping after a datagram went out
_READ = 1  # libev's EV_READ
_LOST = (errno.EAGAIN, errno.EMSGSIZE, errno.ENOBUFS)  # a datagram lost, the socket fine

Sink = Callable[[bytes], None]


class _Linger:
    """The loop's lingering after a datagram went out (see the module's docstring): a libev
    idle watcher, which makes the loop poll with no timeout while it runs."""

    __slots__ = ("loop", "watcher", "until")

    def __init__(self) -> None:
        self.loop: Any = None
        self.watcher: Any = None
        self.until = 0.0

    def start(self) -> None:
        """Linger for ``LINGER`` seconds from now."""
        self.until = _clock() + LINGER
        watcher = self.watcher
        if watcher is None or self.loop is not get_hub().loop:  # (a fork: a new loop)
            self.loop = get_hub().loop
            watcher = self.watcher = self.loop.idle()
        if not watcher.active:
            watcher.start(self._turn)

    def _turn(self) -> None:
        """Each turn of the loop while nothing else is pending."""
        if _clock() >= self.until:
            self.watcher.stop()
        else:
            _sched_yield()


_clock = time.perf_counter
_sched_yield = os.sched_yield
_linger = _Linger()
linger = _linger.start


@runtime_checkable
class DatagramPort(Protocol):
    """What a ``DatagramSplice`` uses of each side: a ``SourceStream``, a ``DatagramSocket``
    or a mux UDP session (``MuxSession``)."""

    def attach_sink(self, sink: Sink) -> None:
        """From now on hand each datagram to ``sink`` as it arrives (queued ones first);
        ``sink`` never waits."""
        ...

    def watch_end(self, callback: Callable[[Exception | None], None]) -> None:
        """Call ``callback`` once the port ends by itself (now, if it has ended)."""
        ...

    def send(self, data: bytes | memoryview) -> None:
        """One datagram; never waits (dropped if it does not fit)."""
        ...

    def close(self) -> None: ...


class DatagramSplice:
    """Relays two ``DatagramPort``s in callbacks until one ends or nothing moves for
    ``policy.conn_idle`` (as the relay's pumps would); then closes both and calls
    ``on_done``. ``progress`` counts what moved (both directions pass through either
    port's counters)."""

    __slots__ = ("a", "b", "on_done", "watch", "_done")

    def __init__(self, a: DatagramPort, b: DatagramPort, policy: SessionPolicy,
                 on_done: Callable[[], None] | None, progress: Callable[[], int]) -> None:
        self.a = a
        self.b = b
        self.on_done = on_done
        self._done = False
        self.watch = IdleWatch(progress, self.stop, policy.conn_idle)

    def start(self) -> None:
        a, b = self.a, self.b
        a.watch_end(self._ended)
        b.watch_end(self._ended)
        if self._done:
            return
        try:
            b.attach_sink(a.send)
            a.attach_sink(b.send)
        except OSError:
            self.stop()

    def _ended(self, _error: Exception | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self._done:
            return
        self._done = True
        self.watch.stop()
        self.a.close()
        self.b.close()
        if self.on_done is not None:
            self.on_done()


def _splice(port: SourceStream | DatagramSocket, other: object, policy: SessionPolicy,
            on_done: Callable[[], None] | None) -> bool:
    """``splice_datagrams`` of both port kinds: a splice if ``other`` is a port too."""
    if not (hasattr(other, "attach_sink") and hasattr(other, "watch_end")):
        return False
    assert isinstance(other, DatagramPort)

    def progress() -> int:
        return port.bytes_received + port.bytes_sent

    DatagramSplice(port, other, policy, on_done, progress).start()
    return True


class SourceStream:
    """The datagrams of one source of a ``PacketSessions`` socket, as a stream."""

    __slots__ = ("owner", "source", "bytes_received", "bytes_sent", "last_active", "closed",
                 "_items", "_queued", "_readable", "_timeout", "_connected", "_sink", "_on_end")

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
        self._sink: Sink | None = None
        self._on_end: Callable[[Exception | None], None] | None = None

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
        sink = self._sink
        if sink is not None:
            self.last_active = time.monotonic()
            self.bytes_received += len(data)
            try:
                sink(data)
            except OSError:  # the other side is gone
                self.close()
                return
            linger()  # the answer comes back soon
            return
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

    def attach_sink(self, sink: Sink) -> None:
        """Push datagrams to ``sink`` from now on (see ``DatagramPort``)."""
        items = self._items
        while items and not self.closed:
            data = items.popleft()
            self._queued -= len(data)
            self.bytes_received += len(data)
            sink(data)
        self._sink = sink

    def watch_end(self, callback: Callable[[Exception | None], None]) -> None:
        """``callback(None)`` when the session ends (idle, or its socket closed)."""
        if self.closed:
            callback(None)
        else:
            self._on_end = callback

    def splice_datagrams(self, other: object, policy: SessionPolicy,
                         on_done: Callable[[], None] | None) -> bool:
        """Relay self ⇄ ``other`` with a ``DatagramSplice`` if ``other`` is a
        ``DatagramPort`` (the relay asks, net/relay.py); False otherwise."""
        return _splice(self, other, policy, on_done)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sink = None
        self._items.clear()
        self._queued = 0
        self._readable.set()
        self.owner.forget(self)
        if self._connected is not None:
            self._connected.close()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(None)

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
        self._sweeper: gevent.Greenlet | None = None
        self._watcher: Any = None

    def describe(self, source: tuple) -> str:
        host, port = source[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._watcher = get_hub().loop.io(self.sock.fileno(), _READ)
        self._watcher.start(self._readable)
        self._sweeper = gevent.spawn(self._sweep)

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
        if self._watcher is not None:  # (before the socket: libev must not watch a closed fd)
            self._watcher.close()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for stream in list(self.sessions.values()):
            stream.close()
        self.sock.close()

    def _readable(self) -> None:
        """Hub callback: read what waits, ``READ_BATCH`` datagrams at most (the watcher
        calls again while more wait: a flood does not starve the sessions). A socket that
        serves one source (its own connected socket, or a listener with one session) reads
        one datagram, as ``DatagramSocket`` does: a closed-loop source has one in flight, and
        reading on would cost a system call and an exception for each; one left waiting is
        read in the loop's next turn (its poll is level-triggered)."""
        recvfrom, sessions = self.sock.recvfrom, self.sessions
        for _ in range(1 if len(sessions) == 1 else READ_BATCH):
            if self.closed:
                return
            try:
                data, source = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier answer: go on
                if self.closed or self.sock.fileno() < 0:
                    return
                log.debug("%s: %s", self.name, exc)
                continue
            if data:  # (an empty datagram would read as the end of the stream)
                try:
                    stream = sessions.get(source)
                    if stream is not None:
                        stream.deliver(data)
                    else:
                        self._arrived(data, source)
                except Exception:  # one session must never stop the socket
                    log.exception("%s: datagram from %s", self.name, self.describe(source))

    def _arrived(self, data: bytes, source: tuple) -> None:
        """A datagram, maybe from a new source."""
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


class DatagramSocket:
    """A connected UDP socket as a datagram stream (freedom's way out): each ``recv`` is one
    datagram (an empty one is skipped: it would read as the end of the stream), each ``send``
    one datagram that never waits (dropped if too large or the buffer is full, as UDP may);
    no end of stream: the relay's idle limit or the other side's end closes it. As a
    ``DatagramPort`` it reads in a hub callback and pushes each datagram to its sink."""

    __slots__ = ("sock", "bytes_received", "bytes_sent", "closed", "_timeout", "_watcher",
                 "_waiter", "_sink", "_on_end")

    def __init__(self, sock: socket.socket) -> None:
        """``sock``: a connected UDP socket (a plain one: it is made non-blocking)."""
        sock.setblocking(False)
        self.sock = sock
        self.bytes_received = 0  # for the traffic counters (net/traffic.py)
        self.bytes_sent = 0
        self.closed = False
        self._timeout: float | None = None
        self._watcher: Any = None  # made on the first wait or sink
        self._waiter: Any = None  # the greenlet waiting in recv, if any
        self._sink: Sink | None = None
        self._on_end: Callable[[Exception | None], None] | None = None

    def recv(self) -> bytes:
        recv = self.sock.recv
        while True:
            if self.closed:
                raise ConnectionAbortedError("udp: socket closed")
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                self._wait()
                continue
            if data:
                self.bytes_received += len(data)
                return data

    def _wait(self) -> None:
        if self._watcher is None:
            self._watcher = get_hub().loop.io(self.sock.fileno(), _READ)
        self._waiter = getcurrent()
        try:
            wait_on_watcher(self._watcher, self._timeout, TimeoutError("udp: no datagram"))
        finally:
            self._waiter = None

    def send(self, data: bytes | memoryview) -> None:
        if self.closed:
            raise ConnectionAbortedError("udp: socket closed")
        self.bytes_sent += len(data)
        try:
            self.sock.send(data)
        except OSError as exc:
            if exc.errno not in _LOST:
                raise
            return
        linger()  # the answer comes back soon

    def attach_sink(self, sink: Sink) -> None:
        """Push datagrams to ``sink`` from now on, read in a hub callback."""
        if self.closed:
            raise ConnectionAbortedError("udp: socket closed")
        self._sink = sink
        if self._watcher is None:
            self._watcher = get_hub().loop.io(self.sock.fileno(), _READ)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        """Hub callback: one datagram. (A socket of one session mostly holds one; reading
        on until EAGAIN would cost a system call and an exception per datagram, while one
        left waiting is read in the loop's next turn: its poll is level-triggered.)"""
        sink = self._sink
        if sink is None:
            return
        try:
            data = self.sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # (refused: nothing listens there) the session fails
            self._end(exc)
            return
        if data:
            self.bytes_received += len(data)
            try:
                sink(data)
            except OSError as exc:  # the other side is gone
                self._end(exc)

    def _end(self, error: Exception | None) -> None:
        on_end, self._on_end = self._on_end, None
        self.close()
        if on_end is not None:
            on_end(error)

    def watch_end(self, callback: Callable[[Exception | None], None]) -> None:
        """``callback(error)`` when reading fails (an ICMP error: nothing listens there)."""
        if self.closed:
            callback(None)
        else:
            self._on_end = callback

    def splice_datagrams(self, other: object, policy: SessionPolicy,
                         on_done: Callable[[], None] | None) -> bool:
        """As ``SourceStream.splice_datagrams``."""
        return _splice(self, other, policy, on_done)

    def close_write(self) -> None:
        """UDP has no half-close."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sink = None
        if self._watcher is not None:  # (before the socket: libev must not watch a closed fd)
            self._watcher.close()
        if self._waiter is not None:  # wake a reader
            get_hub().loop.run_callback(self._waiter.throw,
                                        ConnectionAbortedError("udp: socket closed"))
            self._waiter = None
        self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds
