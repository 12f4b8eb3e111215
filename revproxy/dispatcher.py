"""Hands a session to the outbound that routing picks for it.

Two ways in: ``handle`` gives the outbound a stream to serve, ``open`` asks the outbound for a
new connected stream (used by the bridge to dial its tunnels). An outbound serving a stream
ends ``session.ending`` once the connection is over, which may be after ``handle`` returns;
ending it also closes the stream.

A session that arrives already routed (``session.outbound_tag``: a visitor that a sibling
worker accepted, routed and handed over to this one) goes to that outbound, counted like any
other; the sibling wrote its access-log line, so it is not written twice.

Each session gets the policy of its user's level (``Session.policy``: idle limits, buffer
size). An inbound sees the dispatcher through ``for_inbound``, which adds what is the
inbound's: its users' default level and its ``sniffing``. A sniffing inbound's TCP sessions
wait briefly for their first bytes (``sniff_stream``, as V2Ray's dispatcher waits), whose
protocol routing then sees and whose HTTP Host or TLS server name may become the
destination.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import gevent
from gevent.socket import wait_read

from revproxy.log import access_log, log
from revproxy.net.session import Session
from revproxy.net.stream import Prefixed, SocketStream, Stream
from revproxy.net.traffic import HANDOFFS_RECEIVED, Traffic
from revproxy.policy import Policy
from revproxy.routing import Router
from revproxy.sniff import MORE, Sniffed, overrides, sniff


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


@dataclass(frozen=True)
class Sniffing:
    """An inbound's ``sniffing``: ``dest_override`` names the sniffed protocols ("http",
    "tls") whose domain replaces the destination."""

    dest_override: tuple[str, ...] = ()


class Dispatcher:
    def __init__(self, router: Router, outbounds: Mapping[str, Outbound],
                 traffic: Traffic | None = None, policy: Policy | None = None) -> None:
        """``policy``: the session limits of each user level."""
        self.router = router
        self.outbounds = outbounds
        self.policy = policy if policy is not None else Policy()
        self.active = 0  # sessions being served right now
        self.total = 0
        # bytes and sessions per inbound, outbound and user, and the worker's events
        self.traffic = traffic if traffic is not None else Traffic()

    def for_inbound(self, level: int = 0, sniffing: Sniffing | None = None) -> Dispatcher:
        """This dispatcher as an inbound uses it: its sessions whose user has no level of
        its own get ``level``; with ``sniffing`` their first bytes are sniffed."""
        return InboundDispatcher(self, level, sniffing)

    def route(self, session: Session) -> Outbound:
        tag = session.outbound_tag
        if tag is None:
            tag = self.router.route(session)
        outbound = self.outbounds.get(tag) if tag is not None else None
        if outbound is None:
            raise NoRoute(f"no outbound for {session.describe()} (tag {tag!r})")
        return outbound

    def handle(self, session: Session, stream: Stream) -> None:
        """Serve ``stream`` through the routed outbound, which ends the session when done."""
        session.ending.add(stream.close)  # however the session ends, the stream is closed
        session.policy = self.policy.for_level(session.level or 0)
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


class InboundDispatcher(Dispatcher):
    """The dispatcher as one inbound sees it (``Dispatcher.for_inbound``): everything is the
    shared dispatcher's (routing, outbounds, counters) except ``handle``, which first gives
    the session the inbound's level and sniffs it."""

    def __init__(self, shared: Dispatcher, level: int, sniffing: Sniffing | None) -> None:
        # No super().__init__: every other attribute is the shared dispatcher's (__getattr__).
        self.shared = shared
        self.level = level
        self.sniffing = sniffing

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    def for_inbound(self, level: int = 0, sniffing: Sniffing | None = None) -> Dispatcher:
        return self.shared.for_inbound(level, sniffing)

    def handle(self, session: Session, stream: Stream) -> None:
        if session.level is None:
            session.level = self.level
        if (self.sniffing is not None and session.outbound_tag is None
                and session.target.network == "tcp"):
            try:
                stream = sniff_stream(session, stream, self.sniffing)
            except OSError as exc:  # the client went away while we waited
                log.info("dispatcher: %s from %s: %s", session.describe(), session.source, exc)
                session.ending.add(stream.close)
                session.ending.end()
                return
        self.shared.handle(session, stream)


SNIFF_WAIT = 0.1  # s each of V2Ray's two reads waits for bytes (app/dispatcher/default.go)
SNIFF_READS = 2
# What the sniffer looks at, at most: a whole TLS record (V2Ray looks at its first 2 KiB
# only, which a ClientHello with post-quantum key shares outgrows).
SNIFF_LIMIT = 5 + 16384
_POLL = 0.01  # s between looks at a socket whose first bytes said nothing yet


def sniff_stream(session: Session, stream: Stream, sniffing: Sniffing) -> Stream:
    """Sniff the first bytes of ``stream`` (for up to two waits of ``SNIFF_WAIT``) and
    apply the result to ``session``: its ``protocol``, and its destination's address when
    ``sniffing.dest_override`` names the protocol. Gives the stream to use from now on,
    which gives the bytes read again (a socket's are only peeked at)."""
    if isinstance(stream, SocketStream):
        found = _sniff_socket(stream.sock)
    else:
        stream, found = _sniff_read(stream)
    if found is not None:
        session.protocol = found.protocol
        if found.domain and overrides(found.protocol, sniffing.dest_override):
            log.info("dispatcher: sniffed domain: %s", found.domain)
            session.target = replace(session.target, address=_override(found.domain))
    return stream


def _override(domain: str) -> str:
    """The address as V2Ray's ParseAddress gives it (an IP as an IP's text)."""
    try:
        return str(ipaddress.ip_address(domain))
    except ValueError:
        return domain


def _sniff_socket(sock: socket.socket) -> Sniffed | None:
    """Sniff by peeking, so the bytes stay in the socket for whoever reads next (the
    relay's splice and a hand-off to a sibling worker keep working)."""
    deadline = time.monotonic() + SNIFF_WAIT
    seen = -1
    for _ in range(SNIFF_READS):
        while True:
            try:
                data = sock.recv(SNIFF_LIMIT, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data == b"":
                return None  # the client closed before saying anything
            if data is not None and len(data) > seen:
                break  # something new to look at
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if data is None:
                try:
                    wait_read(sock.fileno(), remaining, TimeoutError)
                except TimeoutError:
                    return None
            else:
                gevent.sleep(min(_POLL, remaining))  # readable already: look again soon
        result = sniff(data)
        if result is not MORE:
            return result if isinstance(result, Sniffed) else None
        if len(data) >= SNIFF_LIMIT:
            return None
        seen = len(data)
        deadline = time.monotonic() + SNIFF_WAIT
    return None


def _sniff_read(stream: Stream) -> tuple[Stream, Sniffed | None]:
    """Sniff by reading (a stream that is no bare socket: TLS, VMess, a mux session)."""
    data = b""
    found: Sniffed | None = None
    stream.settimeout(SNIFF_WAIT)
    try:
        for _ in range(SNIFF_READS):
            try:
                chunk = stream.recv()
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            result = sniff(data)
            if result is not MORE:
                found = result if isinstance(result, Sniffed) else None
                break
            if len(data) >= SNIFF_LIMIT:
                break
    finally:
        stream.settimeout(None)
    return (Prefixed(stream, data) if data else stream), found
