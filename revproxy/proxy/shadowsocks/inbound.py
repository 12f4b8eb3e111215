"""Shadowsocks inbound (TCP): decrypts the destination at the start of the stream, then
dispatches the session. A stream that fails to decrypt gets no answer: like V2Ray, the server
reads on for an amount fixed per key (plus a little randomness) before closing, so a prober
cannot tell from the timing which byte was wrong.

UDP (``udp``, or ``network`` with "udp"): the inbound also reads a UDP socket on its port
(instance.py); ``handle_datagrams`` relays each client's packets, one session per destination,
as the SOCKS inbound does (proxy/socks/udp.py), with ``codec.decode_packet``/``encode_packet``.
A packet that fails to decrypt is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import socket
import zlib

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import TunnelStream
from revproxy.net.udp import SourceStream
from revproxy.proxy.shadowsocks.codec import RequestDecoder, decode_packet, encode_packet
from revproxy.proxy.shadowsocks.crypto import Method, Sealer, ShadowsocksError
from revproxy.proxy.shadowsocks.stream import ShadowsocksStream
from revproxy.proxy.socks.udp import SocksUDPRelay
from revproxy.proxy.streams import HANDSHAKE_TIMEOUT, drain, read_handshake
from revproxy.transport import PLAIN, Transport, wrap


class ShadowsocksInbound:
    """``level`` (the user's ``level``) is its sessions' policy level and ``handshake`` (s)
    that level's ``handshake``: the time a client has to send its request header (and the
    longest a failed one is drained)."""

    def __init__(self, tag: str | None, method: Method, key: bytes, dispatcher: Dispatcher,
                 transport: Transport = PLAIN, email: str | None = None, level: int = 0,
                 handshake: float = HANDSHAKE_TIMEOUT) -> None:
        self.tag = tag
        self.level = level
        self.handshake = handshake
        self.method = method
        self.key = key
        self.dispatcher = dispatcher
        self.transport = transport
        self.email = email
        self.udp_relay = SocksUDPRelay(tag, dispatcher, decode=self._decode_packet,
                                       encode=self._encode_packet, email=email)
        # V2Ray's behaviour seed: the drain size depends on the key, so it is the same for
        # every failure at one server (and differs between servers).
        seed = zlib.crc32(hmac.new(b"SSBSKDF", key, hashlib.sha256).digest())
        behaviour = random.Random(seed)
        self._drain_base = behaviour.randrange(3266) + 16 + 38
        self._drain_spread = behaviour.randrange(64) + 1

    def _decode_packet(self, packet: bytes) -> tuple[str, int, bytes]:
        destination, payload = decode_packet(self.method, self.key, packet)
        return destination.address, destination.port, payload

    def _encode_packet(self, address: str, port: int, payload: bytes | memoryview) -> bytes:
        return encode_packet(self.method, self.key, address, port, payload)

    def handle_datagrams(self, client: SourceStream) -> None:
        """One client's UDP packets (the inbound's UDP socket on its port)."""
        self.udp_relay.handle_datagrams(client)

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        try:
            stream, peer = wrap(self.transport, sock, address)
        except OSError as exc:
            log.info("shadowsocks: %s:%s: transport handshake failed: %s", address[0],
                     address[1], exc)
            ending.end()
            return
        source = f"{peer[0]}:{peer[1]}"
        if not self._serve(stream, source, ending):
            stream.close()
            ending.end()

    def _serve(self, stream: TunnelStream, source: str, ending: Ending) -> bool:
        decoder = RequestDecoder(self.method, self.key)
        try:
            destination = read_handshake(stream, decoder.feed, self.handshake)
        except ShadowsocksError as exc:
            log.info("shadowsocks: %s rejected: %s", source, exc)
            drain(stream, self._drain_base + random.randrange(self._drain_spread)
                  - decoder.received, self.handshake)
            return False
        except OSError as exc:
            log.info("shadowsocks: %s: %s", source, exc)
            return False
        if destination is None:
            return False
        session = Session(Target("tcp", destination.address, destination.port), self.tag,
                          source=source, email=self.email, level=self.level, ending=ending)
        served = ShadowsocksStream(stream, decoder.opener, Sealer(self.method, self.key),
                                   decoder.rest)
        self.dispatcher.handle(session, served)
        return True
