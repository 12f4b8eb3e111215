"""Sans-IO pieces the proxy protocols share: ``ProtocolError`` and destination addresses as
they travel on the wire.

Two layouts carry an address:

- SOCKS5's, which Shadowsocks borrows: ``type | address | port``, type 1 = IPv4, 3 = domain,
  4 = IPv6 (Shadowsocks masks the type with 0x0F, a relic of its one-time-auth flag);
- VMess's, which VLESS borrows: ``port | type | address``, type 1 = IPv4, 2 = domain, 3 = IPv6.

A domain is ``u8 length | bytes``; the port is big-endian. Decoding follows V2Ray 4.34
(common/protocol/address.go): a domain that reads as an IP literal becomes that IP, any other
must consist of letters, digits, ``-``, ``.`` and ``_``; IPv4-mapped IPv6 becomes IPv4.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

_U16 = struct.Struct(">H")
_DOMAIN_CHARS = re.compile(rb"[0-9A-Za-z._-]+")
MAX_DOMAIN = 255


class ProtocolError(ValueError):
    """The peer sent bytes its protocol does not allow; the connection should end quietly."""


class AddressError(ProtocolError):
    """An address that cannot be read or written."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a protocol puts the port and which type byte means which family."""

    ipv4: int
    domain: int
    ipv6: int
    port_first: bool
    type_mask: int = 0xFF


SOCKS = Layout(ipv4=1, domain=3, ipv6=4, port_first=False)
SHADOWSOCKS = Layout(ipv4=1, domain=3, ipv6=4, port_first=False, type_mask=0x0F)
VMESS = Layout(ipv4=1, domain=2, ipv6=3, port_first=True)


def ip_text(address: str) -> str | None:
    """The canonical text of an IP literal (brackets allowed around IPv6), or None."""
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def encode_address(layout: Layout, address: str, port: int) -> bytes:
    """``address`` (IP text or domain) and ``port`` in ``layout``."""
    if not 0 <= port <= 0xFFFF:
        raise AddressError(f"port {port} out of range")
    ip = ip_text(address)
    if ip is not None:
        packed = ipaddress.ip_address(ip).packed
        body = bytes((layout.ipv4 if len(packed) == 4 else layout.ipv6,)) + packed
    else:
        try:
            name = address.encode("ascii")
        except UnicodeEncodeError:
            raise AddressError(f"domain {address!r} is not ASCII") from None
        if not 0 < len(name) <= MAX_DOMAIN:
            raise AddressError(f"domain of {len(name)} bytes cannot be sent")
        body = bytes((layout.domain, len(name))) + name
    return _U16.pack(port) + body if layout.port_first else body + _U16.pack(port)


def decode_address(layout: Layout, data: bytes | bytearray | memoryview,
                   pos: int = 0) -> tuple[str, int, int] | None:
    """(address, port, end offset) read from ``data`` at ``pos``, or None while ``data`` ends
    too early. Raises ``AddressError`` for an unknown type or an invalid domain."""
    start = pos
    if layout.port_first:
        if len(data) < pos + 2:
            return None
        pos += 2
    if len(data) <= pos:
        return None
    kind = data[pos] & layout.type_mask
    pos += 1
    if kind == layout.ipv4:
        size = 4
    elif kind == layout.ipv6:
        size = 16
    elif kind == layout.domain:
        if len(data) <= pos:
            return None
        size = data[pos]
        pos += 1
    else:
        raise AddressError(f"unknown address type {kind}")
    if len(data) < pos + size + (0 if layout.port_first else 2):
        return None
    raw = bytes(data[pos:pos + size])
    pos += size
    if kind == layout.domain:
        address = _domain(raw)
    else:
        address = ip_text(str(ipaddress.ip_address(raw))) or ""
    if layout.port_first:
        (port,) = _U16.unpack_from(data, start)
    else:
        (port,) = _U16.unpack_from(data, pos)
        pos += 2
    return address, port, pos


def _domain(raw: bytes) -> str:
    if not raw:
        raise AddressError("empty domain")
    if raw[:1] == b"[" or raw[:1].isdigit():
        ip = ip_text(raw.decode("latin-1"))
        if ip is not None:
            return ip
    if not _DOMAIN_CHARS.fullmatch(raw):
        raise AddressError(f"invalid domain {raw[:64]!r}")
    return raw.decode("ascii")
