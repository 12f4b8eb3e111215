"""One Mux.Cool connection over a tunnel stream: its sessions, its frame reader, its writes,
and the flow control that keeps one session from holding up the others.

``MuxConnection`` runs the read loop and keeps the session table; ``MuxClient`` (opens
sessions) and ``MuxServer`` (accepts them) add what differs. A ``MuxSession`` is a stream:
payloads are buffered for ``recv``, handed to a ``sink`` callable as they arrive (the reverse
control sessions do that), or written to a socket by ``MuxSession.splice`` (mux/splice.py).

Flow control. Mux.Cool has no window and a tunnel has one reader. V2Ray's reader waits as long
as one session's buffer is full, so one visitor that stops reading stalls its whole tunnel.
Here each session holds what its consumer has not taken yet (``recv``'s queue, or what its
socket would not accept), counted against ``FlowLimits.buffer_size`` (V2Ray's ``bufferSize``
policy); a session holding that much is *full*.

Between two revproxy ends the reader never waits. Each end opens with FLOW_HELLO, a KeepAlive
frame with data (mux/frame.py), which V2Ray reads and discards. To a peer that said it, a
session holding half its buffer sends FLOW_PAUSE: the peer stops reading that session's socket
(or its sender waits), and the session goes on delivering what was in flight; at a quarter it
sends FLOW_RESUME. A visitor that stops reading, or reads slowly, then costs the others nothing:
its backend waits, as it would for a direct TCP connection. What a paused session holds beyond
its buffer was in flight on the tunnel, so the tunnel's bound (``tunnel_buffer``) covers it.

A peer that said no hello (V2Ray) knows no pause: the reader waits for a full session only
while it makes progress (a visitor slower than the tunnel: the only back-pressure Mux.Cool has
is the tunnel's own, and resetting every download slower than the tunnel would be worse), and
at most ``stall_wait`` without progress (for a socket, four of its round trips if that is
longer), counted from the same moment for all the sessions that filled in one read; after that
the session is no longer waited for, and the tunnel moves on. Progress of a spliced socket is
what its peer acknowledged (the kernel's unsent queue shrinking), not what the kernel took into
a send buffer that may hold megabytes, so a slow reader is not taken for a stalled one. The
allowance is a second because clients pause that long in normal use (a phone's radio, a busy
application) and should not lose their download for it; a visitor that stopped reading costs
the others on its tunnel that second once, however many stall at the same moment; for a while
after that, sessions that fill get ``stall_after`` (50 ms), so that visitors stalling one after
another do not cost a second each.
Such a session is reset alone (End with the error flag; a spliced socket is closed with a
reset) when it comes to hold ``hold_factor`` buffers (keeping more would not bound memory),
when it stays full for ``full_timeout`` (V2Ray's ``downlinkOnly``-style deadline; not while
paused: it costs the others nothing), or, with either kind of peer, when its socket takes
nothing for ``write_timeout``. The tunnel's total is bounded too (``tunnel_buffer``: the
sessions holding most go first). One timer per connection checks the deadlines of the sessions
holding bytes, so nothing is timed per payload.

Writing: frames queue for the tunnel; senders wait while ``WRITE_BUFFER`` bytes are queued.
Control frames (End, KeepAlive) never wait, so they are bounded separately: a peer that leaves
``CONTROL_LIMIT`` bytes of them unread, or whose tunnel takes nothing for
``tunnel_write_timeout``, has its tunnel closed. Liveness of a tunnel is otherwise the
heartbeat's business (reverse/), never the slowest session's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import get_hub
from gevent.event import Event

from revproxy.log import log
from revproxy.mux.frame import (
    FLOW_HELLO,
    FLOW_PAUSE,
    FLOW_RESUME,
    MAX_STREAM_PAYLOAD,
    NETWORK_UDP,
    OPTION_DATA,
    OPTION_ERROR,
    STATUS_END,
    STATUS_KEEP,
    STATUS_KEEPALIVE,
    STATUS_NEW,
    Frame,
    FrameDecoder,
    MuxError,
    decode_flow,
    encode_end,
    encode_flow,
    encode_keep,
    encode_keep_chunks,
    encode_keepalive,
)
from revproxy.mux.splice import Acknowledging, SessionReset, SocketSplice
from revproxy.net.stream import RECV_SIZE, SocketStream, TunnelStream
from revproxy.policy import SessionPolicy

WRITE_BUFFER = 256 * 1024  # data bytes queued for the tunnel before senders wait
# End/KeepAlive bytes queued and not yet taken by the tunnel (8,192 End frames): past this the
# peer is not reading and the tunnel is closed (control frames never wait, so they need a bound).
CONTROL_LIMIT = 64 * 1024
# Answers to frames for unknown sessions are a courtesy: skipped once this much control is
# waiting or the queue is full (a peer could provoke them without end).
REPLY_LIMIT = 16 * 1024

_EOF = b""
_HELLO = encode_flow(0, FLOW_HELLO)
_KEEP_OVERHEAD = len(encode_keep(0, b"\0")) - 1  # the header of a Keep frame with data
# A UDP session carries one datagram per frame; V2Ray's packet reader (common/mux/reader.go)
# fails the whole tunnel on a larger one, so larger datagrams are dropped both ways.
MAX_UDP_PAYLOAD = 2048


def stream_bytes_within(framed: int) -> int:
    """The most stream bytes whose Keep frames (``MAX_STREAM_PAYLOAD`` each) take at most
    ``framed`` bytes."""
    full, rest = divmod(framed, MAX_STREAM_PAYLOAD + _KEEP_OVERHEAD)
    return full * MAX_STREAM_PAYLOAD + max(rest - _KEEP_OVERHEAD, 0)


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """Per-session flow control of a mux connection (see the module docstring)."""

    buffer_size: int = 512 * 1024  # V2Ray's bufferSize policy: a session holding this is full
    stall_wait: float = 1.0  # the reader waits this long (or 4 round trips) for progress
    stall_after: float = 0.05  # ... but only this long (or 4 round trips) for a while after
    stall_memory: float = 10.0  # ... a session gave none: the reader's patience is for one
    hold_factor: int = 4  # a session holding this many buffers is reset at once
    full_timeout: float = 5.0  # a session full this long is reset (V2Ray's downlinkOnly: 5 s)
    write_timeout: float = 30.0  # a spliced socket that takes nothing this long is reset
    tunnel_buffer: int = 32 * 1024 * 1024  # all sessions of one tunnel together
    tunnel_write_timeout: float = 60.0  # a tunnel that takes nothing this long is closed
    check_every: float = 0.5  # how often the deadlines are checked
    signals: bool = True  # offer the peer PAUSE/RESUME (FLOW_HELLO); V2Ray's ends never do


DEFAULT_LIMITS = FlowLimits()


class MuxSession:
    """One session of a mux connection, usable as a stream."""

    __slots__ = ("conn", "id", "network", "buffer_size", "sink", "on_end", "acks", "_end",
                 "_items", "_buffered", "_taken", "_full_since", "_stalled_since", "_unwaited",
                 "_paused_peer", "paused", "_on_resume", "_space", "_readable", "_timeout",
                 "_ended_local", "_ended_remote", "closed", "bytes_in", "bytes_out")

    def __init__(self, conn: MuxConnection, session_id: int, network: int,
                 buffer_size: int | None = None) -> None:
        self.conn = conn
        self.id = session_id
        self.network = network
        self.buffer_size = conn.limits.buffer_size if buffer_size is None else buffer_size
        self.sink: Callable[[bytes], None] | None = None
        # Called when the session ends from the far side: None when the peer ended it, the
        # error when it failed (reset by the peer or by flow control, tunnel gone, sink failed).
        # After a clean end it may be called once more with an error.
        self.on_end: Callable[[Exception | None], None] | None = None
        # The consumer's socket, if a splice feeds one: progress while full is judged by the
        # bytes its peer acknowledged, within a few of its round trips.
        self.acks: Acknowledging | None = None
        self._end: bytes | Exception | None = None
        # Payloads, then possibly one end marker (b"" or an exception), in arrival order.
        self._items: deque[bytes | Exception] = deque()
        self._buffered = 0  # bytes held for the consumer: in _items, or a splice's pending
        self._taken = 0  # bytes the consumer took, in all
        self._full_since = 0.0  # when the session last became full; 0.0: not full
        self._stalled_since = 0.0  # last progress of a blocked socket; 0.0: not blocked
        self._unwaited = False  # full, no progress in its allowance: the reader goes on
        self._paused_peer = False  # the peer was asked to stop sending (FLOW_PAUSE)
        self.paused = False  # the peer asked us to stop sending
        self._on_resume: Callable[[], None] | None = None  # a paused sender waits for this
        self._space: Event | None = None  # set when the consumer takes bytes (made on demand)
        self._readable = Event()
        self._timeout: float | None = None
        self._ended_local = False
        self._ended_remote = False
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0

    # -- fed by the connection's reader
    def _deliver(self, payload: bytes) -> None:
        if self.network == NETWORK_UDP and len(payload) > MAX_UDP_PAYLOAD:
            return  # (see MAX_UDP_PAYLOAD)
        self.bytes_in += len(payload)
        sink = self.sink
        if sink is not None:
            try:
                sink(payload)
            except OSError as exc:
                # The receiving end is gone: this session fails, the tunnel goes on.
                self.sink = None
                self._push_end(exc)
        elif self._end is None and not self.closed:  # else late: dropped
            if self.network == NETWORK_UDP and self._buffered >= self.buffer_size:
                return  # datagrams may be lost: drop this one rather than wait or reset
            self._items.append(payload)
            self._readable.set()
            self.hold(len(payload))

    def progress(self) -> int:
        """A count that grows while the consumer makes progress: the bytes it took, less those
        its socket still holds unacknowledged."""
        acks = self.acks
        return self._taken - (acks.unsent() if acks is not None else 0)

    def allowance(self, limits: FlowLimits, patient: bool) -> float:
        """How long the reader waits for this full session without progress: ``stall_wait``,
        or ``stall_after`` when the reader is not ``patient``; four round trips of its socket
        if that is longer."""
        wait = limits.stall_wait if patient else limits.stall_after
        acks = self.acks
        if acks is None:
            return wait
        return max(wait, 4 * acks.round_trip())

    def wait_for_room(self, mark: int, deadline: float, stall: float) -> bool:
        """The session became full: the reader waits while it makes progress (``progress``
        moves on from ``mark``), and gives up at ``deadline`` or ``stall`` seconds after the
        last progress, whichever is later. True if it gave up."""
        space = self._space
        if space is None:
            space = self._space = Event()
        while self._buffered >= self.buffer_size and self._end is None and not self.closed:
            space.clear()
            now = time.monotonic()
            if now >= deadline:
                now_mark = self.progress()
                if now_mark == mark:
                    self._unwaited = True  # until it takes enough to be under its buffer
                    return True
                mark, deadline = now_mark, now + stall
            space.wait(deadline - now)  # (bytes taken wake it early; acknowledgements do not)
        return False

    # -- flow control; a splice calls these for the bytes its socket has not taken
    def hold(self, size: int) -> None:
        """``size`` more bytes wait for the consumer; apply the bounds (may reset)."""
        held = self._buffered + size
        self._buffered = held
        conn = self.conn
        conn.buffered += size
        if (held >= self.buffer_size >> 1 and conn.peer_flow and not self._paused_peer
                and self.network != NETWORK_UDP):  # (UDP drops)
            self._paused_peer = True
            conn.send_flow(self.id, FLOW_PAUSE)
        if held >= self.buffer_size:
            # (What a paused session receives beyond that was in flight when it paused: the
            # tunnel's bound covers it, the tunnel's socket buffers are not the session's.)
            if held >= conn.limits.hold_factor * self.buffer_size and not self._paused_peer:
                self.reset(f"{held} bytes held: the peer sends faster than they are taken")
                return
            if not self._full_since:
                self._full_since = time.monotonic()
                conn.track(self)
                if not (self._unwaited or self._paused_peer or self.network == NETWORK_UDP):
                    conn.filled.append(self)  # the reader waits for it after this read
        if conn.buffered > conn.limits.tunnel_buffer:
            conn.relieve()

    def release(self, size: int) -> None:
        """The consumer took ``size`` bytes."""
        if self.closed:
            return  # the counts were dropped at close
        self._buffered -= size
        self._taken += size
        self.conn.buffered -= size
        if self._paused_peer and self._buffered <= self.buffer_size >> 2:
            self._paused_peer = False
            self.conn.send_flow(self.id, FLOW_RESUME)
        if self._full_since:
            if self._buffered < self.buffer_size:
                self._full_since = 0.0
                self._unwaited = False
            if self._space is not None:
                self._space.set()  # progress: a waiting reader waits on

    # -- the peer's flow control (FLOW_PAUSE/FLOW_RESUME): what this side sends
    def peer_signal(self, pause: bool) -> None:
        """The peer asks to stop sending on this session (``pause``) or to go on."""
        if self.network == NETWORK_UDP:
            return  # datagrams are never paused: the receiver drops what it cannot keep
        self.paused = pause
        if not pause:
            self._wake_sender()

    def when_resumed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the peer resumes the session, or it ends or fails."""
        self._on_resume = callback

    def _wake_sender(self) -> None:
        resumed, self._on_resume = self._on_resume, None
        if resumed is not None:
            resumed()

    def _wait_resumed(self) -> None:
        """A greenlet's ``send`` on a paused session waits for RESUME, at most the write
        timeout (the peer resets a session it cannot deliver long before that)."""
        resumed = Event()
        deadline = time.monotonic() + self.conn.limits.write_timeout
        while self.paused and self._end is None and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("mux: the peer kept the session paused")
            resumed.clear()
            self._on_resume = resumed.set
            resumed.wait(left)
        if isinstance(self._end, Exception):
            raise ConnectionResetError("mux: session failed while paused")

    def mark_stalled(self, since: float) -> None:
        """The socket took nothing since ``since`` (monotonic); 0.0: it takes everything."""
        self._stalled_since = since
        if since:
            self.conn.track(self)

    def _drop_held(self) -> None:
        self.conn.buffered -= self._buffered
        self._buffered = 0
        self._full_since = self._stalled_since = 0.0
        if self._space is not None:
            self._space.set()  # a waiting reader goes on

    def _push_end(self, marker: bytes | Exception) -> None:
        if self.closed:
            return
        self._items.append(marker)
        self._readable.set()
        if self._end is None:
            self._end = marker
            if self._on_resume is not None:
                self._wake_sender()
            if self.on_end is not None:
                self.on_end(None if isinstance(marker, bytes) else marker)

    def _fail(self, error: Exception) -> None:
        """End the session with ``error``: what it holds is dropped, ``recv`` raises it and
        ``on_end`` hears it, even after a clean end."""
        self._items.clear()
        self._drop_held()
        self._items.append(error)
        self._readable.set()
        self._end = error
        if self._on_resume is not None:
            self._wake_sender()
        if self.on_end is not None:
            self.on_end(error)

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
        """The tunnel is gone: wake the consumer with an error."""
        self._ended_local = self._ended_remote = True
        if not self.closed:
            self._fail(ConnectionResetError("mux: tunnel closed"))
            self.closed = True

    def reset(self, reason: str) -> None:
        """Give up on this session alone: the peer gets End with the error flag, what the
        session holds is dropped, and its consumer gets a ``SessionReset`` (a spliced socket is
        closed with a reset)."""
        if self.closed:
            return
        log.info("mux %s: session %d reset: %s", self.conn.name, self.id, reason)
        if not self._ended_local:
            self._ended_local = True
            self.conn.send_end(self.id, error=True)
        self._ended_remote = True  # nothing more is taken from the peer
        self.conn.forget(self)
        self._fail(SessionReset(f"mux: session reset: {reason}"))

    def attach_sink(self, sink: Callable[[bytes], None]) -> None:
        """From now on hand payloads to ``sink`` as they arrive; what is already buffered goes
        first, in order. The end marker stays buffered for ``recv``."""
        items = self._items
        while items and isinstance(items[0], bytes) and items[0]:
            payload = items.popleft()
            assert isinstance(payload, bytes)
            self.release(len(payload))
            sink(payload)
        self.sink = sink

    def splice(self, stream: SocketStream, policy: SessionPolicy,
               on_done: Callable[[], None] | None) -> bool:
        """Relay ``stream`` ⇄ this session in hub callbacks, without a greenlet (see
        mux/splice.py); returns at once. False if the session already has a consumer."""
        if self.sink is not None:
            return False
        if policy.buffer_size is not None:  # the relayed session's own limit from now on
            self.buffer_size = policy.buffer_size
        SocketSplice(stream, self, policy, on_done).start()
        return True

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
            self.release(len(item))
        return item

    def send(self, data: bytes | memoryview) -> None:
        if self.paused:
            self._wait_resumed()  # (a splice never gets here paused: it stops reading)
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
        self.conn.forget(self)
        self._items.clear()
        if self._buffered:
            self._drop_held()  # (nothing held: nothing full, stalled or waited for)
        self._readable.set()
        if self._on_resume is not None:
            self._wake_sender()  # a sender waiting for RESUME gets its error

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds


class MuxConnection:
    """The frame reader, session table and tunnel writer shared by both ends."""

    def __init__(self, tunnel: TunnelStream, name: str = "",
                 limits: FlowLimits = DEFAULT_LIMITS) -> None:
        self.tunnel = tunnel
        self.name = name
        self.limits = limits
        # What a splice reads from its socket at most: a tunnel that seals its writes in chunks
        # (VMess) names the largest, and a read that fills one, framed, goes out as one chunk.
        # (Reading RECV_SIZE made every such read a full chunk and a 144-byte one: twice the
        # nonces, and a VMess writer has 2**16 of them.)
        seal_size = getattr(tunnel, "seal_size", 0)
        self.read_size = stream_bytes_within(seal_size) if seal_size else RECV_SIZE
        self.sessions: dict[int, MuxSession] = {}
        self.total_sessions = 0
        self.closed = False
        self.last_received = time.monotonic()
        self.peer_sends_keepalive = False
        self.peer_flow = False  # the peer said FLOW_HELLO: it honours PAUSE and RESUME
        self.bytes_received = 0
        self.bytes_sent = 0
        self.buffered = 0  # bytes all sessions hold for their consumers
        self.filled: list[MuxSession] = []  # sessions that became full during this read
        self._impatient_until = 0.0  # a session gave no progress lately: see _wait_for_room
        self._tracked: set[MuxSession] = set()  # sessions whose deadlines run
        self._timer: Any = None  # checks those deadlines while the reader runs
        self._out: list[bytes] = []  # frames waiting to be sealed and sent
        self._out_size = 0
        self._control_queued = 0  # End/KeepAlive bytes queued since the tunnel last took any
        self._out_ready = Event()
        self._out_space = Event()
        self._uncongested: list[Callable[[], None]] = []  # waiting for the queue to empty
        self._writer: gevent.Greenlet | None = None
        self._writer_idle = False  # parked with nothing to send: the hub may send instead
        self._flush_due = False  # a hub callback will send what is queued
        self._tunnel_kept = False  # the tunnel kept unsent bytes: the writer must flush them
        self._sending = False  # the writer waits for the tunnel to take a batch
        self._sent_seen = 0  # bytes_sent at the last check
        self._stuck_since = 0.0  # since when the tunnel has taken nothing; 0.0: it takes
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

    def _queue_control(self, frame: bytes) -> None:
        """Queue an End or KeepAlive frame without waiting, within ``CONTROL_LIMIT``."""
        if self.closed:
            return
        if self._control_queued + len(frame) > CONTROL_LIMIT:
            log.warning("mux %s: the peer reads nothing (%d bytes of control frames unsent), "
                        "closing the tunnel", self.name, self._control_queued)
            self.close()
            return
        self._control_queued += len(frame)
        self._queue(frame)

    def _take(self) -> bytes:
        """The queued frames as one buffer; wakes whoever waits for room."""
        batch, self._out = self._out, []
        size, self._out_size = self._out_size, 0
        self._control_queued = 0
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
            self._tunnel_kept = True
            self._out_ready.set()

    def _write_loop(self) -> None:
        try:
            while True:
                while not self._out and not self._tunnel_kept:
                    if self.closed:
                        return
                    self._writer_idle = True
                    self._out_ready.clear()
                    self._out_ready.wait()
                    self._writer_idle = False
                self._sending = True
                if self._tunnel_kept:
                    self._tunnel_kept = False
                    self.tunnel.flush()
                if self._out:
                    self.tunnel.send(self._take())
                self._sending = False
        except OSError:
            self.close()

    def send_payload(self, session: MuxSession, data: bytes | memoryview) -> None:
        if session.network == NETWORK_UDP:
            # One datagram, one frame; larger ones are dropped, and so are datagrams while the
            # tunnel is congested: this never waits (a datagram splice sends from hub
            # callbacks, net/udp.py).
            if len(data) <= MAX_UDP_PAYLOAD and self._out_size < WRITE_BUFFER:
                self._queue(encode_keep(session.id, data))
        elif len(data) <= MAX_STREAM_PAYLOAD:
            self.write(encode_keep(session.id, data))
        else:
            self.write(encode_keep_chunks(session.id, data, MAX_STREAM_PAYLOAD))

    def _wake_uncongested(self) -> None:
        waiting, self._uncongested = self._uncongested, []
        for callback in waiting:
            callback()

    def send_end(self, session_id: int, error: bool) -> None:
        """Queue an End frame; never waits (sessions are closed from hub callbacks)."""
        frame = encode_end(session_id, error)
        queued = self._control_queued + len(frame)
        if queued <= CONTROL_LIMIT and not self.closed:  # as _queue_control, one call less
            self._control_queued = queued
            self._queue(frame)
        else:
            self._queue_control(frame)

    def _reply_end(self, session_id: int) -> None:
        """Tell the peer that a session it writes to is gone, unless that would pile up."""
        if self._out_size < WRITE_BUFFER and self._control_queued < REPLY_LIMIT:
            self._queue_control(encode_end(session_id, False))

    def send_flow(self, session_id: int, signal: int) -> None:
        """Queue a flow-control signal for the peer; never waits."""
        self._queue_control(encode_flow(session_id, signal))

    def send_keepalive(self) -> None:
        """Queue a KeepAlive frame; never waits. Skipped when frames are queued already: the
        peer hears from us anyway."""
        if not self._out:
            self._queue_control(encode_keepalive())

    def forget(self, session: MuxSession) -> None:
        """Drop ``session`` from the table (not a newer session that reuses its id)."""
        other = self.sessions.pop(session.id, session)
        if other is not session:
            self.sessions[session.id] = other  # a newer session took the id: put it back

    # -- flow control
    def track(self, session: MuxSession) -> None:
        """Check ``session``'s deadlines until it holds nothing."""
        self._tracked.add(session)

    def relieve(self) -> None:
        """The tunnel's sessions hold more than ``tunnel_buffer``: reset those holding most
        until it fits (sessions that hold bytes are tracked)."""
        limit = self.limits.tunnel_buffer
        while self.buffered > limit:
            holding = [s for s in self._tracked if s._buffered and not s.closed]
            if not holding:
                return
            biggest = max(holding, key=lambda s: s._buffered)
            biggest.reset(f"the tunnel's sessions hold more than {limit} bytes")

    def _check(self) -> None:
        """Timer: reset the sessions past a deadline; close a tunnel that takes nothing."""
        now = time.monotonic()
        limits = self.limits
        for session in list(self._tracked):
            if session.closed or not session._buffered:
                self._tracked.discard(session)
            elif (session._full_since and not session._paused_peer
                  and now - session._full_since >= limits.full_timeout):
                session.reset(f"full for {limits.full_timeout:g} s")
            elif (session._stalled_since
                  and now - session._stalled_since >= limits.write_timeout):
                session.reset(f"its socket took nothing for {limits.write_timeout:g} s")
        busy = self._sending or self._tunnel_kept or bool(self._out)
        if not busy or self.bytes_sent != self._sent_seen:
            self._sent_seen = self.bytes_sent
            self._stuck_since = 0.0
        elif not self._stuck_since:
            self._stuck_since = now
        elif now - self._stuck_since >= limits.tunnel_write_timeout:
            log.warning("mux %s: the tunnel took nothing for %.0f s, closing it", self.name,
                        now - self._stuck_since)
            self.close()

    def _wait_for_room(self) -> None:
        """Wait for the sessions that became full (see ``wait_for_room``): once per read, after
        its frames, so the check costs nothing per payload. Their allowances run from the same
        moment, so ten stalled visitors cost the others no more than one; and for
        ``stall_memory`` seconds after one gave up, sessions get ``stall_after``, so ten
        stalling one after the other do not cost ten seconds either."""
        filled, self.filled = self.filled, []
        limits = self.limits
        start = time.monotonic()
        patient = start >= self._impatient_until
        allowances = [(session.progress(), session.allowance(limits, patient))
                      for session in filled]
        for session, (mark, stall) in zip(filled, allowances, strict=True):
            if session.wait_for_room(mark, start + stall, stall):
                self._impatient_until = time.monotonic() + limits.stall_memory

    # -- reading
    def run(self) -> None:
        """Read frames until the tunnel ends or misbehaves; then close everything."""
        decoder = FrameDecoder()
        rounds = 0
        period = self.limits.check_every
        self._timer = get_hub().loop.timer(period, period)
        self._timer.start(self._check)
        try:
            if self.limits.signals:
                self._queue_control(_HELLO)
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
                if self.filled:
                    self._wait_for_room()
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
                self._reply_end(frame.session_id)
        elif status == STATUS_NEW:
            self.on_new(frame)
        elif status == STATUS_END:
            session = self.sessions.get(frame.session_id)
            if session is not None:
                session._remote_end(error=bool(frame.option & OPTION_ERROR))
        elif status == STATUS_KEEPALIVE:
            if frame.payload is None:
                self.peer_sends_keepalive = True
            else:
                self._flow_signal(frame.session_id, frame.payload)
        else:
            raise MuxError(f"unknown frame status {status}")

    def _flow_signal(self, session_id: int, payload: bytes) -> None:
        signal = decode_flow(payload)
        if signal == FLOW_HELLO:
            self.peer_flow = True
        elif signal is not None:
            session = self.sessions.get(session_id)
            if session is not None:
                session.peer_signal(signal == FLOW_PAUSE)

    def on_new(self, frame: Frame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
        self.tunnel.close()
        self._out.clear()
        self._out_size = 0
        self._out_ready.set()  # the writer greenlet ends
        self._out_space.set()  # senders waiting for room get their error
        self._wake_uncongested()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for session in sessions:
            session._abort()
        self._tracked.clear()
        for callback in self._on_close:
            callback()
