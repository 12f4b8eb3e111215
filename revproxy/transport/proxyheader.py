"""Writing a PROXY protocol header (HAProxy's, version 1 text or version 2 binary), sans-IO:
what a portal with ``proxyProtocol: 1|2`` puts in front of each visitor's bytes, so the
backend behind any bridge (stock V2Ray included: it relays the bytes unchanged) learns the
visitor's address. ``transport/proxyprotocol.py`` reads the same headers.

Addresses are (IP text, port); both ends must be of one family. Anything else (a source
that is not an IP address, mixed families) gives version 1's ``PROXY UNKNOWN`` or version
2's LOCAL command, which tell the backend to use the connection's own addresses.
"""

from __future__ import annotations

import ipaddress

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY, _V2_LOCAL = 0x21, 0x20  # version 2 with command PROXY / LOCAL
_TCP4, _TCP6 = 0x11, 0x21  # AF_INET / AF_INET6, STREAM

Address = tuple[str, int]


def split_address(text: str) -> Address | None:
    """"1.2.3.4:5", "[::1]:5" or "::1:5" (as sessions write it) as (IP, port); None if it is
    not an IP address and port."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def _family(source: Address, destination: Address
            ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                       ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """Both addresses as IP addresses of one family; an IPv4 visitor on an IPv6 socket
    (::ffff:a.b.c.d) is written as IPv4. None if that cannot be."""
    try:
        pair = [ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])]
    except ValueError:
        return None
    pair = [getattr(ip, "ipv4_mapped", None) or ip for ip in pair]
    if pair[0].version != pair[1].version:
        return None
    return pair[0], pair[1]


def encode(version: int, source: Address | None, destination: Address | None) -> bytes:
    """The header saying a TCP connection came from ``source`` to ``destination``."""
    if version not in (1, 2):
        raise ValueError(f"PROXY protocol version {version}: 1 or 2")
    pair = _family(source, destination) if source and destination else None
    if version == 1:
        if pair is None:
            return b"PROXY UNKNOWN\r\n"
        src, dst = pair
        assert source is not None and destination is not None
        name = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {name} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")
    if pair is None:
        return V2_SIGNATURE + bytes([_V2_LOCAL, 0]) + (0).to_bytes(2, "big")
    src, dst = pair
    assert source is not None and destination is not None
    body = (src.packed + dst.packed + source[1].to_bytes(2, "big")
            + destination[1].to_bytes(2, "big"))
    family = _TCP4 if src.version == 4 else _TCP6
    return V2_SIGNATURE + bytes([_V2_PROXY, family]) + len(body).to_bytes(2, "big") + body
