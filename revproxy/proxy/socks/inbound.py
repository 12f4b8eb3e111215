"""SOCKS inbound: SOCKS5 (no auth, or username/password ``accounts``) and SOCKS4/4a, as
V2Ray 4.34 serves them. A CONNECT is answered at once and dispatched; the destination is
dialed by whatever outbound routing picks (a portal's tunnel to a bridge included).

UDP ASSOCIATE is answered as V2Ray answers it (``udp``, ``ip``) and the control connection is
held until the client closes it. With ``udp`` the inbound also reads a UDP socket on its port
(instance.py): ``handle_datagrams`` relays the clients' datagrams (proxy/socks/udp.py).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.relay import IDLE_TIMEOUT
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import TunnelStream
from revproxy.net.udp import SourceStream
from revproxy.proxy.socks.codec import ServerHandshake, SocksError, SocksRequest
from revproxy.proxy.socks.udp import SocksUDPRelay
from revproxy.proxy.streams import HANDSHAKE_TIMEOUT, IdleLimit, prefixed, read_handshake
from revproxy.proxy.wire import ProtocolError
from revproxy.transport import PLAIN, Transport, wrap


class SocksInbound:
    """``listen`` is the inbound's configured address (V2Ray's "gateway", which its replies
    carry); ``timeout`` (s, 0 = the default) limits idleness as V2Ray's ``timeout`` does at
    user level 0. ``level`` (V2Ray's ``userLevel``) is its sessions' policy level and
    ``handshake`` (s) that level's ``handshake``: the time a client has for its handshake."""

    def __init__(self, tag: str | None, dispatcher: Dispatcher, *, password: bool = False,
                 accounts: Mapping[str, str] | None = None, udp: bool = False,
                 udp_address: str | None = None, listen: str = "0.0.0.0", timeout: float = 0,
                 level: int = 0, handshake: float = HANDSHAKE_TIMEOUT,
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.level = level
        self.handshake = handshake
        self.dispatcher = dispatcher
        self.password = password
        self.accounts = dict(accounts or {})
        self.udp = udp
        self.udp_address = udp_address
        self.listen = listen
        self.idle = timeout if timeout and timeout != IDLE_TIMEOUT else None
        self.transport = transport
        self.udp_relay = SocksUDPRelay(tag, dispatcher)

    def handle_datagrams(self, client: SourceStream) -> None:
        """One client's UDP datagrams (``udp``: the inbound's UDP socket on its port)."""
        self.udp_relay.handle_datagrams(client)

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        try:
            stream, peer = wrap(self.transport, sock, address)
        except OSError as exc:
            log.info("socks: %s:%s: transport handshake failed: %s", address[0], address[1],
                     exc)
            ending.end()
            return
        source = f"{peer[0]}:{peer[1]}"
        try:
            served = self._serve(stream, sock, peer, source, ending)
        except (OSError, ProtocolError) as exc:
            log.info("socks: %s: %s", source, exc)
            served = False
        if not served:
            stream.close()
            ending.end()

    def _serve(self, stream: TunnelStream, sock: socket.socket, peer: tuple, source: str,
               ending: Ending) -> bool:
        handshake = ServerHandshake(
            password=self.password, accounts=self.accounts, udp=self.udp,
            gateway=(self.listen, sock.getsockname()[1]), udp_address=self.udp_address,
            client=peer[0])

        def feed(data: bytes) -> SocksRequest | None:
            answer = handshake.feed(data)
            if answer:
                stream.send(answer)
            return handshake.request

        try:
            request = read_handshake(stream, feed, self.handshake)
        except SocksError as exc:
            if exc.reply:
                try:
                    stream.send(exc.reply)
                except OSError:
                    pass
            log.info("socks: %s rejected: %s", source, exc)
            return False
        if request is None:
            return False
        if request.command == "udp":
            self._hold(stream, source)
            return False
        session = Session(Target("tcp", request.address, request.port), self.tag,
                          source=source, email=request.user, level=self.level,
                          ending=ending)
        client = (IdleLimit(stream, handshake.rest, self.idle) if self.idle
                  else prefixed(stream, handshake.rest))
        self.dispatcher.handle(session, client)
        return True

    def _hold(self, stream: TunnelStream, source: str) -> None:
        """A UDP ASSOCIATE's control connection: V2Ray keeps it until the client closes it."""
        log.info("socks: %s: UDP ASSOCIATE answered", source)
        stream.settimeout(None)
        try:
            while stream.recv():
                pass
        except OSError:
            pass
