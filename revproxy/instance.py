"""The serving part of a worker: outbounds, routing, inbound servers and bridges from a Config.

``Instance.__init__`` only stores what it is given, so a supervisor can fork first and build
after; ``start`` does the wiring, ``stop`` winds it down. Listening sockets may be handed in
(inherited from the supervisor) or are bound here; ``directory`` links the portals and bridges
to the sibling workers (tunnel sharing and hand-off) when there are any.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Mapping

import gevent

from revproxy.config import Config, InboundConfig
from revproxy.config.model import (
    BlackholeSettings,
    DokodemoSettings,
    FreedomSettings,
    HTTPInboundSettings,
    HTTPOutboundSettings,
    ShadowsocksInboundSettings,
    ShadowsocksOutboundSettings,
    SocksInboundSettings,
    SocksOutboundSettings,
    StreamConfig,
    VLESSInboundSettings,
    VLESSOutboundSettings,
    VMessInboundSettings,
    VMessOutboundSettings,
)
from revproxy.dispatcher import Dispatcher, Outbound, Sniffing
from revproxy.dns import LOCAL_DOMAINS, DNSClient, Hosts, Server, server_for
from revproxy.log import log
from revproxy.net.acceptor import Acceptor
from revproxy.net.listen import bind_datagram, bind_listener, udp_listener_key
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import Stream
from revproxy.net.traffic import Traffic
from revproxy.net.udp import PacketSessions
from revproxy.policy import Policy
from revproxy.proxy.blackhole import BlackholeOutbound
from revproxy.proxy.commander import CommanderOutbound
from revproxy.proxy.dokodemo import DokodemoInbound
from revproxy.proxy.freedom import FreedomOutbound
from revproxy.proxy.http.inbound import HTTPInbound
from revproxy.proxy.http.outbound import HTTPOutbound, HTTPServer
from revproxy.proxy.shadowsocks.crypto import METHODS, password_key
from revproxy.proxy.shadowsocks.inbound import ShadowsocksInbound
from revproxy.proxy.shadowsocks.outbound import ShadowsocksOutbound, ShadowsocksServer
from revproxy.proxy.socks.inbound import SocksInbound
from revproxy.proxy.socks.outbound import SocksOutbound, SocksServer
from revproxy.proxy.vless.codec import Fallback
from revproxy.proxy.vless.codec import User as VLESSUser
from revproxy.proxy.vless.inbound import VLESSInbound
from revproxy.proxy.vless.outbound import VLESSOutbound, VLESSServer
from revproxy.proxy.vmess.crypto import User
from revproxy.proxy.vmess.header import security_from_name
from revproxy.proxy.vmess.inbound import VMessInbound
from revproxy.proxy.vmess.legacy import LegacyUsers, aead_forced
from revproxy.proxy.vmess.outbound import VMessOutbound, VMessServer
from revproxy.proxy.vmess.replay import MemoryReplayFilter, ReplayFilter
from revproxy.reverse.bridge import Bridge
from revproxy.reverse.directory import Role, TunnelDirectory
from revproxy.reverse.portal import PortalOutbound
from revproxy.reverse.tunnel import Tunnel
from revproxy.routing import DomainMatcher, IPMatcher, Router
from revproxy.transport import listener_options, prepare


def outbound_key(index: int, tag: str | None) -> str:
    """Untagged outbounds still need a name for routing's default."""
    return tag if tag else f"outbounds[{index}]"


class Instance:
    def __init__(self, config: Config, listeners: Mapping[int, socket.socket] | None = None,
                 replay: ReplayFilter | None = None, directory: TunnelDirectory | None = None,
                 workers: int = 1, traffic: Traffic | None = None,
                 api_socket: str = "", udp_reader: bool = True) -> None:
        """``traffic``: the worker's counters; ``api_socket``: where the API process
        listens (the ``api`` tag's outbound connects there); ``udp_reader``: whether this
        worker reads the inbounds' UDP sockets (one worker does: see ``_serve_udp``)."""
        self.config = config
        self.traffic = traffic
        self.api_socket = api_socket
        self.udp_reader = udp_reader
        self.packet_servers: list[PacketSessions] = []  # dokodemo-door UDP sockets read here
        self.listeners = dict(listeners or {})
        self.replay = replay
        self.directory = directory
        self.workers = workers  # how many siblings share the bridges' tunnel quota
        self.outbounds: dict[str, Outbound] = {}
        self.portals: list[PortalOutbound] = []
        self.bridges: list[Bridge] = []
        self.servers: list[Acceptor] = []
        self.tunnel_servers: list[Acceptor] = []  # VMess/VLESS/SS inbounds: where tunnels arrive
        self.dispatcher: Dispatcher | None = None
        self.dns: DNSClient | None = None

    def start(self) -> None:
        config = self.config
        policy = config.policy.sessions()
        self.dns = build_dns(config, self._dns_stream)
        for index, outbound in enumerate(config.outbounds):
            key = outbound_key(index, outbound.tag)
            self.outbounds[key] = build_outbound(key, outbound.settings, outbound.stream,
                                                 dns=self.dns, policy=policy)
        for portal_config in config.reverse.portals:
            portal = PortalOutbound(portal_config.tag, portal_config.domain, self.directory,
                                    proxy_protocol=portal_config.proxy_protocol)
            self.portals.append(portal)
            self.outbounds[portal.tag] = portal
        if config.api is not None and self.api_socket:
            self.outbounds[config.api.tag] = CommanderOutbound(config.api.tag, self.api_socket)
        default = outbound_key(0, config.outbounds[0].tag) if config.outbounds else None
        options = config.routing_options
        router = Router(config.routing, default, balancers=dict(options.balancers),
                        outbound_tags=[tag for tag in self.outbounds
                                       if not tag.startswith("outbounds[")],
                        strategy=options.strategy, resolve=self.dns.lookup)
        self.dispatcher = Dispatcher(router, self.outbounds, self.traffic, policy)
        replay = self.replay if self.replay is not None else MemoryReplayFilter()
        for index, inbound in enumerate(config.inbounds):
            handler = build_inbound(inbound, self.dispatcher, replay, policy)
            self._serve_udp(index, inbound, handler)
            if isinstance(inbound.settings, DokodemoSettings) and \
                    "tcp" not in inbound.settings.network:
                continue  # UDP alone: no TCP listener
            listener = self.listeners.get(index)  # the master's, its sockopt set
            if listener is None:
                listener = bind_listener(inbound.listen, inbound.port,
                                         options=listener_options(inbound.stream))
            self.listeners[index] = listener
            server = Acceptor(listener, handler)
            server.start_accepting()
            self.servers.append(server)
            if isinstance(inbound.settings, _TUNNEL_INBOUNDS):
                self.tunnel_servers.append(server)
            log.info("worker: %s inbound %s listening on %s:%d", inbound.protocol,
                     inbound.tag or f"inbounds[{index}]", *listener.getsockname()[:2])
        for bridge_config in config.reverse.bridges:
            # The quotas are for the whole server: each worker takes its share.
            minimum = bridge_config.min_tunnels or self.workers
            maximum = bridge_config.max_tunnels
            bridge = Bridge(bridge_config.tag, bridge_config.domain, self.dispatcher,
                            min_tunnels=math.ceil(minimum / self.workers),
                            max_tunnels=math.ceil(maximum / self.workers) if maximum else None,
                            directory=self.directory)
            bridge.start()
            self.bridges.append(bridge)

    def _serve_udp(self, index: int, inbound: InboundConfig, handler: object) -> None:
        """Read an inbound's UDP socket (dokodemo-door, SOCKS with ``udp``), if it has one and
        this worker is its reader.

        The master binds the socket and every worker inherits it, but only one reads it
        (``udp_reader``: the worker with the lowest index), so that all the datagrams of one
        source reach the process holding its session. (Several readers of one socket would
        split a source's datagrams among them; SO_REUSEPORT sockets per worker would keep a
        source on one, but the kernel's hash moves sources whenever the number of workers
        changes, as on a reload.)"""
        doko = getattr(handler, "__self__", None)
        settings = inbound.settings
        socks_udp = isinstance(doko, SocksInbound) and isinstance(settings, SocksInboundSettings) \
            and settings.udp
        ss_udp = isinstance(doko, ShadowsocksInbound) and \
            isinstance(settings, ShadowsocksInboundSettings) and \
            (settings.udp or "udp" in settings.network)
        if not self.udp_reader or not (socks_udp or ss_udp or (
                isinstance(doko, DokodemoInbound) and isinstance(settings, DokodemoSettings)
                and "udp" in settings.network)):
            return
        assert isinstance(doko, DokodemoInbound | SocksInbound | ShadowsocksInbound)
        key = udp_listener_key(index)
        sock = self.listeners.get(key) or bind_datagram(inbound.listen, inbound.port)
        self.listeners[key] = sock
        name = f"{inbound.protocol} {inbound.tag or f'inbounds[{index}]'} (UDP)"
        server = PacketSessions(sock, doko.handle_datagrams, name=name)
        server.start()
        self.packet_servers.append(server)
        log.info("worker: %s listening on %s:%d", name, *sock.getsockname()[:2])

    def _dns_stream(self, target: Target) -> Stream:
        """A connection for a DNS query, routed as V2Ray routes them: with the ``dns``
        section's tag as inbound tag, protocol "dns" (UDP) or "https" (DoH)."""
        assert self.dispatcher is not None
        tag = self.config.dns.tag if self.config.dns is not None else ""
        session = Session(target, tag or None, source="dns",
                          protocol="dns" if target.network == "udp" else "https")
        return self.dispatcher.open(session)

    def tunnels(self) -> list[Tunnel]:
        tunnels: list[Tunnel] = []
        for portal in self.portals:
            tunnels.extend(portal.tunnels)
        for bridge in self.bridges:
            tunnels.extend(bridge.open_tunnels)
        return tunnels

    def summary(self) -> str:
        """What this worker does, for its process title."""
        parts = []
        if self.portals:
            tunnels = sum(len(p.tunnels) for p in self.portals)
            sessions = sum(t.visitor_sessions for p in self.portals for t in p.tunnels)
            parts.append(f"portal: {tunnels} tunnels, {sessions} sessions")
        if self.bridges:
            tunnels = sum(len(b.tunnels) for b in self.bridges)
            sessions = sum(b.sessions for b in self.bridges)
            parts.append(f"bridge: {tunnels} tunnels, {sessions} sessions")
        if not parts:
            active = self.dispatcher.active if self.dispatcher else 0
            parts.append(f"{active} connections")
        return "; ".join(parts)

    def steer_tunnels(self) -> None:
        """Spread the bridges' tunnels over the portal workers: a worker holding more portal
        tunnels than the least provided sibling leaves new ones (on the shared VMess
        listeners) to the others. The least provided always accepts, so someone does."""
        if self.directory is None or not self.portals or not self.tunnel_servers:
            return
        mine = sum(1 for p in self.portals for t in p.tunnels if not t.draining)
        others = self.directory.portal_tunnel_counts()
        accept = not others or mine <= min(others.values())
        for server in self.tunnel_servers:
            if not server.closed:
                (server.start_accepting if accept else server.stop_accepting)()

    def busy(self) -> int:
        """Sessions that a graceful stop waits for: every session the dispatcher serves
        (visitors handed over by siblings included), the portals' tunnels left out."""
        assert self.dispatcher is not None
        tunnels = sum(len(portal.tunnels) for portal in self.portals)
        return max(0, self.dispatcher.active - tunnels)

    def stop_accepting(self) -> None:
        """First step of a graceful stop: close listeners, drain tunnels, dial no more."""
        for server in self.servers:
            server.close()
        for packets in self.packet_servers:
            packets.close()  # (UDP sessions are short: they end now)
        for portal in self.portals:
            portal.drain_all()
        for bridge in self.bridges:
            bridge.stop_dialing()

    def replaced(self) -> bool:
        """Whether siblings hold active tunnels for every portal and bridge that has some here."""
        if self.directory is None:
            return True
        for portal in self.portals:
            if portal.tunnels and not self.directory.siblings_hold(Role.PORTAL, portal.tag):
                return False
        for bridge in self.bridges:
            if not bridge.replaced():  # siblings hold tunnels to each of its portals
                return False
        return True

    def stop(self, timeout: float = 0.0, wait_for_siblings: bool = False) -> None:
        """Stop accepting, wait up to ``timeout`` s for running sessions, then cut the rest.

        ``wait_for_siblings`` (a reload or one worker less, while the siblings go on): first
        keep the tunnels until siblings have their own, so that no visitor finds none.
        """
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        if wait_for_siblings:
            while not self.replaced() and time.monotonic() < deadline:
                gevent.sleep(0.2)
        for bridge in self.bridges:
            bridge.leave()
        if timeout:
            gevent.sleep(min(0.5, timeout))  # sessions opened just before the portal heard
        while self.busy() and time.monotonic() < deadline:
            gevent.sleep(0.1)
        for bridge in self.bridges:
            bridge.stop()


def build_dns(config: Config, open_stream: Callable[[Target], Stream]) -> DNSClient:
    """The DNS client of the ``dns`` section (the system's resolver without one);
    ``open_stream`` carries its queries."""
    section = config.dns
    if section is None:
        return DNSClient(())
    servers = []
    for server in section.servers:
        client_ip = server.client_ip or section.client_ip
        domains = list(server.domains)
        if server.address == "localhost":  # V2Ray sends local names there first
            domains += LOCAL_DOMAINS
        servers.append(Server(server_for(server.address, server.port, client_ip, open_stream),
                              DomainMatcher(domains) if domains else None,
                              IPMatcher(server.expect_ips) if server.expect_ips else None))
    return DNSClient(servers, Hosts(section.hosts) if section.hosts else None)


def build_outbound(tag: str, settings: object, stream: StreamConfig | None = None, *,
                   dns: DNSClient | None = None, policy: Policy | None = None) -> Outbound:
    """The outbound for ``settings``; ``stream`` its streamSettings (loads certificates);
    ``dns`` what freedom's ``domainStrategy`` resolves with; ``policy`` the levels'."""
    transport = prepare(stream, server=False)
    if isinstance(settings, FreedomSettings):
        resolve = dns if settings.domain_strategy != "AsIs" else None
        return FreedomOutbound(tag, settings.redirect, transport,
                               strategy=settings.domain_strategy, dns=resolve,
                               policy=(policy or Policy()).for_level(settings.user_level))
    if isinstance(settings, BlackholeSettings):
        return BlackholeOutbound(tag)
    if isinstance(settings, VMessOutboundSettings):
        servers = [
            VMessServer(server.address, server.port, User(user.id, email=user.email),
                        security_from_name(user.security))
            for server in settings.servers
            for user in server.users[:1]
        ]
        if any(user.alter_id for server in settings.servers for user in server.users[:1]):
            log.warning("vmess outbound %s: alterId is set, but revproxy speaks VMess AEAD "
                        "(the legacy scheme is probe-able); V2Ray 4.34 servers accept it", tag)
        return VMessOutbound(tag, servers, transport)
    if isinstance(settings, VLESSOutboundSettings):
        return VLESSOutbound(tag, [
            VLESSServer(server.address, server.port,
                        tuple(VLESSUser.from_uuid(user.id, user.email) for user in server.users))
            for server in settings.servers], transport)
    if isinstance(settings, ShadowsocksOutboundSettings):
        return ShadowsocksOutbound(tag, [
            ShadowsocksServer(server.address, server.port, METHODS[server.method],
                              password_key(server.password, METHODS[server.method].key_size))
            for server in settings.servers], transport)
    if isinstance(settings, SocksOutboundSettings):
        return SocksOutbound(tag, [
            SocksServer(server.address, server.port,
                        tuple((user.user, user.password) for user in server.users))
            for server in settings.servers], transport)
    if isinstance(settings, HTTPOutboundSettings):
        return HTTPOutbound(tag, [
            HTTPServer(server.address, server.port,
                       tuple((user.user, user.password) for user in server.users))
            for server in settings.servers], transport)
    raise ValueError(f"unsupported outbound settings {settings!r}")


def _legacy_users(inbound: InboundConfig, users: list[User]) -> LegacyUsers | None:
    """The users of a VMess inbound whose legacy requests it takes: those with alter ids,
    unless the environment forces AEAD."""
    assert isinstance(inbound.settings, VMessInboundSettings)
    counts = [client.alter_id for client in inbound.settings.clients]
    if not any(counts):
        return None
    if aead_forced(os.environ):
        log.warning("vmess inbound %s: AEAD is forced by the environment: the legacy requests "
                    "of users with alterId are refused", inbound.tag or "")
        return None
    return LegacyUsers(zip(users, counts, strict=True))


def inbound_level(settings: object) -> int:
    """The policy level of an inbound's users who have none of their own."""
    if isinstance(settings, SocksInboundSettings | HTTPInboundSettings):
        return settings.user_level
    if isinstance(settings, ShadowsocksInboundSettings):
        return settings.level
    if isinstance(settings, DokodemoSettings):
        return settings.user_level
    return 0


def build_inbound(inbound: InboundConfig, dispatcher: Dispatcher,
                  replay: ReplayFilter, policy: Policy | None = None
                  ) -> Callable[[socket.socket, tuple, Ending], None]:
    """The connection handler of ``inbound``; ``policy``: the levels' (handshake time)."""
    settings = inbound.settings
    transport = prepare(inbound.stream, server=True)  # loads its certificates
    sniffing = Sniffing(inbound.sniffing) if inbound.sniffing is not None else None
    level = inbound_level(settings)
    dispatcher = dispatcher.for_inbound(level, sniffing)
    policy = policy or Policy()
    handshake = policy.for_level(0).handshake  # VMess/VLESS: level 0's, as V2Ray's
    own_handshake = policy.for_level(level).handshake  # the others': their level's
    if isinstance(settings, DokodemoSettings):
        return DokodemoInbound(inbound.tag, settings.address, settings.port,
                               settings.follow_redirect, dispatcher, transport,
                               inbound.stream.sockopt.tproxy).handle_connection
    if isinstance(settings, VMessInboundSettings):
        users = [User(client.id, email=client.email, level=client.level)
                 for client in settings.clients]
        return VMessInbound(inbound.tag, users, replay, dispatcher, transport,
                            legacy_users=_legacy_users(inbound, users),
                            secure_only=settings.disable_insecure_encryption,
                            handshake_timeout=handshake).handle_connection
    if isinstance(settings, VLESSInboundSettings):
        return VLESSInbound(
            inbound.tag, [VLESSUser.from_uuid(client.id, client.email, client.level)
                          for client in settings.clients], dispatcher, transport,
            [Fallback(fb.dest, fb.network, fb.alpn, fb.path, fb.xver)
             for fb in settings.fallbacks], handshake_timeout=handshake).handle_connection
    if isinstance(settings, ShadowsocksInboundSettings):
        method = METHODS[settings.method]
        return ShadowsocksInbound(inbound.tag, method,
                                  password_key(settings.password, method.key_size), dispatcher,
                                  transport, settings.email, level,
                                  own_handshake).handle_connection
    if isinstance(settings, SocksInboundSettings):
        return SocksInbound(
            inbound.tag, dispatcher, password=settings.auth == "password",
            accounts={a.user: a.password for a in settings.accounts}, udp=settings.udp,
            udp_address=settings.ip, listen=inbound.listen,
            timeout=settings.timeout if settings.user_level == 0 else 0, level=level,
            handshake=own_handshake, transport=transport).handle_connection
    if isinstance(settings, HTTPInboundSettings):
        return HTTPInbound(
            inbound.tag, dispatcher, accounts={a.user: a.password for a in settings.accounts},
            allow_transparent=settings.allow_transparent,
            timeout=settings.timeout if settings.user_level == 0 else 0, level=level,
            handshake=own_handshake, transport=transport).handle_connection
    raise ValueError(f"unsupported inbound settings {settings!r}")


# Where a bridge's tunnels may arrive (their listeners take part in steer_tunnels).
_TUNNEL_INBOUNDS = (VMessInboundSettings, VLESSInboundSettings, ShadowsocksInboundSettings)
