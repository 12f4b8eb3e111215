"""What portal and bridge tunnels have in common: a mux connection, its control session, its
statistics and its listing in the tunnel directory."""

from __future__ import annotations

import time
from typing import cast

from revproxy.mux.connection import MuxConnection, MuxSession
from revproxy.net.stream import Stream, TunnelStream
from revproxy.reverse.directory import Listing

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
        self.leaving = False  # its bridge is going away (a portal's view)
        self.opened = time.time()
        self.throughput = 0.0  # recent bytes/s, both directions
        self.listing: Listing | None = None  # its entry in the tunnel directory, if listed
        # The portal's control session while it is open (the portal opens it, the bridge
        # accepts it); it is a mux session but carries no visitor.
        self.control: MuxSession | None = None
        self._rate_bytes = 0
        self._rate_time = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.mux.closed

    @property
    def active_sessions(self) -> int:
        return self.mux.active_sessions

    @property
    def visitor_sessions(self) -> int:
        """Sessions in progress, the control session left out."""
        active = self.mux.active_sessions
        control = self.control
        if control is not None and self.mux.sessions.get(control.id) is control:
            active -= 1
        return active

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

    def refresh_listing(self) -> None:
        """Show the siblings this tunnel's current state, if it is listed."""
        listing = self.listing
        if listing is not None:
            listing.refresh()

    def withdraw_listing(self) -> None:
        listing, self.listing = self.listing, None
        if listing is not None:
            listing.withdraw()

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


def tunnel_stream(stream: Stream) -> TunnelStream:
    """``stream`` as one a mux connection can run over (it sends from hub callbacks without
    waiting); raises ConnectionError if it cannot."""
    if not (callable(getattr(stream, "send_nowait", None))
            and callable(getattr(stream, "flush", None))):
        raise ConnectionError(f"a {type(stream).__name__} cannot carry a tunnel")
    return cast(TunnelStream, stream)
