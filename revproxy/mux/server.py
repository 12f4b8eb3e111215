"""Mux.Cool server: accepts the sessions a client opens (the bridge's side of a tunnel)."""

from __future__ import annotations

from collections.abc import Callable

from revproxy.mux.connection import DEFAULT_LIMITS, FlowLimits, MuxConnection, MuxSession
from revproxy.mux.frame import Frame
from revproxy.net.stream import TunnelStream


class MuxServer(MuxConnection):
    def __init__(self, tunnel: TunnelStream, accept: Callable[[MuxSession, Frame], None],
                 name: str = "", limits: FlowLimits = DEFAULT_LIMITS) -> None:
        super().__init__(tunnel, name, limits)
        self._accept = accept

    def on_new(self, frame: Frame) -> None:
        session = MuxSession(self, frame.session_id, frame.network or 0)
        old = self.sessions.get(frame.session_id)
        if old is not None:
            old._abort()
        self.sessions[session.id] = session
        self.total_sessions += 1
        self._accept(session, frame)
        if frame.payload:
            session._deliver(frame.payload)
