"""What portal and bridge tunnels have in common: a mux connection, its control session, its
statistics, its listing in the tunnel directory, and the watch on its TCP socket.

A peer host that vanishes (power cut, cable pulled) sends no reset, and a stock V2Ray bridge
sends nothing unsolicited, so silence alone says nothing. Both ends send something every 2 s
(the portal its control messages or KeepAlive frames, the bridge KeepAlive frames), and the
tunnel's socket gets ``TCP_USER_TIMEOUT``: the kernel closes it when what was sent stays
unacknowledged for ``USER_TIMEOUT`` s (keepalive probes cover a socket with nothing to send).
Before that, ``PeerWatch`` reads ``TCP_INFO``: a tunnel whose last ``SUSPECT_RETRANSMITS``
retransmissions went unanswered is *suspect* (the portal stops picking it) until an ACK comes.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import cast

from gevent import get_hub

from revproxy.mux.connection import MuxConnection, MuxSession
from revproxy.net.stream import Stream, TunnelStream, socket_of
from revproxy.reverse.directory import Listing

RATE_SMOOTHING = 0.5  # weight of the newest sample in the bytes/s average
# Sent data unacknowledged this long closes the tunnel's socket (with the 2 s heartbeats, a
# vanished peer is found within about 8 s).
USER_TIMEOUT = 6.0
KEEPALIVE_IDLE = 2  # s of nothing sent or received before the first keepalive probe
KEEPALIVE_INTERVAL = 2
KEEPALIVE_PROBES = 2
# Consecutive retransmission timeouts without an ACK that make a tunnel suspect: with a 200 ms
# minimum RTO that is 1.4 s of silence on a short link, proportionally more on a long one, and
# a healthy link almost never loses three retransmissions in a row.
SUSPECT_RETRANSMITS = 3
# struct tcp_info up to tcpi_last_ack_recv: state, ca_state, retransmits, probes, backoff,
# options, wscale, flags (u8 each), then 13 u32: rto ... last_ack_recv (ms since).
_TCP_INFO = struct.Struct("=8B13I")


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
        self.suspect = False  # the peer's TCP stopped acknowledging (see PeerWatch)
        self.opened = time.time()
        self.throughput = 0.0  # recent bytes/s, both directions
        self.listing: Listing | None = None  # its entry in the tunnel directory, if listed
        # The portal's control session while it is open (the portal opens it, the bridge
        # accepts it); it is a mux session but carries no visitor.
        self.control: MuxSession | None = None
        self._rate_bytes = 0
        self._rate_time = time.monotonic()
        self._refresh_due = False  # a refresh_listing_soon is waiting for the hub

    @property
    def closed(self) -> bool:
        return self.mux.closed

    @property
    def active_sessions(self) -> int:
        return self.mux.active_sessions

    @property
    def worn(self) -> bool:
        """Whether the tunnel's stream asks to be replaced (a VMess stream near its nonce
        limit): the tunnel is drained and a new one takes over."""
        worn = getattr(self.mux.tunnel, "worn", None)
        return bool(worn is not None and worn())

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

    def refresh_listing_soon(self) -> None:
        """``refresh_listing`` at the end of the hub's current turn, once for every session
        opened or closed meanwhile (siblings read the table at most every few ms anyway)."""
        if not self._refresh_due and self.listing is not None:
            self._refresh_due = True
            get_hub().loop.run_callback(self._refresh_due_listing)

    def _refresh_due_listing(self) -> None:
        self._refresh_due = False
        self.refresh_listing()

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


class PeerWatch:
    """The kernel's view of a tunnel's peer: sets the socket's timeouts (see the module
    docstring) and tells when the peer has stopped acknowledging."""

    __slots__ = ("sock", "last_ack")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.last_ack = time.monotonic()  # when the peer last acknowledged, as last seen
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(USER_TIMEOUT * 1000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        except (OSError, AttributeError):
            pass  # not Linux: heartbeats alone

    @classmethod
    def of(cls, stream: object) -> PeerWatch | None:
        sock = socket_of(stream)
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None  # (a Unix socket in tests)
        return cls(sock)

    def unanswered(self) -> bool | None:
        """Whether the peer leaves retransmissions unanswered (None: cannot tell); also
        notes when it last acknowledged something."""
        try:
            raw = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
        except (OSError, AttributeError):
            return None
        if len(raw) < _TCP_INFO.size:
            return None
        info = _TCP_INFO.unpack(raw)
        retransmits, unacked, last_ack_ms = info[2], info[12], info[20]
        self.last_ack = time.monotonic() - last_ack_ms / 1000.0
        return unacked > 0 and retransmits >= SUSPECT_RETRANSMITS
