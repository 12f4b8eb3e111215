"""Mux.Cool client: opens sessions inside a tunnel (the portal's side of a reverse tunnel)."""

from __future__ import annotations

from revproxy.mux.connection import (
    DEFAULT_LIMITS,
    MAX_UDP_PAYLOAD,
    FlowLimits,
    MuxConnection,
    MuxSession,
)
from revproxy.mux.frame import (
    MAX_STREAM_PAYLOAD,
    NETWORK_UDP,
    Frame,
    encode_keep_chunks,
    encode_new,
)
from revproxy.net.stream import TunnelStream

MAX_SESSION_ID = 0xFFFF


class TunnelExhausted(ConnectionError):
    """Every session id of the tunnel has been used once."""


class MuxClient(MuxConnection):
    def __init__(self, tunnel: TunnelStream, name: str = "",
                 limits: FlowLimits = DEFAULT_LIMITS) -> None:
        super().__init__(tunnel, name, limits)
        self._last_id = 0

    def open_session(self, network: int, address: str, port: int,
                     first_payload: bytes | None = None) -> MuxSession:
        """Start a session; ``first_payload`` rides on the New frame."""
        if self._last_id >= MAX_SESSION_ID:
            raise TunnelExhausted("mux: no session ids left")
        self._last_id += 1
        self.total_sessions += 1
        session = MuxSession(self, self._last_id, network)
        self.sessions[session.id] = session
        if network == NETWORK_UDP and first_payload and len(first_payload) > MAX_UDP_PAYLOAD:
            first_payload = None  # a datagram too large for the peer: dropped
        if not first_payload:
            self.write(encode_new(session.id, network, address, port))
            return session
        session.bytes_out += len(first_payload)
        head = first_payload[:MAX_STREAM_PAYLOAD]
        frames = encode_new(session.id, network, address, port, head)
        if len(first_payload) > MAX_STREAM_PAYLOAD:
            frames += encode_keep_chunks(session.id,
                                         memoryview(first_payload)[MAX_STREAM_PAYLOAD:],
                                         MAX_STREAM_PAYLOAD)
        self.write(frames)
        return session

    def on_new(self, frame: Frame) -> None:
        """A server never opens sessions; V2Ray discards such frames and so do we."""
