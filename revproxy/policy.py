"""V2Ray's ``policy`` as revproxy applies it: per user level, how long a handshake may take,
how long a connection may stay idle (both ways open, or one way only after the other ended)
and how much one session may hold in its buffer.

The configuration loader builds a ``Policy``; the dispatcher gives each session the
``SessionPolicy`` of its user's level (``Session.policy``), and the relay, the mux sessions
and the inbounds' handshakes read their limits from it. A level the configuration does not
list, and a limit a listed level leaves out, have revproxy's defaults (``SessionPolicy()``),
which are V2Ray's except where docs/coming-from-v2ray.md says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HANDSHAKE = 4.0  # s; V2Ray 4.34 waits 60 s, earlier versions 4 s (coming-from-v2ray.md)
CONN_IDLE = 300.0  # s, V2Ray's connIdle
HALF_OPEN = 30.0  # s after one direction ended; V2Ray's uplinkOnly/downlinkOnly are 1 s
BUFFER_SIZE = 512 * 1024  # bytes one session may hold (V2Ray's default on x86-64)
MIN_BUFFER = 16 * 1024  # "bufferSize": 0 (V2Ray: no buffer) still holds one mux frame or so
MAX_BUFFER = 16 * 1024 * 1024  # "bufferSize" below 0 (V2Ray: unlimited) is bounded too


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """The limits of one session, in seconds and bytes.

    ``conn_idle``: nothing moved either way for this long ends the connection;
    ``downlink_only``: once the uplink (client to server) ended, the downlink may be silent
    this long; ``uplink_only``: the same once the downlink ended; ``handshake``: an inbound's
    protocol handshake must be done within this; ``buffer_size``: what a mux session holds
    before its reader is considered full (None: the mux connection's own limit, by default
    ``BUFFER_SIZE``)."""

    handshake: float = HANDSHAKE
    conn_idle: float = CONN_IDLE
    uplink_only: float = HALF_OPEN
    downlink_only: float = HALF_OPEN
    buffer_size: int | None = None


DEFAULT = SessionPolicy()


def buffer_bytes(kib: int) -> int:
    """V2Ray's ``bufferSize`` (KiB; 0: none, below 0: unlimited) as the bytes revproxy
    lets a session hold: always at least ``MIN_BUFFER`` and at most ``MAX_BUFFER``."""
    if kib < 0:
        return MAX_BUFFER
    return min(max(kib * 1024, MIN_BUFFER), MAX_BUFFER)


class Policy:
    """The session policy of each user level."""

    __slots__ = ("_levels",)

    def __init__(self, levels: Iterable[tuple[int, SessionPolicy]] = ()) -> None:
        self._levels = dict(levels)

    def for_level(self, level: int) -> SessionPolicy:
        return self._levels.get(level, DEFAULT)

    def __repr__(self) -> str:
        return f"Policy({sorted(self._levels.items())!r})"
