"""VMess inbound: authenticates a request header (AEAD, or legacy from users with alter
ids), then dispatches the session.

The connection arrives through the inbound's transport (``streamSettings``), whose handshake
runs first. A failed VMess handshake gets no answer: like V2Ray, the server keeps reading an
amount derived from the user ids, within the one handshake deadline, before closing, so a
prober learns nothing.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence

import gevent

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import TunnelStream
from revproxy.net.traffic import HANDSHAKE_FAILURES, REPLAYS_REFUSED
from revproxy.proxy.vmess.crypto import User
from revproxy.proxy.vmess.header import (
    COMMAND_TCP,
    COMMAND_UDP,
    HandshakeError,
    RequestDecoder,
    RequestHeader,
    drain_sizes,
    is_insecure,
)
from revproxy.proxy.vmess.legacy import LegacyUsers
from revproxy.proxy.vmess.replay import ReplayFilter
from revproxy.proxy.vmess.stream import VMessServerStream
from revproxy.transport import PLAIN, Transport, wrap

HANDSHAKE_TIMEOUT = 4.0


class VMessInbound:
    def __init__(self, tag: str | None, users: Sequence[User], replay: ReplayFilter,
                 dispatcher: Dispatcher, transport: Transport = PLAIN, *,
                 legacy_users: LegacyUsers | None = None, secure_only: bool = False,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """``legacy_users``: the users with alter ids, whose legacy requests are accepted;
        ``secure_only``: V2Ray's ``disableInsecureEncryption`` (no "none" body);
        ``handshake_timeout``: policy level 0's ``handshake``, as V2Ray's."""
        self.tag = tag
        self.users = tuple(users)
        self.replay = replay
        self.dispatcher = dispatcher
        self.transport = transport
        self.legacy_users = legacy_users
        self.secure_only = secure_only
        self.handshake_timeout = handshake_timeout
        self._drain_base, self._drain_spread = drain_sizes(self.users)

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        try:
            transport, address = wrap(self.transport, sock, address)
        except OSError as exc:
            log.info("vmess: %s:%s: transport handshake failed: %s", address[0], address[1],
                     exc)
            ending.end()  # closes the socket
            return
        source = f"{address[0]}:{address[1]}"
        decoder = RequestDecoder(self.users, self.replay, legacy_users=self.legacy_users)
        header = self._handshake(transport, source, decoder)
        if header is not None and self.secure_only and is_insecure(header.security):
            log.info("vmess: %s rejected: insecure encryption %d (disableInsecureEncryption)",
                     source, header.security)
            header = None
        if header is None:
            transport.close()  # a transport may have a last word (V2Ray's HTTP header has)
            ending.end()
            return
        if header.command == COMMAND_TCP:
            network = "tcp"
        elif header.command == COMMAND_UDP:
            network = "udp"
        else:
            log.warning("vmess: %s: command %d is not supported", source, header.command)
            transport.close()
            ending.end()
            return
        email = decoder.user.email if decoder.user is not None else None
        level = decoder.user.level if decoder.user is not None else None
        session = Session(Target(network, header.address, header.port), self.tag,
                          source=source, email=email, level=level, ending=ending)
        self.dispatcher.handle(session, VMessServerStream(transport, header, decoder.rest))

    def _handshake(self, transport: TunnelStream, source: str,
                   decoder: RequestDecoder) -> RequestHeader | None:
        """The request header, or None if the peer went away or failed to authenticate. One
        deadline covers the handshake and the drain after a failure, as in V2Ray."""
        received = 0
        try:
            with gevent.Timeout(self.handshake_timeout, TimeoutError):
                try:
                    while True:
                        data = transport.recv()
                        if not data:
                            return None
                        received += len(data)
                        header = decoder.feed(data)
                        if header is not None:
                            return header
                except HandshakeError as exc:
                    log.info("vmess: %s rejected: %s", source, exc)
                    self.dispatcher.traffic.count(
                        REPLAYS_REFUSED if str(exc).startswith("replayed")
                        else HANDSHAKE_FAILURES)
                    remaining = (self._drain_base + random.randrange(self._drain_spread)
                                 - received)
                    while remaining > 0:
                        data = transport.recv()
                        if not data:
                            break
                        remaining -= len(data)
        except OSError:
            pass
        return None
