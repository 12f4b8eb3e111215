"""The PROXY protocol header (HAProxy's, versions 1 and 2) in front of an accepted
connection, for ``acceptProxyProtocol``: a load balancer in front tells the client's address.

As V2Ray's listener (go-proxyproto) does, a connection that does not start with a PROXY
header is taken as it is; one that starts like a header and is not a valid one is refused.
The header is read with ``MSG_PEEK`` and then exactly its length consumed, so the socket is
left as a plain socket (the portal can still hand it to a sibling worker).
"""

from __future__ import annotations

import ipaddress
import socket

from gevent.socket import wait_read

from revproxy.net.stream import Prefixed, SocketStream, TunnelStream
from revproxy.transport.base import Address, TransportError

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107  # the longest version 1 line, CRLF included
PEEK = 4096


class ProxyHeaderError(ValueError):
    """Starts as a PROXY header, is not a valid one."""


def parse(data: bytes) -> tuple[int, Address | None] | None:
    """``(length of the header, the client's address or None)``; ``(0, None)`` when ``data``
    does not start with a PROXY header; None when more bytes are needed to tell."""
    if not data:
        return None
    if V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[:len(V1_PREFIX)]):
        return _parse_v1(data)
    return 0, None


def _parse_v1(data: bytes) -> tuple[int, Address | None] | None:
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            raise ProxyHeaderError("PROXY v1: no end of line within 107 bytes")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return end + 2, None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1: malformed line {data[:end][:60]!r}")
    try:
        source = ipaddress.ip_address(parts[2])
        ipaddress.ip_address(parts[3])
        ports = [int(p) for p in parts[4:6] if p.isdigit() and int(p) < 65536]
    except ValueError:
        raise ProxyHeaderError("PROXY v1: bad address") from None
    if len(ports) != 2 or source.version != (4 if parts[1] == "TCP4" else 6):
        raise ProxyHeaderError("PROXY v1: bad address or port")
    return end + 2, (str(source), ports[0])


def _parse_v2(data: bytes) -> tuple[int, Address | None] | None:
    if len(data) < 16:
        return None
    version_command, family = data[12], data[13]
    length = 16 + int.from_bytes(data[14:16], "big")
    if version_command >> 4 != 2 or version_command & 0xF > 1:
        raise ProxyHeaderError(f"PROXY v2: bad version/command 0x{version_command:02x}")
    if len(data) < length:
        return None
    if version_command & 0xF == 0:  # LOCAL: the balancer's own connection (health checks)
        return length, None
    body = data[16:length]
    if family >> 4 == 1 and len(body) >= 12:  # AF_INET
        return length, (str(ipaddress.IPv4Address(body[0:4])),
                        int.from_bytes(body[8:10], "big"))
    if family >> 4 == 2 and len(body) >= 36:  # AF_INET6
        return length, (str(ipaddress.IPv6Address(body[0:16])),
                        int.from_bytes(body[32:34], "big"))
    if family >> 4 in (1, 2):
        raise ProxyHeaderError("PROXY v2: address block too short")
    return length, None  # AF_UNSPEC, AF_UNIX: no address of use


def read_proxy_header(stream: SocketStream, peer: Address) -> tuple[TunnelStream, Address]:
    """Consume a PROXY header off an accepted connection; the stream and the peer it names."""
    sock = stream.sock
    while True:
        try:
            data = sock.recv(PEEK, socket.MSG_PEEK)
        except BlockingIOError:
            wait_read(sock.fileno())
            continue
        try:
            result = parse(data)
        except ProxyHeaderError as exc:
            raise TransportError(str(exc)) from None
        if not data or result == (0, None):
            return stream, peer
        if result is not None:
            length, address = result
            while length:  # the header is in the socket's buffer: this does not block
                length -= len(sock.recv(length))
            return stream, address or peer
        return _read_slowly(stream, peer)


def _read_slowly(stream: SocketStream, peer: Address) -> tuple[TunnelStream, Address]:
    """A header that came in pieces: read on, and give back what followed it."""
    buffer = b""
    while True:
        data = stream.recv()
        if not data:
            raise TransportError("closed inside its PROXY header")
        buffer += data
        try:
            result = parse(buffer)
        except ProxyHeaderError as exc:
            raise TransportError(str(exc)) from None
        if result is not None:
            length, address = result
            rest = buffer[length:]
            return (Prefixed(stream, rest) if rest else stream), address or peer
