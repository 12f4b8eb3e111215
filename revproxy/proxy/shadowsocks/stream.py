"""Shadowsocks streams: a transport's stream in the chunk cipher (TCP, either end), and a
UDP socket carrying one session's datagrams as Shadowsocks packets (the outbound's UDP).
Codec errors surface as ``ConnectionError``."""

from __future__ import annotations

import gevent.socket

from revproxy.net.stream import RECV_SIZE, TunnelStream
from revproxy.proxy.shadowsocks.codec import decode_packet, encode_packet
from revproxy.proxy.shadowsocks.crypto import Method, Opener, Sealer, ShadowsocksError


class ShadowsocksStream:
    """Either end of a TCP connection once the destination is known: ``opener`` decrypts
    what arrives (``early``: plaintext that came with the request), ``sealer`` encrypts what
    leaves (its salt goes with the first bytes)."""

    __slots__ = ("transport", "_opener", "_sealer", "_early")

    def __init__(self, transport: TunnelStream, opener: Opener, sealer: Sealer,
                 early: bytes = b"") -> None:
        self.transport = transport
        self._opener = opener
        self._sealer = sealer
        self._early = early

    def recv(self) -> bytes:
        if self._early:
            early, self._early = self._early, b""
            return early
        opener = self._opener
        while not opener.finished:
            data = self.transport.recv()
            if not data:
                return b""
            try:
                payloads = opener.feed(data)
            except ShadowsocksError as exc:
                raise ConnectionError(f"shadowsocks: {exc}") from None
            if payloads:
                return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        return b""

    def send(self, data: bytes | memoryview) -> None:
        if data:
            self.transport.send(self._sealer.seal(data))

    def send_nowait(self, data: bytes) -> bool:
        if not data:
            return True
        return self.transport.send_nowait(self._sealer.seal(data))

    def flush(self) -> None:
        self.transport.flush()

    def close_write(self) -> None:
        self.transport.close_write()

    def close(self) -> None:
        self.transport.close()

    def settimeout(self, seconds: float | None) -> None:
        self.transport.settimeout(seconds)


class ShadowsocksPacketStream:
    """One UDP session through a Shadowsocks server: each ``send`` is a packet for
    ``address``:``port``, each ``recv`` the payload of a packet back (undecodable ones are
    dropped, as V2Ray drops them). No end of stream: the relay's idle timeout ends it."""

    __slots__ = ("sock", "method", "key", "address", "port")

    def __init__(self, sock: gevent.socket.socket, method: Method, key: bytes, address: str,
                 port: int) -> None:
        self.sock = sock
        self.method = method
        self.key = key
        self.address = address
        self.port = port

    def recv(self) -> bytes:
        while True:
            packet = self.sock.recv(RECV_SIZE)
            try:
                _, payload = decode_packet(self.method, self.key, packet)
            except ShadowsocksError:
                continue
            if payload:
                return payload

    def send(self, data: bytes | memoryview) -> None:
        self.sock.send(encode_packet(self.method, self.key, self.address, self.port, data))

    def close_write(self) -> None:
        """UDP has no half-close."""

    def close(self) -> None:
        self.sock.close()

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)
