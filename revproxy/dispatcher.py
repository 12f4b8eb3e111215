"""Hands a session to the outbound that routing picks for it.

Two ways in: ``handle`` gives the outbound a stream to serve, ``open`` asks the outbound for a
new connected stream (used by the bridge to dial its tunnels). An outbound serving a stream
ends ``session.ending`` once the connection is over, which may be after ``handle`` returns;
ending it also closes the stream.

A session that arrives already routed (``session.outbound_tag``: a visitor that a sibling
worker accepted, routed and handed over to this one) goes to that outbound, counted like any
other; the sibling wrote its access-log line, so it is not written twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from revproxy.log import access_log, log
from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.net.traffic import HANDOFFS_RECEIVED, Traffic
from revproxy.routing import Router


class Outbound(Protocol):
    tag: str

    def handle(self, session: Session, stream: Stream) -> None: ...

    def open(self, session: Session) -> Stream: ...


@runtime_checkable
class ServerListOutbound(Outbound, Protocol):
    """An outbound that dials one of several ``servers`` (each has ``address`` and
    ``port``); ``open_to`` dials the one given (a bridge keeps tunnels to every portal)."""

    servers: Sequence[Any]

    def open_to(self, session: Session, server: Any) -> Stream: ...


class NoRoute(ConnectionError):
    """No outbound is configured for the session."""


class Dispatcher:
    def __init__(self, router: Router, outbounds: Mapping[str, Outbound],
                 traffic: Traffic | None = None) -> None:
        self.router = router
        self.outbounds = outbounds
        self.active = 0  # sessions being served right now
        self.total = 0
        # bytes and sessions per inbound, outbound and user, and the worker's events
        self.traffic = traffic if traffic is not None else Traffic()

    def route(self, session: Session) -> Outbound:
        tag = session.outbound_tag
        if tag is None:
            tag = self.router.pick(session.inbound_tag, session.target)
        outbound = self.outbounds.get(tag) if tag is not None else None
        if outbound is None:
            raise NoRoute(f"no outbound for {session.describe()} (tag {tag!r})")
        return outbound

    def handle(self, session: Session, stream: Stream) -> None:
        """Serve ``stream`` through the routed outbound, which ends the session when done."""
        session.ending.add(stream.close)  # however the session ends, the stream is closed
        try:
            outbound = self.route(session)
        except NoRoute as exc:
            log.warning("dispatcher: %s", exc)
            session.ending.end()
            return
        if session.outbound_tag is None and access_log.isEnabledFor(logging.INFO):
            # (describe() costs on every connection) V2Ray's line, with both tags
            access_log.info("%s accepted %s [%s -> %s]%s", session.source or "-",
                            session.describe(), session.inbound_tag or "", outbound.tag,
                            f" email: {session.email}" if session.email else "")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dispatcher: taking detour [%s] for [%s]", outbound.tag,
                      session.describe())
        self.active += 1
        self.total += 1
        session.ending.add(self._ended)
        handed_over = session.outbound_tag is not None  # a sibling counted the session
        if handed_over:
            self.traffic.count(HANDOFFS_RECEIVED)
        metered = self.traffic.start(session, stream, session.inbound_tag, outbound.tag,
                                     session.email, new=not handed_over)
        if metered is not None:
            session.ending.add(lambda: self.traffic.end(metered))
        try:
            outbound.handle(session, stream)
        except Exception:  # one connection must never take the server down
            log.exception("dispatcher: outbound %s failed for %s", outbound.tag,
                          session.describe())
            session.ending.end()

    def _ended(self) -> None:
        self.active -= 1

    def open(self, session: Session, server: object | None = None) -> Stream:
        """A new stream through the routed outbound; ``server``: one of its ``servers``
        (``ServerListOutbound``) to dial instead of the one it would pick."""
        outbound = self.route(session)
        log.debug("dispatcher: dialing [%s] for [%s]", outbound.tag, session.describe())
        if server is None:
            stream = outbound.open(session)
        elif isinstance(outbound, ServerListOutbound):
            stream = outbound.open_to(session, server)
        else:
            raise NoRoute(f"outbound {outbound.tag} cannot dial a server of its choice")
        session.upstream = stream
        self.traffic.start(session, None, session.inbound_tag, outbound.tag)
        return stream
