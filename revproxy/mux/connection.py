"""One Mux.Cool connection over a tunnel stream: its sessions, its frame reader, its writes.

``MuxConnection`` runs the read loop and keeps the session table; ``MuxClient`` (opens
sessions) and ``MuxServer`` (accepts them) add what differs. A ``MuxSession`` is a stream:
payloads are buffered for ``recv`` (a full buffer blocks the tunnel reader: back-pressure as in
V2Ray), or handed to a ``sink`` callable as they arrive: the reverse control session does
that, and so does the relay for a session bound to a socket (no buffer, no switch).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent import get_hub
from gevent.event import Event

from revproxy.mux.frame import (
    NETWORK_UDP,
    OPTION_DATA,
    STATUS_END,
    STATUS_KEEP,
    STATUS_KEEPALIVE,
    STATUS_NEW,
    Frame,
    FrameDecoder,
    MuxError,
    encode_end,
    encode_keep,
    encode_keep_chunks,
    encode_keepalive,
)
from revproxy.net.stream import TunnelStream

MAX_STREAM_FRAME = 8192  # V2Ray writes stream payloads in frames of at most 8 KiB
WRITE_BUFFER = 1024 * 1024  # bytes queued for the tunnel before senders wait
SESSION_BUFFER = 512 * 1024  # bytes buffered per session before the tunnel reader waits

_EOF = b""


class MuxSession:
    """One session of a mux connection, usable as a stream."""

    __slots__ = ("conn", "id", "network", "sink", "on_end", "_end", "_items", "_buffered",
                 "_readable", "_space", "_timeout", "_ended_local", "_ended_remote", "closed",
                 "bytes_in", "bytes_out")

    def __init__(self, conn: MuxConnection, session_id: int, network: int) -> None:
        self.conn = conn
        self.id = session_id
        self.network = network
        self.sink: Callable[[bytes], None] | None = None
        # Called once when the session ends from the far side: None when the peer ended it,
        # the error when it failed (reset by the peer, tunnel gone, sink failed).
        self.on_end: Callable[[Exception | None], None] | None = None
        self._end: bytes | Exception | None = None
        # Payloads, then possibly one end marker (b"" or an exception), in arrival order.
        self._items: deque[bytes | Exception] = deque()
        self._buffered = 0
        self._readable = Event()
        self._space = Event()
        self._timeout: float | None = None
        self._ended_local = False
        self._ended_remote = False
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0

    # -- fed by the connection's reader
    def _deliver(self, payload: bytes) -> None:
        self.bytes_in += len(payload)
        while self.sink is None and not self.closed and self._buffered >= SESSION_BUFFER:
            self._space.clear()
            self._space.wait()  # back-pressure: the whole tunnel waits, as in V2Ray
        sink = self.sink
        if sink is not None:
            try:
                sink(payload)
            except OSError as exc:
                # The receiving end is gone: this session fails, the tunnel goes on.
                self.sink = None
                self._push_end(exc)
        elif not self.closed:
            self._items.append(payload)
            self._buffered += len(payload)
            self._readable.set()

    def _push_end(self, marker: bytes | Exception) -> None:
        if self.closed:
            return
        self._items.append(marker)
        self._readable.set()
        if self._end is None:
            self._end = marker
            if self.on_end is not None:
                self.on_end(None if isinstance(marker, bytes) else marker)

    def watch_end(self, callback: Callable[[Exception | None], None]) -> None:
        """Set ``on_end``; if the session has already ended, call it now."""
        self.on_end = callback
        end = self._end
        if end is not None and not self.closed:
            callback(None if isinstance(end, bytes) else end)

    def _remote_end(self, error: bool) -> None:
        self._ended_remote = True
        self._push_end(ConnectionResetError("mux: session reset by peer") if error else _EOF)

    def _abort(self) -> None:
        """The tunnel is gone: wake the reader with an error."""
        self._ended_local = self._ended_remote = True
        if not self.closed:
            self._items.clear()
            self._buffered = 0
            self._push_end(ConnectionResetError("mux: tunnel closed"))
            self.closed = True
            self._space.set()

    def attach_sink(self, sink: Callable[[bytes], None]) -> None:
        """From now on hand payloads to ``sink`` as they arrive; what is already buffered goes
        first, in order. The end marker stays buffered for ``recv``."""
        items = self._items
        while items and isinstance(items[0], bytes) and items[0]:
            payload = items.popleft()
            self._buffered -= len(payload)
            self._space.set()
            sink(payload)  # may yield; the reader keeps appending behind, in order
        # Nothing buffered before the end marker: the reader may write straight through.
        self.sink = sink
        self._space.set()

    # -- the stream interface
    def recv(self) -> bytes:
        items = self._items
        while not items:
            if self.closed:
                return _EOF
            self._readable.clear()
            if not self._readable.wait(self._timeout):
                raise TimeoutError("mux: session idle")
        item = items.popleft()
        if isinstance(item, Exception):
            raise item
        if item:
            self._buffered -= len(item)
            self._space.set()
        return item

    def send(self, data: bytes | memoryview) -> None:
        if self.closed or self._ended_local:
            raise ConnectionResetError("mux: session closed")
        self.bytes_out += len(data)
        self.conn.send_payload(self, data)

    def close_write(self) -> None:
        if not self._ended_local and not self.closed:
            self._ended_local = True
            self.conn.send_end(self.id, error=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._ended_local:
            self._ended_local = True
            self.conn.send_end(self.id, error=not self._ended_remote)
        self.conn.forget(self.id)
        self._items.clear()
        self._buffered = 0
        self._space.set()  # a reader waiting for room drops its payload instead
        self._readable.set()

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds


class MuxConnection:
    """The frame reader and session table shared by both ends."""

    def __init__(self, tunnel: TunnelStream, name: str = "") -> None:
        self.tunnel = tunnel
        self.name = name
        self.sessions: dict[int, MuxSession] = {}
        self.total_sessions = 0
        self.closed = False
        self.last_received = time.monotonic()
        self.peer_sends_keepalive = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self._out: list[bytes] = []  # frames waiting to be sealed and sent
        self._out_size = 0
        self._out_ready = Event()
        self._out_space = Event()
        self._uncongested: list[Callable[[], None]] = []  # waiting for the queue to empty
        self._writer: gevent.Greenlet | None = None
        self._writer_idle = False  # parked with nothing to send: the hub may send instead
        self._flush_due = False  # a hub callback will send what is queued
        self._backlogged = False  # the tunnel kept unsent bytes: the writer must flush them
        self._on_close: list[Callable[[], None]] = []

    @property
    def active_sessions(self) -> int:
        return len(self.sessions)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    # -- writing
    @property
    def congested(self) -> bool:
        """Whether ``write`` would wait for the tunnel."""
        return self._out_size >= WRITE_BUFFER and not self.closed

    def when_uncongested(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the writer has taken the queue (or the tunnel closed)."""
        self._uncongested.append(callback)

    def write(self, data: bytes) -> None:
        """Queue frames for the tunnel. What gathers during one turn of the hub goes out in
        one sealed write, so frames of many sessions share one encryption call and one syscall
        (measured: more requests/s than writing from each session's greenlet). A hub callback
        sends it when the tunnel takes it without waiting; otherwise the writer greenlet does,
        waiting for the tunnel (the callback saves two greenlet switches per write)."""
        while self._out_size >= WRITE_BUFFER and not self.closed:
            self._out_space.clear()
            self._out_space.wait()  # back-pressure on the sessions while the tunnel is slow
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        """Queue without waiting for room (never blocks: hub callbacks use it)."""
        if self.closed:
            raise ConnectionResetError("mux: tunnel closed")
        self._out.append(data)
        self._out_size += len(data)
        if self._writer_idle:
            if not self._flush_due:
                self._flush_due = True
                get_hub().loop.run_callback(self._flush)
        elif self._writer is None:
            self._writer = gevent.spawn(self._write_loop)
        # else the writer is busy sending and takes the queue when done

    def _take(self) -> bytes:
        """The queued frames as one buffer; wakes whoever waits for room."""
        batch, self._out = self._out, []
        size, self._out_size = self._out_size, 0
        self._out_space.set()
        if self._uncongested:
            self._wake_uncongested()
        self.bytes_sent += size
        return batch[0] if len(batch) == 1 else b"".join(batch)

    def _flush(self) -> None:
        """Hub callback: send what gathered this turn, without waiting for the tunnel."""
        self._flush_due = False
        if not self._out or not self._writer_idle or self.closed:
            return  # the writer took over, or nothing left
        try:
            complete = self.tunnel.send_nowait(self._take())
        except OSError:
            self.close()
            return
        if not complete:  # the tunnel kept the rest: the writer waits until it is out
            self._backlogged = True
            self._out_ready.set()

    def _write_loop(self) -> None:
        try:
            while True:
                while not self._out and not self._backlogged:
                    if self.closed:
                        return
                    self._writer_idle = True
                    self._out_ready.clear()
                    self._out_ready.wait()
                    self._writer_idle = False
                if self._backlogged:
                    self._backlogged = False
                    self.tunnel.flush()
                if self._out:
                    self.tunnel.send(self._take())
        except OSError:
            self.close()

    def send_payload(self, session: MuxSession, data: bytes | memoryview) -> None:
        if session.network == NETWORK_UDP or len(data) <= MAX_STREAM_FRAME:
            self.write(encode_keep(session.id, data))
        else:
            self.write(encode_keep_chunks(session.id, data, MAX_STREAM_FRAME))

    def _wake_uncongested(self) -> None:
        waiting, self._uncongested = self._uncongested, []
        for callback in waiting:
            callback()

    def send_end(self, session_id: int, error: bool) -> None:
        """Queue an End frame; never waits (a few bytes past the queue limit do no harm, and
        sessions are closed from hub callbacks)."""
        try:
            self._queue(encode_end(session_id, error))
        except ConnectionResetError:
            pass

    def send_keepalive(self) -> None:
        self.write(encode_keepalive())

    def forget(self, session_id: int) -> None:
        self.sessions.pop(session_id, None)

    # -- reading
    def run(self) -> None:
        """Read frames until the tunnel ends or misbehaves; then close everything."""
        decoder = FrameDecoder()
        rounds = 0
        try:
            while True:
                data = self.tunnel.recv()
                if not data:
                    break
                rounds += 1
                if not rounds & 15:
                    gevent.sleep(0)  # a tunnel that never blocks must not starve the others
                self.last_received = time.monotonic()
                self.bytes_received += len(data)
                try:
                    frames = decoder.feed(data)
                except MuxError as exc:
                    for frame in exc.frames:  # what came before the bad frame still counts
                        self._handle(frame)
                    raise
                self._handle_batch(frames)
        except (OSError, MuxError):
            pass
        finally:
            self.close()

    def _handle_batch(self, frames: list[Frame]) -> None:
        """Handle frames in order; consecutive stream payloads of one session are delivered
        as one (one write to its socket instead of one per 8 KiB frame)."""
        run_session: MuxSession | None = None
        run: list[bytes] = []
        for frame in frames:
            if frame.status == STATUS_KEEP and frame.payload:
                session = self.sessions.get(frame.session_id)
                if session is not None and session.network != NETWORK_UDP:
                    if session is not run_session:
                        if run_session is not None:
                            run_session._deliver(run[0] if len(run) == 1 else b"".join(run))
                        run_session, run = session, []
                    run.append(frame.payload)
                    continue
            if run_session is not None:
                run_session._deliver(run[0] if len(run) == 1 else b"".join(run))
                run_session, run = None, []
            self._handle(frame)
        if run_session is not None:
            run_session._deliver(run[0] if len(run) == 1 else b"".join(run))

    def _handle(self, frame: Frame) -> None:
        status = frame.status
        if status == STATUS_KEEP:
            session = self.sessions.get(frame.session_id)
            if session is not None:
                if frame.payload:
                    session._deliver(frame.payload)
            elif frame.option & OPTION_DATA:
                self.send_end(frame.session_id, error=False)  # tell the peer it is gone
        elif status == STATUS_NEW:
            self.on_new(frame)
        elif status == STATUS_END:
            session = self.sessions.get(frame.session_id)
            if session is not None:
                session._remote_end(error=bool(frame.option & 0x02))
        elif status == STATUS_KEEPALIVE:
            self.peer_sends_keepalive = True
        else:
            raise MuxError(f"unknown frame status {status}")

    def on_new(self, frame: Frame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.tunnel.close()
        self._out.clear()
        self._out_ready.set()  # the writer greenlet ends
        self._out_space.set()  # senders waiting for room get their error
        self._wake_uncongested()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for session in sessions:
            session._abort()
        for callback in self._on_close:
            callback()
