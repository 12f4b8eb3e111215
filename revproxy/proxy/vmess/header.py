"""VMess request and response headers, sans-IO: sealing on one side, incremental opening on the
other. AEAD both ways; a server also opens the legacy headers of users with alter ids (see
``legacy``). Wire-compatible with V2Ray 4.34 / v5 (proxy/vmess/aead, proxy/vmess/encoding)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import legacy
from .crypto import User, kdf, kdf16, open_auth_id, seal_auth_id
from .replay import MAX_TIME_SKEW, ReplayFilter

SECURITY_LEGACY = 1  # AES-128-CFB body: old clients only (V2Ray 4.34's cannot choose it)
SECURITY_AES128_GCM = 3
SECURITY_CHACHA20_POLY1305 = 4
SECURITY_NONE = 5
SECURITY_ZERO = 6  # v5 client setting only: travels as SECURITY_NONE without ChunkStream

OPTION_CHUNK_STREAM = 0x01
OPTION_CHUNK_MASKING = 0x04
OPTION_GLOBAL_PADDING = 0x08
OPTION_AUTH_LENGTH = 0x10

COMMAND_TCP = 1
COMMAND_UDP = 2
COMMAND_MUX = 3

MUX_ADDRESS = "v1.mux.cool"  # what V2Ray's server reports for the Mux command (no address on wire)

_WIRE_SECURITIES = (SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305, SECURITY_NONE)
_SECURITY_NAMES = {
    "auto": SECURITY_AES128_GCM,  # what V2Ray picks on x86-64 / arm64
    "aes-128-gcm": SECURITY_AES128_GCM,
    "chacha20-poly1305": SECURITY_CHACHA20_POLY1305,
    "none": SECURITY_NONE,
    "zero": SECURITY_ZERO,
}

_ADDR_IPV4 = 1
_ADDR_DOMAIN = 2
_ADDR_IPV6 = 3
_VALID_DOMAIN = re.compile(rb"[0-9A-Za-z._-]+")
_VERSION = 1
_FIXED_LEN = 38  # version, IV, key, response auth, option, padding|security, reserved, command
_AUTH_ID_LEN = 16
_SEALED_LEN_LEN = 18  # u16 + GCM tag
_NONCE_LEN = 8
_TAG = 16
_PREAMBLE = _AUTH_ID_LEN + _SEALED_LEN_LEN + _NONCE_LEN
_MAX_LEGACY_HEADER = _FIXED_LEN + 2 + 2 + 255 + 15 + 4  # a domain address, full padding
_U16 = struct.Struct(">H")

_SALT_LEN_KEY = b"VMess Header AEAD Key_Length"
_SALT_LEN_NONCE = b"VMess Header AEAD Nonce_Length"
_SALT_KEY = b"VMess Header AEAD Key"
_SALT_NONCE = b"VMess Header AEAD Nonce"
_SALT_RESP_LEN_KEY = b"AEAD Resp Header Len Key"
_SALT_RESP_LEN_IV = b"AEAD Resp Header Len IV"
_SALT_RESP_KEY = b"AEAD Resp Header Key"
_SALT_RESP_IV = b"AEAD Resp Header IV"


class HandshakeError(Exception):
    """The peer's header is invalid; a server should drain and close without answering."""


def is_insecure(security: int) -> bool:
    """What ``disableInsecureEncryption`` refuses, as V2Ray does: no body encryption, or the
    legacy AES-CFB one (anything else never gets past the header parser)."""
    return security in (SECURITY_NONE, SECURITY_LEGACY)


def drain_sizes(users: Sequence[User]) -> tuple[int, int]:
    """After a failed handshake a server reads ``base + randrange(spread)`` bytes (counting
    what it read) before it closes, so a prober learns nothing from when it closes. Both are
    derived from the user ids, as V2Ray derives them from its "behaviour seed": every worker
    and every reload of one configuration behaves the same."""
    seed_mac = hmac.new(b"VMESSBSKDF", digestmod=hashlib.sha256)
    for user in users:
        seed_mac.update(user.cmd_key)
    seed = int.from_bytes(seed_mac.digest()[:8], "big")
    return seed % 3266 + _AUTH_ID_LEN + _FIXED_LEN, (seed >> 32) % 64 + 1


def security_from_name(name: str) -> int:
    """Map a V2Ray config security name (case-insensitive) to its security id."""
    try:
        return _SECURITY_NAMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown VMess security {name!r}") from None


def _fnv1a32(data: bytes | bytearray) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _ip_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """V2Ray treats an IPv4-mapped IPv6 address as the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse text as an IP address the way V2Ray's net.ParseAddress does (brackets allowed)."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:  # Go's net.ParseIP has no scoped addresses
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _encode_address(address: str) -> bytes:
    """addrType ‖ address for the request header; ValueError if V2Ray could not carry it."""
    ip = _parse_ip(address)
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        kind = _ADDR_IPV4 if ip.version == 4 else _ADDR_IPV6
        return bytes((kind,)) + ip.packed
    raw = address.encode("ascii", "replace")
    if not 0 < len(raw) < 256 or not _VALID_DOMAIN.fullmatch(raw):
        raise ValueError(f"address {address!r} is not an IP or a valid domain of 1-255 bytes")
    return bytes((_ADDR_DOMAIN, len(raw))) + raw


def _decode_address(buf: bytes, pos: int) -> tuple[str, int]:
    """Read addrType ‖ address at pos; returns (text, position after it)."""
    if pos >= len(buf):
        raise HandshakeError("header truncated before the address")
    kind = buf[pos]
    pos += 1
    if kind == _ADDR_IPV4:
        end = pos + 4
        if end > len(buf):
            raise HandshakeError("header truncated in an IPv4 address")
        return str(ipaddress.IPv4Address(buf[pos:end])), end
    if kind == _ADDR_IPV6:
        end = pos + 16
        if end > len(buf):
            raise HandshakeError("header truncated in an IPv6 address")
        return _ip_text(ipaddress.IPv6Address(buf[pos:end])), end
    if kind != _ADDR_DOMAIN:
        raise HandshakeError(f"unknown address type {kind}")
    if pos >= len(buf) or buf[pos] == 0:
        raise HandshakeError("empty or truncated domain")
    end = pos + 1 + buf[pos]
    if end > len(buf):
        raise HandshakeError("header truncated in a domain")
    raw = buf[pos + 1 : end]
    if not raw.isascii():
        raise HandshakeError(f"invalid domain {raw!r}")
    if raw[:1] == b"[" or raw[:1].isdigit():  # V2Ray reads IP literals sent as domains as IPs
        ip = _parse_ip(raw.decode("ascii"))
        if ip is not None:
            return _ip_text(ip), end
    if not _VALID_DOMAIN.fullmatch(raw):
        raise HandshakeError(f"invalid domain {raw!r}")
    return raw.decode("ascii"), end


@dataclass(frozen=True)
class RequestHeader:
    """A decoded (or to-be-sealed) VMess request. `security` is the wire value (3, 4 or 5);
    `address` is dotted IPv4, IPv6 text or a domain; for COMMAND_MUX it is MUX_ADDRESS, port 0.
    `legacy`: it came in a legacy (alter id) request, which changes the response's keys."""

    command: int
    address: str
    port: int
    security: int
    option: int
    body_key: bytes
    body_iv: bytes
    response_auth: int
    legacy: bool = False

    def __post_init__(self) -> None:
        if self.command not in (COMMAND_TCP, COMMAND_UDP, COMMAND_MUX):
            raise ValueError(f"unknown command {self.command}")
        if self.security not in _WIRE_SECURITIES:
            raise ValueError(f"security {self.security} cannot go on the wire")
        if not 0 <= self.port <= 0xFFFF or not 0 <= self.option <= 0xFF:
            raise ValueError("port or option out of range")
        if not 0 <= self.response_auth <= 0xFF:
            raise ValueError("response_auth must be one byte")
        if len(self.body_key) != 16 or len(self.body_iv) != 16:
            raise ValueError("body key and IV must be 16 bytes")
        if self.option & OPTION_GLOBAL_PADDING and not self.option & OPTION_CHUNK_MASKING:
            raise ValueError("GlobalPadding needs ChunkMasking")  # V2Ray refuses it too


def new_request_header(
    command: int,
    address: str,
    port: int,
    security: int,
    *,
    authenticated_length: bool = False,
) -> RequestHeader:
    """A fresh request with random body key/IV/response auth and the options a V2Ray client
    sets for `security`. SECURITY_ZERO yields SECURITY_NONE without ChunkStream, as v5 sends it."""
    option = OPTION_CHUNK_STREAM
    if security in _WIRE_SECURITIES:
        option |= OPTION_CHUNK_MASKING
    if security in (SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305):
        option |= OPTION_GLOBAL_PADDING
    if security == SECURITY_ZERO:
        security = SECURITY_NONE
        option &= ~(OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING)
    if authenticated_length:
        option |= OPTION_AUTH_LENGTH
    if command == COMMAND_MUX:
        address, port = MUX_ADDRESS, 0
    else:
        ip = _parse_ip(address)
        if ip is not None:
            address = _ip_text(ip)
    rand = os.urandom(33)
    return RequestHeader(
        command=command,
        address=address,
        port=port,
        security=security,
        option=option,
        body_key=rand[:16],
        body_iv=rand[16:32],
        response_auth=rand[32],
    )


def _gcm_open(aead: AESGCM, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
    try:
        return aead.decrypt(nonce, data, aad)
    except InvalidTag:
        raise HandshakeError("header authentication failed") from None


def _request_length_cipher(cmd_key: bytes, auth_id: bytes, nonce: bytes) -> tuple[AESGCM, bytes]:
    key = kdf16(cmd_key, _SALT_LEN_KEY, auth_id, nonce)
    return AESGCM(key), kdf(cmd_key, _SALT_LEN_NONCE, auth_id, nonce)[:12]


def _request_payload_cipher(cmd_key: bytes, auth_id: bytes, nonce: bytes) -> tuple[AESGCM, bytes]:
    key = kdf16(cmd_key, _SALT_KEY, auth_id, nonce)
    return AESGCM(key), kdf(cmd_key, _SALT_NONCE, auth_id, nonce)[:12]


def seal_request(cmd_key: bytes, header: RequestHeader, now: int | None = None) -> bytes:
    """The whole AEAD request header: authID ‖ sealed length ‖ nonce ‖ sealed header, where the
    header carries 0-15 random padding bytes and an FNV-1a checksum."""
    padding = secrets.randbelow(16)
    plain = bytearray((_VERSION,))
    plain += header.body_iv
    plain += header.body_key
    plain += bytes(
        (header.response_auth, header.option, padding << 4 | header.security, 0, header.command)
    )
    if header.command != COMMAND_MUX:
        plain += _U16.pack(header.port)
        plain += _encode_address(header.address)
    plain += os.urandom(padding)
    plain += _fnv1a32(plain).to_bytes(4, "big")

    auth_id = seal_auth_id(cmd_key, int(time.time()) if now is None else now)
    nonce = os.urandom(_NONCE_LEN)
    length_aead, length_nonce = _request_length_cipher(cmd_key, auth_id, nonce)
    payload_aead, payload_nonce = _request_payload_cipher(cmd_key, auth_id, nonce)
    return b"".join(
        (
            auth_id,
            length_aead.encrypt(length_nonce, _U16.pack(len(plain)), auth_id),
            nonce,
            payload_aead.encrypt(payload_nonce, bytes(plain), auth_id),
        )
    )


def _legacy_header_length(plain: bytes) -> int | None:
    """How long a legacy header is, from its first decrypted bytes; None while more are needed.
    (An AEAD header comes with its length; a legacy one does not.)"""
    if len(plain) < _FIXED_LEN:
        return None
    padding, command = plain[35] >> 4, plain[37]
    pos = _FIXED_LEN
    if command in (COMMAND_TCP, COMMAND_UDP):
        if len(plain) < pos + 4:
            return None
        kind = plain[pos + 2]
        if kind == _ADDR_IPV4:
            pos += 3 + 4
        elif kind == _ADDR_IPV6:
            pos += 3 + 16
        elif kind == _ADDR_DOMAIN:
            pos += 4 + plain[pos + 3]
        else:
            raise HandshakeError(f"unknown address type {kind}")
    elif command != COMMAND_MUX:
        raise HandshakeError(f"unknown command {command}")
    end = pos + padding + 4
    return end if len(plain) >= end else None


def _parse_request(plain: bytes, *, from_legacy: bool = False) -> RequestHeader:
    """Parse an opened request header. Bytes after the checksum are ignored, as V2Ray does."""
    if len(plain) < _FIXED_LEN:
        raise HandshakeError("header too short")
    if plain[0] != _VERSION:
        raise HandshakeError(f"unknown header version {plain[0]}")
    padding, security, command = plain[35] >> 4, plain[35] & 0x0F, plain[37]
    pos = _FIXED_LEN
    if command == COMMAND_MUX:
        address, port = MUX_ADDRESS, 0
    elif command in (COMMAND_TCP, COMMAND_UDP):
        if pos + 2 > len(plain):
            raise HandshakeError("header truncated before the port")
        (port,) = _U16.unpack_from(plain, pos)
        address, pos = _decode_address(plain, pos + 2)
    else:
        raise HandshakeError(f"unknown command {command}")
    pos += padding
    if pos + 4 > len(plain):
        raise HandshakeError("header truncated before the checksum")
    if _fnv1a32(plain[:pos]) != int.from_bytes(plain[pos : pos + 4], "big"):
        raise HandshakeError("header checksum mismatch")
    if security in (0, SECURITY_LEGACY):
        raise HandshakeError("the legacy aes-128-cfb body is not supported")
    if security not in _WIRE_SECURITIES:
        raise HandshakeError(f"unsupported security {security}")
    option = plain[34]
    if option & OPTION_GLOBAL_PADDING and not option & OPTION_CHUNK_MASKING:
        raise HandshakeError("GlobalPadding without ChunkMasking")
    return RequestHeader(
        command=command,
        address=address,
        port=port,
        security=security,
        option=option,
        body_key=plain[17:33],
        body_iv=plain[1:17],
        response_auth=plain[33],
        legacy=from_legacy,
    )


class RequestDecoder:
    """Server side: feed bytes until a RequestHeader comes out. Checks, in V2Ray's order: AuthID
    of a known user within ±120 s, replay, sealed length, sealed header, then its contents.
    When no AEAD user matches, ``legacy`` (the users with alter ids) may recognise a legacy
    request: its CFB header is opened and its body key and IV checked against replays.
    After a HandshakeError the caller should keep reading a while and close, never answer."""

    def __init__(
        self,
        users: Sequence[User],
        replay: ReplayFilter,
        now: Callable[[], float] = time.time,
        legacy_users: legacy.LegacyUsers | None = None,
    ) -> None:
        self._users = users
        self._replay = replay
        self._now = now
        self._legacy_users = legacy_users
        self._legacy_time: int | None = None  # the matched legacy request's time
        self._buf = bytearray()
        self._payload: tuple[AESGCM, bytes] | None = None
        self._sealed_len = 0
        self._header: RequestHeader | None = None
        self.user: User | None = None
        self.rest = b""

    def _match_user(self, auth_id: bytes) -> User:
        now = self._now()
        now_s = int(now)
        for user in self._users:
            ts = open_auth_id(user, auth_id)
            if ts is not None and ts >= 0 and abs(ts - now_s) <= MAX_TIME_SKEW:
                if not self._replay.check_and_add(auth_id, now):
                    raise HandshakeError("replayed AuthID")
                return user
        if self._legacy_users:
            found = self._legacy_users.match(auth_id, now)
            if found is not None:
                self._legacy_time = found[1]
                return found[0]
        raise HandshakeError("no user matches the AuthID (unknown user or clock skew)")

    def _feed_legacy(self, user: User, timestamp: int) -> RequestHeader | None:
        buf = self._buf
        sealed = bytes(buf[_AUTH_ID_LEN:_AUTH_ID_LEN + _MAX_LEGACY_HEADER])
        # Decrypting from the start each time is cheap (the header is a few hundred bytes).
        plain = legacy.cfb(user.cmd_key, legacy.header_iv(timestamp)).decryptor().update(sealed)
        length = _legacy_header_length(plain)
        if length is None:
            return None
        header = _parse_request(plain[:length], from_legacy=True)
        key = legacy.session_key(user, header.body_key, header.body_iv)
        if not self._replay.check_and_add(key, self._now()):
            raise HandshakeError("replayed legacy request (same body key and IV)")
        self._header = header
        self.rest = bytes(buf[_AUTH_ID_LEN + length:])
        self._buf = bytearray()
        return header

    def feed(self, data: bytes | bytearray | memoryview) -> RequestHeader | None:
        """Add received bytes; the header once complete (then `rest` holds what followed it),
        None while more bytes are needed. Raises HandshakeError on anything invalid."""
        if self._header is not None:
            raise RuntimeError("request header already decoded; use .rest and a BodyReader")
        buf = self._buf
        buf += data
        if self.user is None:
            if len(buf) < _AUTH_ID_LEN:
                return None
            self.user = self._match_user(bytes(buf[:_AUTH_ID_LEN]))
        if self._legacy_time is not None:
            return self._feed_legacy(self.user, self._legacy_time)
        if self._payload is None:
            if len(buf) < _PREAMBLE:
                return None
            auth_id = bytes(buf[:_AUTH_ID_LEN])
            nonce = bytes(buf[_AUTH_ID_LEN + _SEALED_LEN_LEN : _PREAMBLE])
            length_aead, length_nonce = _request_length_cipher(self.user.cmd_key, auth_id, nonce)
            sealed_len = bytes(buf[_AUTH_ID_LEN : _AUTH_ID_LEN + _SEALED_LEN_LEN])
            (length,) = _U16.unpack(_gcm_open(length_aead, length_nonce, sealed_len, auth_id))
            self._sealed_len = length + _TAG
            self._payload = _request_payload_cipher(self.user.cmd_key, auth_id, nonce)
        end = _PREAMBLE + self._sealed_len
        if len(buf) < end:
            return None
        aead, nonce = self._payload
        plain = _gcm_open(aead, nonce, bytes(buf[_PREAMBLE:end]), bytes(buf[:_AUTH_ID_LEN]))
        self._header = _parse_request(plain)
        self.rest = bytes(buf[end:])
        self._buf = bytearray()
        return self._header


def response_body_key_iv(header: RequestHeader) -> tuple[bytes, bytes]:
    """Response-direction body key and IV: SHA256(request key)[:16], SHA256(request IV)[:16]
    (MD5 of each for a legacy request)."""
    if header.legacy:
        return legacy.response_key_iv(header.body_key, header.body_iv)
    return (
        hashlib.sha256(header.body_key).digest()[:16],
        hashlib.sha256(header.body_iv).digest()[:16],
    )


def _response_ciphers(header: RequestHeader) -> tuple[AESGCM, bytes, AESGCM, bytes]:
    key, iv = response_body_key_iv(header)
    return (
        AESGCM(kdf16(key, _SALT_RESP_LEN_KEY)),
        kdf(iv, _SALT_RESP_LEN_IV)[:12],
        AESGCM(kdf16(key, _SALT_RESP_KEY)),
        kdf(iv, _SALT_RESP_IV)[:12],
    )


def seal_response(header: RequestHeader) -> bytes:
    """Server: the response header (response auth, option 0, no command): AEAD-sealed without
    AAD, or AES-CFB-encrypted for a legacy request."""
    if header.legacy:
        key, iv = response_body_key_iv(header)
        return legacy.cfb(key, iv).encryptor().update(bytes((header.response_auth, 0, 0, 0)))
    length_aead, length_nonce, payload_aead, payload_nonce = _response_ciphers(header)
    plain = bytes((header.response_auth, 0, 0, 0))
    return length_aead.encrypt(length_nonce, _U16.pack(len(plain)), None) + payload_aead.encrypt(
        payload_nonce, plain, None
    )


class ResponseDecoder:
    """Client side: feed bytes until the response header is complete and verified. A command
    the server attaches (V2Ray's switch-account) is read past and ignored."""

    def __init__(self, header: RequestHeader) -> None:
        self._header = header
        self._ciphers = _response_ciphers(header)
        self._buf = bytearray()
        self._sealed_len: int | None = None
        self.done = False
        self.rest = b""

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Add received bytes; True once the header is complete (then `rest` holds what followed
        it). Raises HandshakeError on authentication failure or a wrong response auth byte."""
        if self.done:
            raise RuntimeError("response header already decoded; use .rest and a BodyReader")
        buf = self._buf
        buf += data
        length_aead, length_nonce, payload_aead, payload_nonce = self._ciphers
        if self._sealed_len is None:
            if len(buf) < _SEALED_LEN_LEN:
                return False
            plain_len = _gcm_open(length_aead, length_nonce, bytes(buf[:_SEALED_LEN_LEN]), None)
            self._sealed_len = _U16.unpack(plain_len)[0] + _TAG
        end = _SEALED_LEN_LEN + self._sealed_len
        if len(buf) < end:
            return False
        plain = _gcm_open(payload_aead, payload_nonce, bytes(buf[_SEALED_LEN_LEN:end]), None)
        if len(plain) < 4:
            raise HandshakeError("response header too short")
        if plain[0] != self._header.response_auth:
            raise HandshakeError("response auth mismatch")
        if plain[2] != 0 and len(plain) < 4 + plain[3]:
            raise HandshakeError("response command truncated")
        self.done = True
        self.rest = bytes(buf[end:])
        self._buf = bytearray()
        return True
