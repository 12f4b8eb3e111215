"""I/O helpers the proxy protocols share: serving a session by dialing (``relay_through``),
running a sans-IO handshake over a stream under a deadline, draining a failed peer, a stream
with bytes already read in front (``Prefixed``), an in-memory stream pair (``pipe``) for
inbounds that speak to the outbound themselves, and an idle limit on one stream
(``IdleLimit``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent.event import Event

from revproxy.log import log
from revproxy.net.relay import relay
from revproxy.net.session import Session
from revproxy.net.stream import Prefixed, Stream, TunnelStream

HANDSHAKE_TIMEOUT = 4.0  # V2Ray's policy: Handshake, for every inbound
PIPE_LIMIT = 512 * 1024  # V2Ray's pipe buffer per connection direction

T = TypeVar("T")


def relay_through(session: Session, stream: Stream,
                  upstream_for: Callable[[Session], Stream], name: str) -> None:
    """What a dialing outbound does with a session: open its upstream with ``upstream_for``
    and relay both ways under the session's policy, the upstream counted as the outbound's
    traffic; a failed open ends the session with one warning."""
    try:
        upstream = upstream_for(session)
    except OSError as exc:
        log.warning("%s: cannot open a connection for %s: %s", name, session.describe(), exc)
        session.ending.end()
        return
    session.upstream = upstream  # counted as this outbound's traffic
    relay(stream, upstream, session.policy, on_done=session.ending.end)


def read_handshake(stream: Stream, feed: Callable[[bytes], T | None],
                   timeout: float | None = None) -> T | None:
    """Receive and ``feed`` until it gives a result; None if the peer closed first. Raises
    ``TimeoutError`` after ``timeout`` s (default ``HANDSHAKE_TIMEOUT``), and whatever
    ``feed`` raises."""
    limit = HANDSHAKE_TIMEOUT if timeout is None else timeout
    with gevent.Timeout(limit, TimeoutError("handshake timed out")):
        while True:
            data = stream.recv()
            if not data:
                return None
            result = feed(data)
            if result is not None:
                return result


def drain(stream: Stream, amount: int, timeout: float | None = None) -> None:
    """Read and discard up to ``amount`` bytes for at most ``timeout`` s (default
    ``HANDSHAKE_TIMEOUT``), so that a prober cannot tell when (or whether) its bytes
    failed."""
    limit = HANDSHAKE_TIMEOUT if timeout is None else timeout
    try:
        with gevent.Timeout(limit, TimeoutError):
            while amount > 0:
                data = stream.recv()
                if not data:
                    return
                amount -= len(data)
    except OSError:
        pass


def prefixed(stream: TunnelStream, early: bytes) -> TunnelStream:
    """``stream`` itself when nothing came early (a bare socket keeps the relay's fast
    paths), else a ``Prefixed``."""
    return Prefixed(stream, early) if early else stream


class _Direction:
    """One direction of a pipe: chunks in order, at most ``limit`` bytes before the writer
    waits. ``ended``: no more will come; ``broken``: the reader is gone."""

    __slots__ = ("chunks", "size", "limit", "ended", "broken", "readable", "writable")

    def __init__(self, limit: int) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.limit = limit
        self.ended = False
        self.broken = False
        self.readable = Event()
        self.writable = Event()
        self.writable.set()


class PipeEnd:
    """One end of an in-memory stream pair (``pipe``)."""

    __slots__ = ("_in", "_out", "_timeout", "_closed")

    def __init__(self, inbox: _Direction, outbox: _Direction) -> None:
        self._in = inbox
        self._out = outbox
        self._timeout: float | None = None
        self._closed = False

    def recv(self) -> bytes:
        inbox = self._in
        while not inbox.chunks:
            if inbox.ended or self._closed:
                return b""
            inbox.readable.clear()
            if not inbox.readable.wait(self._timeout):
                raise TimeoutError("timed out")
        data = inbox.chunks.popleft()
        inbox.size -= len(data)
        if inbox.size < inbox.limit:
            inbox.writable.set()
        return data

    def send(self, data: bytes | memoryview) -> None:
        out = self._out
        while True:
            if self._closed or out.ended or out.broken:
                raise BrokenPipeError("pipe closed")
            if out.size < out.limit:
                break
            out.writable.clear()
            out.writable.wait()
        if data:
            out.chunks.append(bytes(data))
            out.size += len(data)
            out.readable.set()

    def send_nowait(self, data: bytes) -> bool:
        # The limit is a soft one: a write from a hub callback must not wait.
        out = self._out
        if self._closed or out.ended or out.broken:
            raise BrokenPipeError("pipe closed")
        if data:
            out.chunks.append(bytes(data))
            out.size += len(data)
            out.readable.set()
        return True

    def flush(self) -> None:
        """Nothing is ever kept back."""

    def close_write(self) -> None:
        self._out.ended = True
        self._out.readable.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_write()
        inbox = self._in
        inbox.broken = True
        inbox.chunks.clear()
        inbox.size = 0
        inbox.readable.set()  # wakes our own reader
        inbox.writable.set()  # wakes the peer's writer, which then fails

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds


def pipe(limit: int = PIPE_LIMIT) -> tuple[PipeEnd, PipeEnd]:
    """Two connected in-memory stream ends: what one sends the other receives."""
    one, two = _Direction(limit), _Direction(limit)
    return PipeEnd(one, two), PipeEnd(two, one)


class IdleLimit(Prefixed):
    """``stream`` closed once nothing moved either way for ``idle`` seconds: an inbound's
    ``timeout`` setting (V2Ray's connection idle policy) when it differs from the relay's."""

    __slots__ = ("_moved", "_seen", "_timer")

    def __init__(self, stream: TunnelStream, early: bytes, idle: float) -> None:
        super().__init__(stream, early)
        self._moved = 0
        self._seen = 0
        self._timer: Any = gevent.get_hub().loop.timer(idle, idle)
        self._timer.start(self._check)

    def _check(self) -> None:
        if self._moved != self._seen:
            self._seen = self._moved
            return
        self.close()

    def recv(self) -> bytes:
        data = super().recv()
        self._moved += 1
        return data

    def send(self, data: bytes | memoryview) -> None:
        self._moved += 1
        super().send(data)

    def send_nowait(self, data: bytes) -> bool:
        self._moved += 1
        return super().send_nowait(data)

    def close(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()
        super().close()
