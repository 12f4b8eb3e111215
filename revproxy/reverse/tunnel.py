"""What portal and bridge tunnels have in common: a mux connection and its statistics."""

from __future__ import annotations

import time

from revproxy.mux.connection import MuxConnection

RATE_SMOOTHING = 0.5  # weight of the newest sample in the bytes/s average


class Tunnel:
    """Base of PortalTunnel and BridgeTunnel; ``mux`` is set by the subclass."""

    mux: MuxConnection

    def __init__(self, tunnel_id: int, tag: str, peer: str) -> None:
        self.tunnel_id = tunnel_id
        self.tag = tag
        self.peer = peer
        self.name = f"{tag}#{tunnel_id}"
        self.draining = False
        self.leaving = False  # the bridge retires this tunnel (a portal's view)
        self.opened = time.time()
        self.throughput = 0.0  # recent bytes/s, both directions
        self.row: int | None = None  # this tunnel's row in the state table, if published
        self._rate_bytes = 0
        self._rate_time = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.mux.closed

    @property
    def active_sessions(self) -> int:
        return self.mux.active_sessions

    @property
    def total_sessions(self) -> int:
        return self.mux.total_sessions

    @property
    def bytes_up(self) -> int:
        return self.mux.bytes_sent

    @property
    def bytes_down(self) -> int:
        return self.mux.bytes_received

    @property
    def last_heard(self) -> float:
        """Wall-clock time of the last bytes received."""
        return time.time() - (time.monotonic() - self.mux.last_received)

    def measure(self, now: float) -> float:
        """Update and return the smoothed bytes/s since the previous call."""
        elapsed = now - self._rate_time
        if elapsed <= 0:
            return self.throughput
        total = self.mux.bytes_sent + self.mux.bytes_received
        sample = (total - self._rate_bytes) / elapsed
        self.throughput = RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * self.throughput
        self._rate_bytes = total
        self._rate_time = now
        return self.throughput
