"""A socket ⇄ mux session relay run by libev callbacks, without a greenlet of its own.

A parked greenlet costs about 8 KiB and thousands of mostly idle visitors are the normal case,
so ``MuxSession.splice`` relays a socket this way. The tunnel reader hands the session's
payloads to ``_write``, which sends them to the socket at once; what the socket does not take
waits in order (counted against the session's buffer, see mux/connection.py) and goes out when
libev reports the socket writable. The tunnel reader never waits for the socket. The socket is
read when libev reports it readable and its data queued on the tunnel, unless the tunnel's write
queue is full (then reading waits until the tunnel writer has taken the queue) or the session's
peer asked for a pause (then it waits for RESUME).

This module knows the session only by ``SplicedSession`` (no import of connection.py, which
imports this one).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from gevent import get_hub

from revproxy.net.relay import IdleWatch
from revproxy.net.stream import SocketStream, reset_on_close
from revproxy.policy import SessionPolicy

_READ = 1  # libev's EV_READ
_OUTQ = struct.Struct("i")
_OUTQ_ZERO = bytes(_OUTQ.size)
_TCP_INFO = struct.Struct("=8B16I")  # up to tcpi_rttvar; tcpi_rtt (µs) is the 24th field
_WRITE = 2  # libev's EV_WRITE


class SessionReset(ConnectionResetError):
    """This side gave up on the session (flow control): the peer was sent End with the error
    flag, and a spliced socket is closed with a reset."""


class _Tunnel(Protocol):
    @property
    def congested(self) -> bool: ...

    @property
    def read_size(self) -> int: ...

    def when_uncongested(self, callback: Callable[[], None]) -> None: ...


class Acknowledging(Protocol):
    """What a session's socket tells of its peer's progress (flow control asks it only while
    the session is full)."""

    def unsent(self) -> int: ...

    def round_trip(self) -> float: ...


class SplicedSession(Protocol):
    """What the splice uses of a ``MuxSession``."""

    @property
    def conn(self) -> _Tunnel: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...

    on_end: Callable[[Exception | None], None] | None
    sink: Callable[[bytes], None] | None
    acks: Acknowledging | None
    paused: bool

    def when_resumed(self, callback: Callable[[], None]) -> None: ...

    def attach_sink(self, sink: Callable[[bytes], None]) -> None: ...

    def watch_end(self, callback: Callable[[Exception | None], None]) -> None: ...

    def send(self, data: bytes | memoryview) -> None: ...

    def close_write(self) -> None: ...

    def close(self) -> None: ...

    def hold(self, size: int) -> None: ...

    def release(self, size: int) -> None: ...

    def mark_stalled(self, since: float) -> None: ...


class SocketSplice:
    """Relays ``stream`` ⇄ ``session`` until both directions are done, then closes both and
    calls ``on_done``. Idleness is watched as ``relay`` does (net/relay.py).

    A session cut before it ended cleanly (its tunnel died, the peer ended it with the error
    flag, flow control gave up) closes the socket with a reset, so that the socket's peer
    learns that it was cut (an orderly end would pass a truncated download for a whole one).
    Before that, ``rescue`` (if any) is asked whether it takes the socket over (it judges by
    the session's byte counts whether anything moved): then the splice stops without closing
    it (the portal carries a visitor whose tunnel vanished before answering on another)."""

    __slots__ = ("stream", "session", "policy", "on_done", "rescue", "watch",
                 "_recv", "_send", "_reader", "_writer", "_pending", "_read_done",
                 "_write_done", "_end_pending", "_finished")

    def __init__(self, stream: SocketStream, session: SplicedSession, policy: SessionPolicy,
                 on_done: Callable[[], None] | None,
                 rescue: Callable[[], bool] | None = None) -> None:
        self.stream = stream
        self.session = session
        # Idle limits; the socket is the side the connection came from: its end is the
        # uplink's (then downlink_only applies), the session's end the downlink's.
        self.policy = policy
        self.on_done = on_done
        self.rescue = rescue
        self.watch = IdleWatch(self._progress, self._finish, policy.conn_idle)
        sock = stream.sock
        self._recv = sock.recv  # non-blocking: EAGAIN raises
        self._send = sock.send
        fd = sock.fileno()
        self._reader: Any = get_hub().loop.io(fd, _READ) if fd >= 0 else None
        self._writer: Any = None  # made when a write first would block
        # What the socket has not taken yet; made when first needed (a deque is ~600 bytes and
        # most connections never need one).
        self._pending: deque[bytes | memoryview] | None = None
        self._read_done = False  # the socket's end reached the session
        self._write_done = False  # the session's end reached the socket
        self._end_pending = False  # the session ended; its end goes out after _pending
        self._finished = False

    def start(self) -> None:
        session = self.session
        try:
            session.attach_sink(self._write)  # what the session buffered goes first
        except OSError:
            self._finish()
            return
        session.watch_end(self._session_ended)
        session.acks = self
        if self._reader is None:  # the socket was closed already
            self._finish()
        elif not self._finished:
            self._reader.start(self._readable)

    def _progress(self) -> int:
        return self.session.bytes_in + self.session.bytes_out

    def unsent(self) -> int:
        """Bytes the socket took that its peer has not acknowledged (SIOCOUTQ)."""
        try:
            return _OUTQ.unpack(fcntl.ioctl(self.stream.sock.fileno(), termios.TIOCOUTQ,
                                            _OUTQ_ZERO))[0]
        except (OSError, ValueError):  # closed meanwhile
            return 0

    def round_trip(self) -> float:
        """The kernel's smoothed round-trip time to the socket's peer, in seconds (0.0 if it
        is no TCP socket)."""
        try:
            raw = self.stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                              _TCP_INFO.size)
        except (OSError, ValueError):
            return 0.0
        if len(raw) < _TCP_INFO.size:
            return 0.0
        return _TCP_INFO.unpack(raw)[23] / 1e6

    # -- session → socket
    def _write(self, payload: bytes) -> None:
        """The session's sink, called by the tunnel reader: never waits."""
        self.stream.bytes_sent += len(payload)  # the stream's counters (net/traffic.py)
        if self._pending:  # the socket is behind: keep the order
            self._keep(payload)
            return
        try:
            sent = self._send(payload)
        except BlockingIOError:
            sent = 0
        if sent != len(payload):
            self._keep(memoryview(payload)[sent:] if sent else payload)

    def _keep(self, data: bytes | memoryview) -> None:
        if self._finished:
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        first = not pending
        pending.append(data)
        session = self.session
        if first:
            writer = self._writer
            if writer is None:
                writer = self._writer = get_hub().loop.io(self.stream.sock.fileno(), _WRITE)
            writer.start(self._writable)
            session.mark_stalled(time.monotonic())
        session.hold(len(data))  # may reset the session, which finishes this splice

    def _writable(self) -> None:
        pending = self._pending
        assert pending is not None  # the watcher starts with the first kept bytes
        send = self._send
        moved = 0
        try:
            while pending:
                data = pending[0]
                sent = send(data)
                moved += sent
                if sent < len(data):
                    pending[0] = memoryview(data)[sent:]
                    break
                pending.popleft()
        except BlockingIOError:
            pass
        except OSError:  # the socket's peer is gone
            self._finish(reset=True)
            return
        session = self.session
        if moved:
            session.release(moved)
        if pending:
            if moved:
                session.mark_stalled(time.monotonic())
            return
        self._writer.stop()
        session.mark_stalled(0.0)
        if self._end_pending:
            self._end_pending = False
            self._session_ended(None)

    def _session_ended(self, error: Exception | None) -> None:
        """The peer ended the session (``error`` None), or it failed."""
        if error is not None:
            if (self.rescue is not None and not self._pending and not self._read_done
                    and not self._write_done and self.rescue()):
                self._finish(keep_socket=True)
                return
            # Cut: say so with a reset, unless the session had ended cleanly and the socket
            # took everything (its FIN is on the way; a reset would drop unsent bytes).
            self._finish(reset=bool(self._pending) or not self._write_done)
        elif self._pending:
            self._end_pending = True  # after the bytes still waiting for the socket
        elif self._read_done:
            self._finish()  # closing sends the FIN: no shutdown first (everything was read)
        else:
            self.stream.close_write()
            self._write_done = True
            self.watch.shorten(self.policy.uplink_only)

    # -- socket → session
    def _readable(self) -> None:
        session = self.session
        if session.paused:  # the session's peer asked for a pause: the socket waits
            self._reader.stop()
            session.when_resumed(self._resume)
            return
        conn = session.conn
        if conn.congested:
            self._reader.stop()
            conn.when_uncongested(self._resume)
            return
        try:
            data = self._recv(conn.read_size)  # (as much as one sealed chunk carries)
        except BlockingIOError:
            return
        except OSError:
            self._finish(reset=bool(self._pending))
            return
        if not data:
            self._reader.stop()
            self._read_done = True
            if self._write_done:
                self._finish()  # the session's End goes out as it closes
                return
            session.close_write()
            self.watch.shorten(self.policy.downlink_only)
            return
        self.stream.bytes_received += len(data)
        try:
            session.send(data)
        except OSError:  # the session or its tunnel is gone: cut
            self._finish(reset=True)

    def _resume(self) -> None:
        if not self._finished and not self._read_done and not self._reader.active:
            self._reader.start(self._readable)

    def _finish(self, reset: bool = False, keep_socket: bool = False) -> None:
        """Stop, close the session and (unless ``keep_socket``) the socket, with a reset if
        asked; then ``on_done``."""
        if self._finished:
            return
        self._finished = True
        # Watchers go before the socket: libev must not watch a closed descriptor.
        if self._reader is not None:
            self._reader.close()
        if self._writer is not None:
            self._writer.close()
        self.watch.stop()
        self._pending = None
        session = self.session
        session.on_end = None
        session.sink = None  # late payloads are dropped
        session.close()  # an End with the error flag unless both sides ended
        if keep_socket:
            return  # rescued: whoever took the socket over closes it
        if reset:
            reset_on_close(self.stream.sock)
        self.stream.close()
        if self.on_done is not None:
            self.on_done()
