"""Moves bytes both ways between two streams until both directions have ended.

Each direction ends on end-of-stream (propagated as a half-close) or an error (both ends are
then closed). Idleness is judged for the connection as a whole, as V2Ray's activity timer
does: one timer per relay checks every ``idle`` seconds whether anything moved since its last
look and closes both ends if not; once one direction has ended the period becomes
``after_half_close``. (A timeout on every read would cut a long one-way download and cost a
timer per wait.)

A socket relayed to a mux session runs without a greenlet of its own: the tunnel reader writes
the session's payloads to the socket and reports the session's end by callback, and the socket
is read in hub callbacks when it is readable. A parked greenlet costs about 8 KiB, and
thousands of mostly idle visitors are the normal case. Other pairs get a greenlet per
direction.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
from gevent import get_hub

from revproxy.mux.connection import MuxSession
from revproxy.net.stream import RECV_SIZE, SocketStream, Stream

IDLE_TIMEOUT = 300.0
AFTER_HALF_CLOSE = 30.0
YIELD_EVERY = 15  # mask: yield to the hub once every 16 transfers
_READ = 1  # libev's EV_READ


class _IdleWatch:
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
    ``on_done``. Between a socket and a mux session this returns at once and the relay goes
    on in hub callbacks; otherwise it returns when done."""
    a.settimeout(None)
    b.settimeout(None)
    if _writes_through(b, a):
        _SocketToSession(a, b, idle, after_half_close, on_done).start()
    elif _writes_through(a, b):
        _SocketToSession(b, a, idle, after_half_close, on_done).start()
    else:
        _Pumps(a, b, idle, after_half_close).run()
        if on_done is not None:
            on_done()


def _writes_through(session: Stream, sock: Stream) -> bool:
    return isinstance(session, MuxSession) and isinstance(sock, SocketStream) and \
        session.sink is None


class _SocketToSession:
    """A socket ⇄ mux session relay driven by callbacks: the session's payloads go to the
    socket as the tunnel reader receives them (the session's sink); the socket's data is read
    when libev reports it readable and queued on the tunnel, unless the tunnel's write queue is
    full: then reading waits until the tunnel writer has taken the queue."""

    __slots__ = ("stream", "session", "after_half_close", "on_done", "watch", "_recv",
                 "_reader", "_read_done", "_write_done", "_finished")

    def __init__(self, stream: SocketStream, session: MuxSession, idle: float,
                 after_half_close: float, on_done: Callable[[], None] | None) -> None:
        self.stream = stream
        self.session = session
        self.after_half_close = after_half_close
        self.on_done = on_done
        self.watch = _IdleWatch(self._progress, self._finish, idle)
        self._recv = stream.sock.recv  # non-blocking: EAGAIN raises
        fd = stream.sock.fileno()
        self._reader = get_hub().loop.io(fd, _READ) if fd >= 0 else None
        self._read_done = False  # the socket's end reached the session
        self._write_done = False  # the session's end reached the socket
        self._finished = False

    def start(self) -> None:
        session = self.session
        try:
            session.attach_sink(self.stream.send)  # flushes what the session buffered
        except OSError:
            self._finish()
            return
        session.watch_end(self._session_ended)
        if self._reader is None:  # the socket was closed already
            self._finish()
        elif not self._finished:
            self._reader.start(self._readable)

    def _progress(self) -> int:
        return self.session.bytes_in + self.session.bytes_out

    def _readable(self) -> None:
        conn = self.session.conn
        if conn.congested:
            self._reader.stop()
            conn.when_uncongested(self._resume)
            return
        try:
            data = self._recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._finish()
            return
        if not data:
            self._reader.stop()
            self._read_done = True
            if self._write_done:
                self._finish()  # the session's End goes out as it closes
                return
            self.session.close_write()
            self.watch.shorten(self.after_half_close)
            return
        try:
            self.session.send(data)
        except OSError:  # the session or its tunnel is gone
            self._finish()

    def _resume(self) -> None:
        if not self._finished and not self._read_done:
            self._reader.start(self._readable)

    def _session_ended(self, error: Exception | None) -> None:
        """The peer ended the session (``error`` None) or it failed."""
        if error is not None or self._read_done:
            self._finish()  # closing sends the FIN: no shutdown first (everything was read)
            return
        self.stream.close_write()
        self._write_done = True
        self.watch.shorten(self.after_half_close)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._reader is not None:
            self._reader.close()  # before the socket: libev must not watch a closed descriptor
        self.watch.stop()
        self.session.on_end = None
        self.session.close()  # an End with the error flag unless both sides ended
        self.stream.close()
        if self.on_done is not None:
            self.on_done()


class _Pumps:
    """A greenlet per direction: this one pumps ``a`` → ``b``, a second one ``b`` → ``a``."""

    __slots__ = ("a", "b", "after_half_close", "moved", "watch")

    def __init__(self, a: Stream, b: Stream, idle: float, after_half_close: float) -> None:
        self.a = a
        self.b = b
        self.after_half_close = after_half_close
        self.moved = 0  # transfers by the pumps
        self.watch = _IdleWatch(self._progress, self._idle, idle)

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
