"""Blackhole outbound: drops every session at once."""

from __future__ import annotations

from revproxy.net.session import Session
from revproxy.net.stream import Stream


class BlackholeOutbound:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def open(self, session: Session) -> Stream:
        raise ConnectionRefusedError("blackhole: connection dropped")

    def handle(self, session: Session, stream: Stream) -> None:
        session.ending.end()  # closes the stream
