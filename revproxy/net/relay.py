"""Moves bytes both ways between two streams until both directions have ended.

Each direction ends on end-of-stream (propagated as a half-close) or an error (both ends are
then closed). Idleness is judged for the connection as a whole, as V2Ray's activity timer
does: one timer per relay checks every ``idle`` seconds whether anything moved since its last
look and closes both ends if not; once one direction has ended the period becomes
``after_half_close``. (A timeout on every read would cut a long one-way download and cost a
timer per wait.)

A stream that can relay a socket by itself (``Splicer``, net/stream.py: a mux session runs it
in hub callbacks, without a greenlet) is asked to; other pairs get a greenlet per direction.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
from gevent import get_hub

from revproxy.net.stream import SocketStream, Stream

IDLE_TIMEOUT = 300.0
AFTER_HALF_CLOSE = 30.0
YIELD_EVERY = 15  # mask: yield to the hub once every 16 transfers


class IdleWatch:
    """Calls ``on_idle`` when a check finds that ``progress()`` did not change since the
    previous check."""

    __slots__ = ("progress", "on_idle", "_seen", "_timer")

    def __init__(self, progress: Callable[[], int], on_idle: Callable[[], None],
                 period: float) -> None:
        self.progress = progress
        self.on_idle = on_idle
        self._seen = progress()
        self._timer = get_hub().loop.timer(period, period)
        self._timer.start(self._check)

    def _check(self) -> None:
        progress = self.progress()
        if progress != self._seen:
            self._seen = progress
            return
        self.stop()
        self.on_idle()

    def shorten(self, period: float) -> None:
        """One direction is done: the other may stay silent for ``period`` at most."""
        timer = self._timer
        if timer.active:
            timer.stop()
            timer.close()
            self._seen = self.progress()
            self._timer = get_hub().loop.timer(period, period)
            self._timer.start(self._check)

    def stop(self) -> None:
        self._timer.stop()
        self._timer.close()


def relay(a: Stream, b: Stream, idle: float = IDLE_TIMEOUT,
          after_half_close: float = AFTER_HALF_CLOSE,
          on_done: Callable[[], None] | None = None) -> None:
    """Relay ``a`` ⇄ ``b`` until both directions are done, then close both streams and call
    ``on_done``. When one is a socket and the other can splice it (a mux session), this
    returns at once and the relay goes on in hub callbacks; otherwise it returns when done."""
    a.settimeout(None)
    b.settimeout(None)
    if _spliced(a, b, idle, after_half_close, on_done) or \
            _spliced(b, a, idle, after_half_close, on_done):
        return
    _Pumps(a, b, idle, after_half_close).run()
    if on_done is not None:
        on_done()


def _spliced(sock: Stream, other: Stream, idle: float, after_half_close: float,
             on_done: Callable[[], None] | None) -> bool:
    """Whether ``other`` took over relaying ``sock`` (see ``Splicer``)."""
    if not isinstance(sock, SocketStream):
        return False
    splice = getattr(other, "splice", None)
    return splice is not None and splice(sock, idle, after_half_close, on_done)


class _Pumps:
    """A greenlet per direction: this one pumps ``a`` → ``b``, a second one ``b`` → ``a``."""

    __slots__ = ("a", "b", "after_half_close", "moved", "watch")

    def __init__(self, a: Stream, b: Stream, idle: float, after_half_close: float) -> None:
        self.a = a
        self.b = b
        self.after_half_close = after_half_close
        self.moved = 0  # transfers by the pumps
        self.watch = IdleWatch(self._progress, self._idle, idle)

    def _progress(self) -> int:
        return self.moved

    def _idle(self) -> None:
        _close_both(self.a, self.b)  # no close waits: the pumps wake with an error

    def run(self) -> None:
        a, b = self.a, self.b
        try:
            other = gevent.spawn(self._pump, b, a)
            try:
                self._pump(a, b)
                other.join()
            finally:
                other.kill(block=False)
        finally:
            self.watch.stop()
            a.close()
            b.close()

    def _pump(self, src: Stream, dst: Stream) -> None:
        rounds = 0
        try:
            while True:
                data = src.recv()
                if not data:
                    break
                dst.send(data)
                self.moved += 1
                rounds += 1
                if not rounds & YIELD_EVERY:
                    # Reads and writes that never block never yield: let the others run.
                    gevent.sleep(0)
            dst.close_write()
            self.watch.shorten(self.after_half_close)
        except (OSError, EOFError, ValueError):
            # Errors (reset, decode failure, closed by the idle watch) abort the whole
            # connection.
            _close_both(src, dst)


def _close_both(a: Stream, b: Stream) -> None:
    a.close()
    b.close()
