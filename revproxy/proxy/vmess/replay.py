"""Anti-replay filter for VMess AuthIDs: refuse an AuthID seen within the replay window. The
RequestDecoder depends only on the ReplayFilter protocol, so a cross-process filter can
replace this one."""

from __future__ import annotations

from typing import Protocol

MAX_TIME_SKEW = 120  # seconds between an AuthID's timestamp and the server clock
# An AuthID is accepted while the clock is within MAX_TIME_SKEW of its timestamp: first seen
# as early as ts - 120, it may come back until ts + 120. Remembering it for 240 s from first
# sight covers that (V2Ray remembers 120 s, so a replay of a future-stamped id gets through).
REPLAY_WINDOW = 2.0 * MAX_TIME_SKEW


class ReplayFilter(Protocol):
    """Remembers AuthIDs for at least REPLAY_WINDOW seconds."""

    def check_and_add(self, auth_id: bytes, now: float) -> bool:
        """Record auth_id; False if it was already seen within the window."""
        ...


class MemoryReplayFilter:
    """In-process filter built like V2Ray's: two generations of sets, rotated every `window` s,
    so an entry is remembered between `window` and 2×`window` seconds.

    Memory is bounded by `max_entries` per generation; a full current generation is rotated
    early (dropping the older one), which trades replay protection for service only under a
    flood of *valid* AuthIDs — V2Ray's fixed-size filter rejects everyone in that case instead.
    """

    __slots__ = ("_window", "_max_entries", "_current", "_previous", "_rotated_at")

    def __init__(self, window: float = REPLAY_WINDOW, max_entries: int = 100_000) -> None:
        if window <= 0 or max_entries <= 0:
            raise ValueError("window and max_entries must be positive")
        self._window = window
        self._max_entries = max_entries
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._rotated_at: float | None = None

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def check_and_add(self, auth_id: bytes, now: float) -> bool:
        """Record auth_id at time now; False if it was already recorded and not yet expired."""
        if self._rotated_at is None:
            self._rotated_at = now
        elapsed = now - self._rotated_at
        if elapsed >= 2 * self._window:
            self._previous = set()
            self._current = set()
            self._rotated_at = now
        elif elapsed >= self._window or len(self._current) >= self._max_entries:
            self._previous = self._current
            self._current = set()
            self._rotated_at = now
        key = bytes(auth_id)
        if key in self._current or key in self._previous:
            return False
        self._current.add(key)
        return True
