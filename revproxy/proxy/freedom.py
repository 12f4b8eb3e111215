"""Freedom outbound: connects straight to the session's destination (TCP or UDP), or to its
``redirect``; TCP through the outbound's transport (``streamSettings``), as V2Ray's does.

With ``domainStrategy`` "UseIP", "UseIPv4" or "UseIPv6" a domain destination is resolved
with the ``dns`` section's client (``dns``) and one of its addresses, picked at random, is
dialed; when it gives none the domain is dialed as it is (the system resolves it), as in
V2Ray. The relay's idle limits are the shorter of the session's and this outbound's
``userLevel`` policy, as V2Ray's two timers (inbound's and outbound's) would act.
"""

from __future__ import annotations

import ipaddress
import random
import socket as _socket
from typing import Protocol

from gevent import socket

from revproxy.log import log
from revproxy.net.relay import relay
from revproxy.net.session import Session
from revproxy.net.stream import Stream
from revproxy.net.udp import DatagramSocket
from revproxy.policy import DEFAULT, SessionPolicy
from revproxy.transport import PLAIN, Transport, dial

_FAMILIES = {"UseIP": (True, True), "UseIPv4": (True, False), "UseIPv6": (False, True)}


class Resolver(Protocol):
    def lookup(self, domain: str, v4: bool = True, v6: bool = True
               ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]: ...


class FreedomOutbound:
    def __init__(self, tag: str, redirect: tuple[str, int] | None = None,
                 transport: Transport = PLAIN, *, strategy: str = "AsIs",
                 dns: Resolver | None = None, policy: SessionPolicy = DEFAULT) -> None:
        self.tag = tag
        self.redirect = redirect
        self.transport = transport
        self.families = _FAMILIES.get(strategy) if dns is not None else None
        self.dns = dns
        self.policy = policy

    def destination(self, session: Session) -> tuple[str, int]:
        host, port = session.target.address, session.target.port
        if self.redirect is not None:
            host = self.redirect[0] or host
            port = self.redirect[1] or port
        return host, port

    def dial_address(self, host: str) -> str:
        """The address to dial for ``host``: a resolved one under UseIP*, else ``host``."""
        if self.families is None or self.dns is None or _is_ip(host):
            return host
        try:
            ips = self.dns.lookup(host, *self.families)
        except Exception as exc:  # any failure: the name is dialed, as V2Ray does
            log.info("freedom: failed to get IP address for domain %s: %s", host, exc)
            return host
        return str(random.choice(ips)) if ips else host

    def open(self, session: Session) -> Stream:
        if session.target.network == "udp":
            return self._open_udp(session)
        host, port = self.destination(session)
        return dial(self.transport, self.dial_address(host), port)

    def _open_udp(self, session: Session) -> Stream:
        host, port = self.destination(session)
        host = self.dial_address(host)
        if _is_ip(host):  # no resolver (a thread pool) for a literal
            host = host.strip("[]")
            family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
            kind, proto, address = _socket.SOCK_DGRAM, 0, (host, port)
        else:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, 0,
                                                                 socket.SOCK_DGRAM)[0]
        sock = _socket.socket(family, kind, proto)  # a plain one: DatagramSocket drives it
        try:
            sock.connect(address)  # (UDP: no wait)
        except OSError:
            sock.close()
            raise
        return DatagramSocket(sock)

    def handle(self, session: Session, stream: Stream) -> None:
        try:
            upstream = self.open(session)
        except OSError as exc:
            host, port = self.destination(session)
            log.warning("freedom: failed to open connection to %s:%s: %s", host, port, exc)
            session.ending.end()
            return
        session.upstream = upstream  # counted as this outbound's traffic
        relay(stream, upstream, _shorter(session.policy, self.policy),
              on_done=session.ending.end)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _shorter(a: SessionPolicy, b: SessionPolicy) -> SessionPolicy:
    if a is b or a == b:  # (the same level's policy, as usual: no comparison)
        return a
    return SessionPolicy(min(a.handshake, b.handshake), min(a.conn_idle, b.conn_idle),
                         min(a.uplink_only, b.uplink_only),
                         min(a.downlink_only, b.downlink_only), a.buffer_size)
