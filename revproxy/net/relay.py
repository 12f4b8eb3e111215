"""Moves bytes both ways between two streams until both directions have ended.

Each direction ends on end-of-stream (propagated as a half-close) or an error (both ends are
then closed). Idleness is judged for the connection as a whole, as V2Ray's activity timer
does: a relay that moved nothing for ``policy.conn_idle`` seconds closes both ends; once the
uplink (``a`` to ``b``: ``a`` is the side the connection came from) has ended the period
becomes ``policy.downlink_only``, once the downlink has ended ``policy.uplink_only`` (0: close
at once, as V2Ray does). (A timeout on every read would cut a long one-way download and cost
a timer per wait.)

A stream that can relay a socket by itself (``Splicer``, net/stream.py: a mux session runs it
in hub callbacks, without a greenlet) is asked to, and so is a datagram stream that can relay
another by itself (``splice_datagrams``, net/udp.py); other pairs get a greenlet per direction.

A stream that seals each write in chunks (VMess: ``seal_size``, the most one chunk carries,
and a writer has 2**16 nonces) is written at most one chunk's worth at a time (``_ChunkReads``):
a 64 KiB socket read would go out as a full chunk and a scrap, twice the nonces, and cut a
direct VMess connection after ~2 GiB one way instead of ~4 GiB.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import get_hub

from revproxy.log import log
from revproxy.net.stream import (
    RECV_SIZE,
    Prefixed,
    SocketStream,
    Stream,
    reset_on_close,
    socket_of,
)
from revproxy.policy import CONN_IDLE, DEFAULT, HALF_OPEN, SessionPolicy

IDLE_TIMEOUT = CONN_IDLE
AFTER_HALF_CLOSE = HALF_OPEN
YIELD_EVERY = 15  # mask: yield to the hub once every 16 transfers


class IdleWatch:
    """Calls ``on_idle`` once ``progress()`` has not changed for ``period`` s (give or take
    a quarter of it), as V2Ray's activity timer does.

    Watches of one period share a repeating timer (``_Clock``): starting and stopping a watch,
    done for every connection, is a set operation instead of a libev timer of its own."""

    __slots__ = ("progress", "on_idle", "_seen", "_since", "_clock", "_timer")

    def __init__(self, progress: Callable[[], int], on_idle: Callable[[], None],
                 period: float) -> None:
        self.progress = progress
        self.on_idle = on_idle
        self._clock: _Clock | None = None
        self._timer: Any = None
        self._watch(period)

    def _watch(self, period: float) -> None:
        if period > 0:
            self._seen = self.progress()
            self._since = time.monotonic()
            clock = _CLOCKS.get(period)
            if clock is None or clock.loop is not get_hub().loop:
                clock = _CLOCKS[period] = _Clock(period)
            self._clock = clock
            clock.add(self)
        else:
            # A period of 0 (V2Ray: end at once) still waits for the hub, never calls back
            # here.
            timer = self._timer = get_hub().loop.timer(0.0)
            timer.start(self._expire)

    def _check(self, now: float, period: float) -> None:
        progress = self.progress()
        if progress != self._seen:
            self._seen = progress
            self._since = now
        elif now - self._since >= period:
            self.stop()
            self.on_idle()

    def _expire(self) -> None:
        self.stop()
        self.on_idle()

    def shorten(self, period: float) -> None:
        """One direction is done: the other may stay silent for ``period`` at most."""
        if self._clock is not None or (self._timer is not None and self._timer.active):
            self.stop()
            self._watch(period)

    def stop(self) -> None:
        clock = self._clock
        if clock is not None:
            self._clock = None
            clock.watches.discard(self)
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.stop()
            timer.close()


TICKS_PER_PERIOD = 4


class _Clock:
    """The repeating timer that looks at every ``IdleWatch`` of one period,
    ``TICKS_PER_PERIOD`` times per period; it runs while it has watches."""

    __slots__ = ("period", "loop", "watches", "_timer")

    def __init__(self, period: float) -> None:
        self.period = period
        self.loop = get_hub().loop
        self.watches: set[IdleWatch] = set()
        self._timer: Any = None

    def add(self, watch: IdleWatch) -> None:
        self.watches.add(watch)
        if self._timer is None:
            step = self.period / TICKS_PER_PERIOD
            timer = self._timer = self.loop.timer(step, step)
            timer.start(self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        period = self.period
        for watch in list(self.watches):  # (one going idle may stop others)
            if watch._clock is self:
                try:
                    watch._check(now, period)
                except Exception:  # one connection's failure must not spare the others
                    log.exception("idle check of %r failed", watch.on_idle)
        if not self.watches:
            timer, self._timer = self._timer, None
            timer.stop()
            timer.close()


# The clocks by period (a configuration has a few: its levels' connIdle and half-close
# limits); a clock without watches holds no timer.
_CLOCKS: dict[float, _Clock] = {}


def relay(a: Stream, b: Stream, policy: SessionPolicy = DEFAULT,
          on_done: Callable[[], None] | None = None) -> None:
    """Relay ``a`` ⇄ ``b`` until both directions are done, then close both streams and call
    ``on_done``; ``a`` is the side the connection came from, ``policy`` the session's idle
    limits. When one is a socket and the other can splice it (a mux session), this returns
    at once and the relay goes on in hub callbacks; otherwise it returns when done."""
    a.settimeout(None)
    b.settimeout(None)
    if _spliced(a, b, policy, on_done, uplink=True) or \
            _spliced(b, a, policy, on_done, uplink=False):
        return
    for one, other in ((a, b), (b, a)):
        splice_datagrams = getattr(one, "splice_datagrams", None)
        if splice_datagrams is not None and splice_datagrams(other, policy, on_done):
            return
    _Pumps(a, b, policy).run()
    if on_done is not None:
        on_done()


def _spliced(sock: Stream, other: Stream, policy: SessionPolicy,
             on_done: Callable[[], None] | None, uplink: bool) -> bool:
    """Whether ``other`` took over relaying ``sock`` (see ``Splicer``); ``uplink``: whether
    ``sock`` is the side the connection came from."""
    if not isinstance(sock, SocketStream):
        return False
    splice = getattr(other, "splice", None)
    if splice is None:
        return False
    if not uplink:  # the socket is the server's side: its end is the downlink's
        policy = _swapped(policy)
    return bool(splice(sock, policy, on_done))


# Policies with the half-close limits swapped, by the policy's id (kept with the policy, so
# that the id stays its own): one per level, made once instead of per session.
_SWAPPED: dict[int, tuple[SessionPolicy, SessionPolicy]] = {}
_SWAPPED_MAX = 64


def _swapped(policy: SessionPolicy) -> SessionPolicy:
    """``policy`` with ``uplink_only`` and ``downlink_only`` exchanged."""
    known = _SWAPPED.get(id(policy))
    if known is not None and known[0] is policy:
        return known[1]
    swapped = SessionPolicy(policy.handshake, policy.conn_idle, policy.downlink_only,
                            policy.uplink_only, policy.buffer_size)
    if len(_SWAPPED) >= _SWAPPED_MAX:  # (policies of earlier configurations)
        _SWAPPED.clear()
    _SWAPPED[id(policy)] = (policy, swapped)
    return swapped


class _Pumps:
    """A greenlet per direction: this one pumps ``a`` → ``b``, a second one ``b`` → ``a``."""

    __slots__ = ("a", "b", "policy", "moved", "watch")

    def __init__(self, a: Stream, b: Stream, policy: SessionPolicy) -> None:
        self.a = a
        self.b = b
        self.policy = policy
        self.moved = 0  # transfers by the pumps
        self.watch = IdleWatch(self._progress, self._idle, policy.conn_idle)

    def _progress(self) -> int:
        return self.moved

    def _idle(self) -> None:
        _close_both(self.a, self.b)  # no close waits: the pumps wake with an error

    def run(self) -> None:
        a, b = self.a, self.b
        try:
            other = gevent.spawn(self._pump, b, a, self.policy.uplink_only)
            try:
                self._pump(a, b, self.policy.downlink_only)
                other.join()
            finally:
                other.kill(block=False)
        finally:
            self.watch.stop()
            a.close()
            b.close()

    def _pump(self, src: Stream, dst: Stream, then: float) -> None:
        """``src`` → ``dst``; once done, the other direction may be silent ``then`` s."""
        rounds = 0
        recv = _reader(src, dst)
        try:
            while True:
                data = recv()
                if not data:
                    break
                dst.send(data)
                self.moved += 1
                rounds += 1
                if not rounds & YIELD_EVERY:
                    # Reads and writes that never block never yield: let the others run.
                    gevent.sleep(0)
            dst.close_write()
            self.watch.shorten(then)
        except (OSError, EOFError, ValueError) as exc:
            # Errors (reset, decode failure, closed by the idle watch) abort the whole
            # connection; a cut (the other end reset, a tunnel gone) is passed on as a reset.
            if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
                for stream in (src, dst):
                    sock = socket_of(stream)
                    if sock is not None:
                        reset_on_close(sock)
            _close_both(src, dst)


def _reader(src: Stream, dst: Stream) -> Callable[[], bytes]:
    """What the pump from ``src`` to ``dst`` calls to read: ``src.recv``, or, when ``src`` is
    a byte-stream socket and ``dst`` seals its writes in chunks smaller than a read,
    ``_ChunkReads``."""
    size = getattr(dst, "seal_size", 0)  # (a Prefixed stream forwards it)
    inner = src.stream if isinstance(src, Prefixed) else src
    if (0 < size < RECV_SIZE and isinstance(inner, SocketStream)
            and inner.sock.type == socket.SOCK_STREAM):
        return _ChunkReads(src, inner, size).recv
    return src.recv  # (a datagram stream's reads are datagrams: never cut)


class _ChunkReads:
    """Reads of ``stream`` of at most ``size`` bytes each.

    The first read, and every read after one that came up short (the socket is drained), go
    through ``stream.recv``, which waits (and wakes when the stream is closed); what such a
    read brings beyond ``size`` is kept and given out next, topped up from the socket if it
    has more. In between, while the socket has data, it is read directly, ``size`` bytes at a
    time. A ``Prefixed`` socket's early bytes come from its first ``recv``, before any direct
    read."""

    __slots__ = ("stream", "size", "_socket", "_direct", "_rest")

    def __init__(self, stream: Stream, socket_stream: SocketStream, size: int) -> None:
        self.stream = stream
        self.size = size
        self._socket = socket_stream
        self._direct = False
        self._rest = b""

    def recv(self) -> bytes:
        size = self.size
        rest = self._rest
        if len(rest) >= size:  # (early bytes, or a stream whose reads are larger)
            self._rest = rest[size:]
            return rest[:size]
        counted = self._socket
        if self._direct or rest:
            want = size - len(rest)
            try:
                data = counted.sock.recv(want)
            except BlockingIOError:
                self._direct = False
            else:
                counted.bytes_received += len(data)
                self._direct = len(data) == want
                if not rest:
                    return data
                self._rest = b""
                return rest + data if data else rest  # (the end of the stream comes next)
        if rest:
            self._rest = b""
            return rest
        data = self.stream.recv()
        if len(data) > size:
            data, self._rest = data[:size], data[size:]
        return data


def _close_both(a: Stream, b: Stream) -> None:
    a.close()
    b.close()
