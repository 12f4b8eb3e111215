"""A worker's traffic counters: bytes up and down and sessions for each inbound tag, outbound
tag and user (e-mail), and the worker's events (failed handshakes, refused replays,
hand-offs), kept in plain lists that the worker publishes to the state table.

Bytes are counted where V2Ray counts them for its stats API: an inbound's at the connection
it accepted (bytes read from the client are *up*, bytes written to it *down*), an outbound's
at the connection it opened (written to the remote: up), a user's on the user's connection.
One difference: revproxy counts at the socket, so TLS and WebSocket framing are included where
V2Ray counts above them. Streams count their own bytes (``bytes_received``/``bytes_sent`` on
``SocketStream``, kept up to date by the mux splice as well); ``Traffic`` reads them when a
session ends and, for sessions that last (tunnels), at every ``sample()``, adding what moved
since it last looked. An outbound that opens no connection of its own (a portal, the API)
counts the bytes of the sessions it served, and the other way round.

Sans-IO: streams are only read through the ``Counted`` attributes; nothing here waits.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence
from typing import Protocol

KIND_INBOUND, KIND_OUTBOUND, KIND_USER = 1, 2, 3
EVENTS = ("handshake_failures", "replays_refused", "handoffs_sent", "handoffs_received")
(HANDSHAKE_FAILURES, REPLAYS_REFUSED, HANDOFFS_SENT, HANDOFFS_RECEIVED) = range(len(EVENTS))
VALUES_PER_KEY = 3  # bytes up, bytes down, sessions
_UP, _DOWN, _SESSIONS = range(VALUES_PER_KEY)
# Attributes by which a wrapping stream reaches the one it wraps (TLS, WebSocket, the HTTP
# header and the PROXY prefix use ``inner``, VMess ``transport``, the proxy streams ``stream``).
_WRAPPED = ("inner", "transport", "stream")
_MAX_DEPTH = 8
_KEY_CACHE_SIZE = 4096  # tag and user combinations remembered (users may be many)

Key = tuple[int, str]


class Counted(Protocol):
    """A stream that counts its bytes (``SocketStream``)."""

    bytes_received: int
    bytes_sent: int


# Stream types seen to count their own bytes, and types that neither count nor wrap (a mux
# session): a session's streams are looked up by type, not by several attribute probes.
_COUNTING: set[type] = set()
_OPAQUE: set[type] = set()


def counted(stream: object) -> Counted | None:
    """The counting stream under ``stream`` (itself, or the one it wraps, and so on)."""
    kind = type(stream)
    if kind in _COUNTING:
        return stream  # type: ignore[return-value]
    if kind in _OPAQUE:
        return None
    for _ in range(_MAX_DEPTH):
        if stream is None:
            return None
        kind = type(stream)
        if hasattr(stream, "bytes_received") and hasattr(stream, "bytes_sent"):
            if hasattr(kind, "bytes_received") and hasattr(kind, "bytes_sent"):
                _COUNTING.add(kind)  # (slots or properties: every instance has them)
            return stream
        if not hasattr(stream, "__dict__") and not any(hasattr(kind, name)
                                                       for name in _WRAPPED):
            _OPAQUE.add(kind)  # slots only, none of them a counter or a wrapped stream
            return None
        stream = next((inner for name in _WRAPPED
                       if (inner := getattr(stream, name, None)) is not None), None)
    return None


def _closed(stream: object) -> bool:
    sock = getattr(stream, "sock", None)
    try:
        return sock is not None and sock.fileno() < 0
    except OSError:
        return True


class _Metered:
    """One session's counting: where its bytes are read and which keys they go to."""

    __slots__ = ("inbound", "outbound", "keys_in", "keys_out", "seen", "session")

    def __init__(self, inbound: Counted | None, keys_in: tuple[int, ...],
                 keys_out: tuple[int, ...], session: object) -> None:
        self.inbound = inbound
        self.outbound: Counted | None = None
        self.keys_in = keys_in  # inbound and user keys: counted on the inbound's connection
        self.keys_out = keys_out  # the outbound's key: counted on its connection
        self.seen = [0, 0, 0, 0]  # inbound received/sent, outbound received/sent
        self.session = session  # its ``upstream`` is the outbound's connection, once open


class Traffic:
    """The counters of one worker. ``keys`` maps (kind, name) to an index; ``values`` (three
    per index: bytes up, bytes down, sessions) and ``events`` are lists the caller may share
    with its state-table writer. Names without an index are not counted."""

    def __init__(self, keys: Mapping[Key, int] | None = None,
                 values: MutableSequence[int] | None = None,
                 events: MutableSequence[int] | None = None) -> None:
        self.keys = dict(keys or {})
        width = VALUES_PER_KEY * (max(self.keys.values(), default=-1) + 1)
        self.values: MutableSequence[int] = values if values is not None else [0] * width
        self.events: MutableSequence[int] = (events if events is not None
                                             else [0] * len(EVENTS))
        self._live: set[_Metered] = set()
        # (inbound tag, e-mail, outbound tag) -> (keys_in, keys_out): looked up once, not
        # at every session (``keys`` is fixed once the counters are made).
        self._key_cache: dict[tuple[str | None, str | None, str], tuple[tuple[int, ...],
                                                                      tuple[int, ...]]] = {}

    def __len__(self) -> int:
        """Sessions being counted."""
        return len(self._live)

    def count(self, event: int) -> None:
        self.events[event] += 1

    def _indexes(self, *keys: Key | None) -> tuple[int, ...]:
        found = []
        for key in keys:
            if key is not None and key[1]:
                index = self.keys.get(key)
                if index is not None:
                    found.append(index)
        return tuple(found)

    def start(self, session: object, stream: object, inbound_tag: str | None,
              outbound_tag: str, email: str | None = None, *,
              new: bool = True) -> _Metered | None:
        """Count a session from now on: ``stream`` is what its inbound accepted, the
        session's ``upstream`` (set by the outbound) what the outbound opened. The caller
        calls ``end`` once it is over. None (nothing to call) when no key is counted.
        ``new`` False: a session a sibling counted already (a hand-off), bytes only."""
        cache_key = (inbound_tag, email, outbound_tag)
        cached = self._key_cache.get(cache_key)
        if cached is None:
            cached = (self._indexes((KIND_INBOUND, inbound_tag or ""),
                                    (KIND_USER, email) if email else None),
                      self._indexes((KIND_OUTBOUND, outbound_tag)))
            if len(self._key_cache) < _KEY_CACHE_SIZE:
                self._key_cache[cache_key] = cached
        keys_in, keys_out = cached
        if not keys_in and not keys_out:
            return None
        if new:
            values = self.values
            for index in keys_in:
                values[VALUES_PER_KEY * index + _SESSIONS] += 1
            for index in keys_out:
                values[VALUES_PER_KEY * index + _SESSIONS] += 1
        metered = _Metered(counted(stream), keys_in, keys_out, session)
        self._live.add(metered)
        return metered

    def end(self, metered: _Metered | None) -> None:
        """The session is over: count its last bytes and forget it."""
        if metered is not None and metered in self._live:
            self._add(metered)
            self._live.discard(metered)

    def sample(self) -> None:
        """Count what the live sessions moved since the last look; forget sessions whose
        connections are closed but nobody ended (a bridge's tunnels)."""
        for metered in list(self._live):
            self._add(metered)
            if metered.inbound is None and _closed(metered.outbound):
                self._live.discard(metered)

    def _add(self, metered: _Metered) -> None:
        outbound = metered.outbound
        if outbound is None:
            upstream = getattr(metered.session, "upstream", None)
            if upstream is not None:
                outbound = metered.outbound = counted(upstream)
        seen = metered.seen
        inbound = metered.inbound
        up_in = down_in = up_out = down_out = 0
        if inbound is not None:
            rx, tx = inbound.bytes_received, inbound.bytes_sent
            up_in, down_in = rx - seen[0], tx - seen[1]
            seen[0], seen[1] = rx, tx
        if outbound is not None:
            rx, tx = outbound.bytes_received, outbound.bytes_sent
            down_out, up_out = rx - seen[2], tx - seen[3]
            seen[2], seen[3] = rx, tx
        # A side that counts nothing of its own is credited with what the other moved.
        if inbound is None:
            up_in, down_in = up_out, down_out
        elif outbound is None:
            up_out, down_out = up_in, down_in
        values = self.values
        if up_in or down_in:
            for index in metered.keys_in:
                values[VALUES_PER_KEY * index + _UP] += up_in
                values[VALUES_PER_KEY * index + _DOWN] += down_in
        if up_out or down_out:
            for index in metered.keys_out:
                values[VALUES_PER_KEY * index + _UP] += up_out
                values[VALUES_PER_KEY * index + _DOWN] += down_out

    def totals(self, kind: int, name: str) -> tuple[int, int, int]:
        """(bytes up, bytes down, sessions) of one key, for tests and the process title."""
        index = self.keys.get((kind, name))
        if index is None:
            return 0, 0, 0
        start = VALUES_PER_KEY * index
        up, down, sessions = self.values[start:start + VALUES_PER_KEY]
        return up, down, sessions
