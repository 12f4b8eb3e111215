"""Moves bytes both ways between two streams until both directions have ended.

Each direction ends on end-of-stream (propagated as a half-close) or an error (both ends are
then closed). Idleness is judged for the connection as a whole, as V2Ray's activity timer
does: one timer per relay checks every ``idle`` seconds whether anything moved since its last
look and closes both ends if not; once one direction has ended the period becomes
``after_half_close``. (A timeout on every read would cut a long one-way download and cost a
timer per wait.)

A mux session relayed to a socket is written through: the tunnel reader hands its payloads
straight to the socket and reports the session's end by callback, so such a relay runs on
one greenlet, the caller's.
"""

from __future__ import annotations

import gevent
from gevent import get_hub

from revproxy.mux.connection import MuxSession
from revproxy.stream import SocketStream, Stream

IDLE_TIMEOUT = 300.0
AFTER_HALF_CLOSE = 30.0
YIELD_EVERY = 15  # mask: yield to the hub once every 16 transfers


class _IdleWatch:
    """Closes both streams when a check finds that nothing moved since the previous one."""

    __slots__ = ("a", "b", "moved", "_seen", "_timer")

    def __init__(self, a: Stream, b: Stream, period: float) -> None:
        self.a = a
        self.b = b
        self.moved = 0  # transfers by the pumps; write-through counts in the session
        self._seen = self._progress()
        self._timer = get_hub().loop.timer(period, period)
        self._timer.start(self._check)

    def _progress(self) -> int:
        moved = self.moved
        for stream in (self.a, self.b):
            if isinstance(stream, MuxSession):
                moved += stream.bytes_in
        return moved

    def _check(self) -> None:
        progress = self._progress()
        if progress != self._seen:
            self._seen = progress
            return
        self.stop()
        gevent.spawn(_close_both, self.a, self.b)  # closing a session may wait: not in the hub

    def shorten(self, period: float) -> None:
        """One direction is done: the other may stay silent for ``period`` at most."""
        timer = self._timer
        if timer.active:
            timer.stop()
            timer.close()
            self._seen = self._progress()
            self._timer = get_hub().loop.timer(period, period)
            self._timer.start(self._check)

    def stop(self) -> None:
        self._timer.stop()
        self._timer.close()


def relay(a: Stream, b: Stream, idle: float = IDLE_TIMEOUT,
          after_half_close: float = AFTER_HALF_CLOSE) -> None:
    """Relay ``a`` ⇄ ``b``; returns when both directions are done, with both streams closed."""
    a.settimeout(None)
    b.settimeout(None)
    watch = _IdleWatch(a, b, idle)
    try:
        if _writes_through(b, a):
            _relay_through(b, a, watch, after_half_close)
        elif _writes_through(a, b):
            _relay_through(a, b, watch, after_half_close)
        else:
            other = gevent.spawn(_pump, b, a, watch, after_half_close)
            try:
                _pump(a, b, watch, after_half_close)
                other.join()
            finally:
                other.kill(block=False)
    finally:
        watch.stop()
        a.close()
        b.close()


def _writes_through(src: Stream, dst: Stream) -> bool:
    return isinstance(src, MuxSession) and isinstance(dst, SocketStream) and src.sink is None


def _relay_through(session: MuxSession, sock: SocketStream, watch: _IdleWatch,
                   after_half_close: float) -> None:
    """``session`` → ``sock`` by the tunnel reader; ``sock`` → ``session`` pumped here."""

    def session_ended(error: Exception | None) -> None:
        if error is None:
            sock.close_write()
            watch.shorten(after_half_close)
        else:
            sock.close()  # wakes the pump below with an error

    try:
        session.attach_sink(sock.send)
    except OSError:
        return
    session.watch_end(session_ended)
    _pump(sock, session, watch, after_half_close)
    try:
        session.recv()  # its end: b"" once the peer ended it, an error if it failed
    except OSError:
        pass


def _pump(src: Stream, dst: Stream, watch: _IdleWatch, after_half_close: float) -> None:
    rounds = 0
    try:
        while True:
            data = src.recv()
            if not data:
                break
            dst.send(data)
            watch.moved += 1
            rounds += 1
            if not rounds & YIELD_EVERY:
                # Reads and writes that never block never yield: let the others run.
                gevent.sleep(0)
        dst.close_write()
        watch.shorten(after_half_close)
    except (OSError, EOFError, ValueError):
        # Errors (reset, decode failure, closed by the idle watch) abort the whole connection.
        _close_both(src, dst)


def _close_both(a: Stream, b: Stream) -> None:
    a.close()
    b.close()
