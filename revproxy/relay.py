"""Moves bytes both ways between two streams until both directions have ended.

Each direction ends on end-of-stream (propagated as a half-close), an error or an idle
timeout (both ends are then closed). Once one direction has ended, the other gets the shorter
``after_half_close`` idle timeout, as V2Ray's uplinkOnly/downlinkOnly policy does.
"""

from __future__ import annotations

import gevent

from revproxy.mux.connection import MuxSession
from revproxy.stream import SocketStream, Stream

IDLE_TIMEOUT = 300.0
AFTER_HALF_CLOSE = 30.0
YIELD_EVERY = 15  # mask: yield to the hub once every 16 transfers


def relay(a: Stream, b: Stream, idle: float = IDLE_TIMEOUT,
          after_half_close: float = AFTER_HALF_CLOSE) -> None:
    """Relay ``a`` ⇄ ``b``; returns when both directions are done, with both streams closed."""
    a.settimeout(idle)
    b.settimeout(idle)
    try:
        _write_through(a, b)
        _write_through(b, a)
    except OSError:
        a.close()
        b.close()
        return
    other = gevent.spawn(_pump, b, a, after_half_close)
    try:
        _pump(a, b, after_half_close)
        other.join()
    finally:
        other.kill(block=False)
        a.close()
        b.close()


def _write_through(src: Stream, dst: Stream) -> None:
    """A mux session relayed to a socket: the tunnel reader writes its payloads straight to
    the socket (no queue, no greenlet switch); the pump then only waits for the end."""
    if isinstance(src, MuxSession) and isinstance(dst, SocketStream) and src.sink is None:
        src.attach_sink(dst.send)


def _pump(src: Stream, dst: Stream, after_half_close: float) -> None:
    rounds = 0
    try:
        while True:
            data = src.recv()
            if not data:
                break
            dst.send(data)
            rounds += 1
            if not rounds & YIELD_EVERY:
                # Reads and writes that never block never yield: let the others run.
                gevent.sleep(0)
        dst.close_write()
        # Only the opposite direction remains: bound how long it may stay silent.
        dst.settimeout(after_half_close)
    except (OSError, EOFError, ValueError):
        # Errors (reset, timeout, decode failure) abort the whole connection.
        src.close()
        dst.close()
