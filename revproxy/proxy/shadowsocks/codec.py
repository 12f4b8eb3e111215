"""Shadowsocks requests, sans-IO: the destination at the start of a TCP stream and in front
of each UDP packet's payload, over the ciphers of ``crypto``. Wire-compatible with V2Ray 4.34
(proxy/shadowsocks/protocol.go).

TCP, client to server: ``salt | chunks``, whose plaintext starts with the destination in
SOCKS5's layout (type 1 IPv4, 3 domain, 4 IPv6; the type masked with 0x0F) and goes on with
the payload. Server to client: ``salt | chunks`` of payload. UDP, both ways: one packet is
``salt | seal(destination | payload)`` (on the way back, the destination is the source).
"""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.proxy.shadowsocks.crypto import (
    Method,
    Opener,
    Sealer,
    ShadowsocksError,
    open_packet,
    seal_packet,
)
from revproxy.proxy.wire import SHADOWSOCKS, AddressError, decode_address, encode_address

MAX_ADDRESS = 1 + 1 + 255 + 2


@dataclass(frozen=True, slots=True)
class Destination:
    address: str
    port: int


def encode_request(sealer: Sealer, address: str, port: int, payload: bytes = b"") -> bytes:
    """The start of a client's stream: salt, then the destination (and ``payload``) sealed."""
    return sealer.seal(encode_address(SHADOWSOCKS, address, port) + payload)


class RequestDecoder:
    """Server side: ``feed`` the stream's first bytes until it gives the ``Destination`` (None
    before). ``opener`` then goes on decrypting the stream; ``rest`` is the payload that came
    with the destination. ``received`` counts the bytes fed (for V2Ray's drain on failure)."""

    def __init__(self, method: Method, key: bytes) -> None:
        self.opener = Opener(method, key)
        self._plain = b""
        self.received = 0
        self.destination: Destination | None = None
        self.rest = b""

    def feed(self, data: bytes) -> Destination | None:
        if self.destination is not None:
            raise ValueError("the request was already decoded")
        self.received += len(data)
        payloads = self.opener.feed(data)
        if payloads:
            self._plain += b"".join(payloads)
        try:
            decoded = decode_address(SHADOWSOCKS, self._plain)
        except AddressError as exc:
            raise ShadowsocksError(f"invalid destination: {exc}") from None
        if decoded is None:
            if len(self._plain) >= MAX_ADDRESS or self.opener.finished:
                raise ShadowsocksError("no destination in the stream")
            return None
        address, port, end = decoded
        self.rest = self._plain[end:]
        self._plain = b""
        self.destination = Destination(address, port)
        return self.destination


def encode_packet(method: Method, key: bytes, address: str, port: int,
                  payload: bytes | memoryview) -> bytes:
    """One UDP packet to (or, from a server, from) ``address``:``port``."""
    return seal_packet(method, key, encode_address(SHADOWSOCKS, address, port) + payload)


def decode_packet(method: Method, key: bytes, packet: bytes) -> tuple[Destination, bytes]:
    """The destination (or source) and payload of one UDP packet."""
    plain = open_packet(method, key, packet)
    try:
        decoded = decode_address(SHADOWSOCKS, plain)
    except AddressError as exc:
        raise ShadowsocksError(f"invalid destination: {exc}") from None
    if decoded is None:
        raise ShadowsocksError("packet too short for its destination")
    address, port, end = decoded
    return Destination(address, port), plain[end:]
