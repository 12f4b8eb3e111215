"""VLESS (v2fly, version 0, no flow), sans-IO: request and response headers, and the
length-prefixed packets of a UDP request. Wire-compatible with V2Ray 4.34
(proxy/vless/encoding).

Request: ``version 0 | user UUID (16) | addons length (u8) | addons | command |
port (u16) | type | address`` (no port or address for the Mux command); the body follows raw.
Response: ``version 0 | addons length (u8) | addons``, then the raw body. V2Ray 4.34 writes
no addons (length 0) and ignores what it reads in them, as does this module.
A UDP request's body, both ways, is a sequence of ``length (u16) | datagram``.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from revproxy.proxy.wire import VMESS, AddressError, ProtocolError, decode_address, encode_address

VERSION = 0
COMMAND_TCP = 1
COMMAND_UDP = 2
COMMAND_MUX = 3
MUX_ADDRESS = "v1.mux.cool"  # what V2Ray reports as the Mux command's destination
RESPONSE = bytes((VERSION, 0))
FALLBACK_MIN = 18  # V2Ray falls back at once when the first read is shorter than this
MAX_PACKET = 0xFFFF

_U16 = struct.Struct(">H")
_ID_END = 17  # version + UUID

U = TypeVar("U")


class VLESSError(ProtocolError):
    """An invalid header. ``fallback``: the bytes were no VLESS at all (wrong version or
    unknown user), so an inbound with fallbacks hands the connection to one, as V2Ray does."""

    def __init__(self, message: str, fallback: bool = False) -> None:
        super().__init__(message)
        self.fallback = fallback


@dataclass(frozen=True, slots=True)
class User:
    """A VLESS user: ``id`` is the UUID's 16 bytes; ``level`` its policy level."""

    id: bytes
    email: str | None = None
    level: int = 0

    @classmethod
    def from_uuid(cls, text: str, email: str | None = None, level: int = 0) -> User:
        return cls(uuid.UUID(text).bytes, email, level)


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded (or to-be-encoded) request; ``user_id`` is the 16-byte UUID."""

    user_id: bytes
    command: int
    address: str
    port: int


def encode_request(request: Request) -> bytes:
    """The request header (no addons), ready to be followed by the body."""
    if len(request.user_id) != 16:
        raise ValueError("a VLESS user id is 16 bytes")
    head = bytes((VERSION,)) + request.user_id + bytes((0, request.command))
    if request.command == COMMAND_MUX:
        return head
    if request.command not in (COMMAND_TCP, COMMAND_UDP):
        raise ValueError(f"unknown VLESS command {request.command}")
    return head + encode_address(VMESS, request.address, request.port)


class RequestDecoder(Generic[U]):
    """Server side: ``feed`` bytes until it gives a ``Request`` (None before). ``user`` is the
    matched entry of ``users`` (keyed by the 16-byte UUID), ``rest`` the body bytes that came
    with the header, ``received`` everything fed (what a fallback is given). The header is at
    most 533 bytes, so the buffer is bounded."""

    def __init__(self, users: Mapping[bytes, U]) -> None:
        self._users = users
        self._buffer = bytearray()
        self.user: U | None = None
        self.request: Request | None = None
        self.rest = b""

    @property
    def received(self) -> bytes:
        return bytes(self._buffer)

    def feed(self, data: bytes) -> Request | None:
        if self.request is not None:
            raise ValueError("the request was already decoded")
        buffer = self._buffer
        buffer += data
        if buffer[0:1] and buffer[0] != VERSION:
            raise VLESSError(f"invalid request version {buffer[0]}", fallback=True)
        if len(buffer) < _ID_END:
            return None
        if self.user is None:
            user = self._users.get(bytes(buffer[1:_ID_END]))
            if user is None:
                raise VLESSError("invalid request user id", fallback=True)
            self.user = user
        if len(buffer) <= _ID_END:
            return None
        pos = _ID_END + 1 + buffer[_ID_END]  # skip the addons
        if len(buffer) <= pos:
            return None
        command = buffer[pos]
        pos += 1
        if command == COMMAND_MUX:
            address, port = MUX_ADDRESS, 0
        elif command in (COMMAND_TCP, COMMAND_UDP):
            try:
                decoded = decode_address(VMESS, buffer, pos)
            except AddressError as exc:
                raise VLESSError(f"invalid request address: {exc}") from None
            if decoded is None:
                return None
            address, port, pos = decoded
        else:
            raise VLESSError(f"invalid request command {command}")
        self.rest = bytes(buffer[pos:])
        self.request = Request(bytes(buffer[1:_ID_END]), command, address, port)
        buffer.clear()
        return self.request


class ResponseDecoder:
    """Client side: ``feed`` until True (the response header is read); ``rest`` is the body
    that came with it."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> bool:
        buffer = self._buffer = self._buffer + data
        if buffer[0:1] and buffer[0] != VERSION:
            raise VLESSError(f"unexpected response version {buffer[0]}")
        if len(buffer) < 2 or len(buffer) < 2 + buffer[1]:
            return False
        self.rest = buffer[2 + buffer[1]:]
        self._buffer = b""
        self.done = True
        return True


def encode_packet(payload: bytes | memoryview) -> bytes:
    """One datagram of a UDP request's body."""
    if len(payload) > MAX_PACKET:
        raise ValueError(f"a VLESS packet carries at most {MAX_PACKET} bytes")
    return _U16.pack(len(payload)) + payload


class PacketDecoder:
    """The datagrams of a UDP request's body: ``feed`` gives those completed (empty ones are
    dropped, as V2Ray drops them). What it keeps between calls is less than one datagram."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        packets = []
        pos = 0
        while len(buffer) - pos >= 2:
            (size,) = _U16.unpack_from(buffer, pos)
            if len(buffer) - pos - 2 < size:
                break
            if size:  # an empty datagram would read as the end of the stream; V2Ray drops it
                packets.append(bytes(buffer[pos + 2:pos + 2 + size]))
            pos += 2 + size
        del buffer[:pos]
        return packets


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where an inbound sends what is no VLESS (V2Ray 4.34's ``fallbacks``): connections
    whose TLS ALPN is ``alpn`` ("" = any) and whose first request line has ``path`` ("" =
    any) go to ``dest`` over ``network`` ("tcp": "host:port"; "unix": a socket path, "@name"
    abstract), with a PROXY protocol header of version ``xver`` (0: none) first."""

    dest: str
    network: str = "tcp"
    alpn: str = ""
    path: str = ""
    xver: int = 0


FallbackTable = dict[str, dict[str, Fallback]]


def fallback_table(fallbacks: Iterable[Fallback]) -> FallbackTable:
    """ALPN -> path -> fallback; as V2Ray does, the entries for any ALPN also serve every
    other ALPN for the paths it does not name itself. (A later entry for the same ALPN and
    path replaces an earlier one.)"""
    table: FallbackTable = {}
    for fallback in fallbacks:
        table.setdefault(fallback.alpn, {})[fallback.path] = fallback
    default = table.get("")
    if default is not None:
        for alpn, paths in table.items():
            if alpn:
                for path, fallback in default.items():
                    paths.setdefault(path, fallback)
    return table


def pick_fallback(table: FallbackTable, alpn: str | None, first: bytes) -> Fallback | None:
    """The fallback for a connection with negotiated ``alpn`` whose first read was ``first``,
    chosen as V2Ray 4.34 chooses it; None if no entry applies."""
    key = ""
    if len(table) > 1 or "" not in table:
        key = alpn or ""
        if key not in table:
            key = ""
    paths = table.get(key)
    if paths is None:
        return None
    path = ""
    if (len(paths) > 1 or "" not in paths) and len(first) >= FALLBACK_MIN and first[4] != 42:
        # The request line's path: a "/" after a space at offset 4 to 8 ("GET /", "POST /"
        # ... "OPTIONS /"), up to the next space within the first 64 bytes; not HTTP/2's
        # "PRI *" preface (42 is "*").
        for i in range(4, 9):
            if first[i] == 0x2F and first[i - 1] == 0x20:
                for j in range(i + 1, min(len(first), 64)):
                    if first[j] in (0x0D, 0x0A):
                        break
                    if first[j] == 0x20:
                        path = first[i:j].decode("latin-1")
                        if path not in paths:
                            path = ""
                        break
                break
    return paths.get(path)


_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n\x21"


def proxy_header(xver: int, remote: tuple[str, int], local: tuple[str, int]) -> bytes:
    """The PROXY protocol header (version 1 or 2) V2Ray puts before a fallback's bytes."""
    source = ipaddress.ip_address(remote[0].split("%", 1)[0])
    target = ipaddress.ip_address(local[0].split("%", 1)[0])
    if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
        source = source.ipv4_mapped
    if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped is not None:
        target = target.ipv4_mapped
    ipv4 = source.version == 4 and target.version == 4
    if not ipv4:  # one family for both ends
        source = ipaddress.IPv6Address(source.packed if source.version == 6
                                       else b"\0" * 10 + b"\xff\xff" + source.packed)
        target = ipaddress.IPv6Address(target.packed if target.version == 6
                                       else b"\0" * 10 + b"\xff\xff" + target.packed)
    if xver == 1:
        family = "TCP4" if ipv4 else "TCP6"
        return f"PROXY {family} {source} {target} {remote[1]} {local[1]}\r\n".encode()
    if xver == 2:
        kind = b"\x11\x00\x0c" if ipv4 else b"\x21\x00\x24"  # family, STREAM, length
        return (_PROXY_V2_SIGNATURE + kind + source.packed + target.packed
                + struct.pack(">HH", remote[1], local[1]))
    return b""
