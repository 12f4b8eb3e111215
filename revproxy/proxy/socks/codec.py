"""SOCKS, sans-IO: the server's handshake (SOCKS5 with no auth or username/password, SOCKS4
and 4a), the client's SOCKS5 handshake, and SOCKS5 UDP datagrams. Behaves as V2Ray 4.34's
proxy/socks/protocol.go:

- SOCKS5 CONNECT (and Tor's RESOLVE commands, served as CONNECT) is answered with success and
  the inbound's own address before the destination is dialed; UDP ASSOCIATE is answered with
  the configured ``ip`` (else a loopback client's own address, else the inbound's address) and
  the inbound's port when ``udp`` is on, "command not supported" otherwise; BIND too.
- A client that offers no acceptable method gets ``05 FF``; a bad password ``01 FF``.
- SOCKS4/4a: CONNECT only, and only without authentication.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from revproxy.proxy.wire import SOCKS, AddressError, ProtocolError, decode_address, encode_address

SOCKS4 = 4
SOCKS5 = 5
CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_UDP_ASSOCIATE = 0x03
CMD_TOR_RESOLVE = 0xF0
CMD_TOR_RESOLVE_PTR = 0xF1
AUTH_NONE = 0x00
AUTH_PASSWORD = 0x02
AUTH_NO_METHOD = 0xFF
STATUS_SUCCESS = 0x00
STATUS_GENERAL_FAILURE = 0x01
STATUS_COMMAND_NOT_SUPPORTED = 0x07
SOCKS4_GRANTED = 90
SOCKS4_REJECTED = 91
MAX_SOCKS4_FIELD = 512  # user id or 4a domain, up to its NUL
MAX_HANDSHAKE = 8 + 2 * MAX_SOCKS4_FIELD + 2  # the longest any step may wait for

_U16 = struct.Struct(">H")
_LOOPBACK = ("127.0.0.1", "::1")


class SocksError(ProtocolError):
    """A handshake that failed; ``reply`` is what to send before closing (maybe nothing)."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class SocksRequest:
    """What a client asked for: ``command`` "tcp" or "udp" (UDP ASSOCIATE), the destination
    (for UDP, where the client says it will send from), ``user`` if it authenticated."""

    version: int
    command: str
    address: str
    port: int
    user: str | None = None


def reply5(status: int, address: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes((SOCKS5, status, 0)) + encode_address(SOCKS, address, port)


def reply4(status: int) -> bytes:
    return bytes((0, status, 0, 0, 0, 0, 0, 0))


class ServerHandshake:
    """Server side: ``feed`` received bytes; it gives the bytes to send now, and sets
    ``request`` once the handshake is done (``rest``: bytes received after it). Failures raise
    ``SocksError`` with the reply to send. At most ``MAX_HANDSHAKE`` bytes are kept.

    ``accounts`` is consulted when ``password`` is set; ``gateway`` is the inbound's own
    address and port (the address in a success reply), ``udp_address`` the ``ip`` setting,
    ``client`` the client's IP (a loopback client gets its own address for UDP)."""

    def __init__(self, *, password: bool = False, accounts: Mapping[str, str] | None = None,
                 udp: bool = False, gateway: tuple[str, int] = ("0.0.0.0", 0),
                 udp_address: str | None = None, client: str = "") -> None:
        self.password = password
        self.accounts = dict(accounts or {})
        self.udp = udp
        self.gateway = gateway
        self.udp_address = udp_address
        self.client = client
        self._buffer = b""
        self._state = self._greeting
        self._user: str | None = None
        self.request: SocksRequest | None = None
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        if self.request is not None:
            raise ValueError("the handshake is over")
        self._buffer += data
        out = []
        while self.request is None:
            answer = self._state()
            if answer is None:
                break
            out.append(answer)
        if self.request is None and len(self._buffer) > MAX_HANDSHAKE:
            raise SocksError("handshake too long")
        return b"".join(out)

    def _take(self, size: int) -> bytes | None:
        if len(self._buffer) < size:
            return None
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def _greeting(self) -> bytes | None:
        if len(self._buffer) < 2:
            return None
        version = self._buffer[0]
        if version == SOCKS5:
            methods = self._buffer[1]
            head = self._take(2 + methods)
            if head is None:
                return None
            expected = AUTH_PASSWORD if self.password else AUTH_NONE
            if expected not in head[2:]:
                raise SocksError("no matching auth method", bytes((SOCKS5, AUTH_NO_METHOD)))
            self._state = self._credentials if self.password else self._request
            return bytes((SOCKS5, expected))
        if version == SOCKS4:
            if self.password:
                raise SocksError("socks 4 is not allowed when auth is required",
                                 reply4(SOCKS4_REJECTED))
            self._state = self._socks4
            return b""
        raise SocksError(f"unknown Socks version {version}")

    def _credentials(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        name_end = 2 + buffer[1]
        if len(buffer) < name_end + 1:
            return None
        end = name_end + 1 + buffer[name_end]
        if len(buffer) < end:
            return None
        user = buffer[2:name_end].decode("utf-8", "replace")
        password = buffer[name_end + 1:end].decode("utf-8", "replace")
        self._buffer = buffer[end:]
        if self.accounts.get(user) != password:
            raise SocksError("invalid username or password", b"\x01\xff")
        self._user = user
        self._state = self._request
        return b"\x01\x00"

    def _request(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        command = buffer[1]
        if command == CMD_UDP_ASSOCIATE and not self.udp:
            raise SocksError("UDP is not enabled", reply5(STATUS_COMMAND_NOT_SUPPORTED))
        if command == CMD_BIND:
            raise SocksError("TCP bind is not supported", reply5(STATUS_COMMAND_NOT_SUPPORTED))
        if command not in (CMD_CONNECT, CMD_TOR_RESOLVE, CMD_TOR_RESOLVE_PTR,
                           CMD_UDP_ASSOCIATE):
            raise SocksError(f"unknown command {command}",
                             reply5(STATUS_COMMAND_NOT_SUPPORTED))
        try:
            decoded = decode_address(SOCKS, buffer, 3)
        except AddressError as exc:
            raise SocksError(f"failed to read address: {exc}") from None
        if decoded is None:
            return None
        address, port, end = decoded
        self.rest, self._buffer = buffer[end:], b""
        if command == CMD_UDP_ASSOCIATE:
            self.request = SocksRequest(SOCKS5, "udp", address, port, self._user)
            return reply5(STATUS_SUCCESS, self._udp_reply_address(), self.gateway[1])
        self.request = SocksRequest(SOCKS5, "tcp", address, port, self._user)
        return reply5(STATUS_SUCCESS, *self.gateway)

    def _udp_reply_address(self) -> str:
        if self.udp_address:
            return self.udp_address
        if self.client in _LOOPBACK:
            return self.client
        return self.gateway[0]

    def _socks4(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < 8:
            return None
        user_end = buffer.find(b"\0", 8)
        if user_end < 0:
            if len(buffer) > 8 + MAX_SOCKS4_FIELD:
                raise SocksError("socks 4 user id too long")
            return None
        end = user_end + 1
        (port,) = _U16.unpack_from(buffer, 2)
        address = str(ipaddress.IPv4Address(buffer[4:8]))
        if buffer[4] == 0:  # SOCKS4a: 0.0.0.x, the domain follows the user id
            domain_end = buffer.find(b"\0", end)
            if domain_end < 0:
                if len(buffer) > end + MAX_SOCKS4_FIELD:
                    raise SocksError("socks 4a domain too long")
                return None
            try:
                address = _socks4a_domain(buffer[end:domain_end])
            except AddressError as exc:
                raise SocksError(f"failed to read domain for socks 4a: {exc}",
                                 reply4(SOCKS4_REJECTED)) from None
            end = domain_end + 1
        if buffer[1] != CMD_CONNECT:
            raise SocksError(f"unsupported command {buffer[1]}", reply4(SOCKS4_REJECTED))
        self.rest, self._buffer = buffer[end:], b""
        self.request = SocksRequest(SOCKS4, "tcp", address, port)
        return reply4(SOCKS4_GRANTED)


def _socks4a_domain(raw: bytes) -> str:
    decoded = decode_address(SOCKS, bytes((SOCKS.domain, len(raw))) + raw + b"\0\0")
    if decoded is None or len(raw) > 255:
        raise AddressError("domain too long")
    return decoded[0]


class ClientHandshake:
    """Client side of SOCKS5: ``start`` gives the greeting; ``feed`` the server's answers, it
    gives what to send next, until ``done``. ``bound`` is the address and port the server
    replied with; ``rest`` any bytes after the reply. Failures raise ``SocksError``."""

    def __init__(self, command: str, address: str, port: int,
                 account: tuple[str, str] | None = None) -> None:
        self.command = CMD_UDP_ASSOCIATE if command == "udp" else CMD_CONNECT
        self.address = address
        self.port = port
        self.account = account
        self._buffer = b""
        self._state = self._method
        self.done = False
        self.bound: tuple[str, int] | None = None
        self.rest = b""

    def start(self) -> bytes:
        method = AUTH_PASSWORD if self.account is not None else AUTH_NONE
        return bytes((SOCKS5, 1, method))

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = []
        while not self.done:
            answer = self._state()
            if answer is None:
                break
            out.append(answer)
        if not self.done and len(self._buffer) > 1024:
            raise SocksError("server reply too long")
        return b"".join(out)

    def _connect_request(self) -> bytes:
        return bytes((SOCKS5, self.command, 0)) + encode_address(SOCKS, self.address,
                                                                 self.port)

    def _method(self) -> bytes | None:
        if len(self._buffer) < 2:
            return None
        version, method = self._buffer[0], self._buffer[1]
        self._buffer = self._buffer[2:]
        if version != SOCKS5:
            raise SocksError(f"unexpected server version {version}")
        if self.account is not None and method == AUTH_PASSWORD:
            user, password = (part.encode() for part in self.account)
            if len(user) > 255 or len(password) > 255:
                raise SocksError("user or password longer than 255 bytes")
            self._state = self._auth_status
            return b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password
        if method != AUTH_NONE or self.account is not None:
            raise SocksError("auth method not supported by the server")
        self._state = self._reply
        return self._connect_request()

    def _auth_status(self) -> bytes | None:
        if len(self._buffer) < 2:
            return None
        status = self._buffer[1]
        self._buffer = self._buffer[2:]
        if status != 0:
            raise SocksError(f"server rejects account: {status}")
        self._state = self._reply
        return self._connect_request()

    def _reply(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        if buffer[0] != SOCKS5:
            raise SocksError(f"unexpected server version {buffer[0]}")
        if buffer[1] != STATUS_SUCCESS:
            raise SocksError(f"server rejects request: {buffer[1]}")
        try:
            decoded = decode_address(SOCKS, buffer, 3)
        except AddressError as exc:
            raise SocksError(f"bad reply address: {exc}") from None
        if decoded is None:
            return None
        address, port, end = decoded
        self.bound = (address, port)
        self.rest, self._buffer = buffer[end:], b""
        self.done = True
        return b""


def encode_udp(address: str, port: int, payload: bytes | memoryview) -> bytes:
    """A SOCKS5 UDP datagram: ``RSV(2) FRAG(0) destination payload``."""
    return b"\0\0\0" + encode_address(SOCKS, address, port) + payload


def decode_udp(datagram: bytes) -> tuple[str, int, bytes]:
    """(address, port, payload) of a SOCKS5 UDP datagram; fragments are refused, as V2Ray
    refuses them."""
    if len(datagram) < 5:
        raise SocksError("insufficient length of packet")
    if datagram[2] != 0:
        raise SocksError("discarding fragmented payload")
    try:
        decoded = decode_address(SOCKS, datagram, 3)
    except AddressError as exc:
        raise SocksError(f"failed to read UDP header: {exc}") from None
    if decoded is None:
        raise SocksError("truncated UDP header")
    address, port, end = decoded
    return address, port, datagram[end:]
