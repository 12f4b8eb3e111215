"""Shadowsocks AEAD ciphers, sans-IO, as V2Ray 4.34 has them (proxy/shadowsocks/config.go):
the methods, the key from the password, and the chunked stream and packet encryption.

- Key: OpenSSL's EVP_BytesToKey with MD5 and no salt: MD5(password), then
  MD5(previous ‖ password) until there are enough bytes.
- Each direction of a TCP connection and each UDP packet starts with a random salt as long
  as the key; the AEAD key is HKDF-SHA1(key, salt, info "ss-subkey").
- Nonces are 12-byte little-endian counters from 0, one step per seal or open.
- A TCP stream is a sequence of chunks ``seal(u16 length) | seal(payload)``, payload at most
  0x3FFF bytes. V2Ray reads a chunk with an empty payload as the end of the stream.
- A UDP packet is ``salt | seal(payload)`` with the nonce 0.

The method ``none`` (alias ``plain``) has no salt and no encryption. The stream ciphers
(``aes-256-cfb`` and the like) were dropped by V2Ray 4.x and are refused here too.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from revproxy.proxy.wire import ProtocolError

TAG = 16
MAX_PAYLOAD = 0x3FFF
_SIZE = struct.Struct(">H")
_SUBKEY_INFO = b"ss-subkey"

# What older Shadowsocks versions offered; named so a configuration gets a clear refusal.
STREAM_CIPHERS = frozenset((
    "aes-128-cfb", "aes-192-cfb", "aes-256-cfb", "aes-128-ctr", "aes-192-ctr", "aes-256-ctr",
    "camellia-128-cfb", "camellia-192-cfb", "camellia-256-cfb", "bf-cfb", "cast5-cfb",
    "des-cfb", "idea-cfb", "rc2-cfb", "rc4", "rc4-md5", "seed-cfb", "salsa20", "chacha20",
    "chacha20-ietf", "xchacha20",
))


class ShadowsocksError(ProtocolError):
    """Bytes that do not decrypt or do not frame: the peer has another key or is no client."""


class AEAD(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Method:
    """A cipher: ``key_size`` is also the salt's size; ``aead`` None for ``none``."""

    name: str
    key_size: int
    aead: Callable[[bytes], AEAD] | None

    @property
    def salt_size(self) -> int:
        return self.key_size if self.aead is not None else 0


AES_128_GCM = Method("aes-128-gcm", 16, AESGCM)
AES_256_GCM = Method("aes-256-gcm", 32, AESGCM)
CHACHA20_POLY1305 = Method("chacha20-poly1305", 32, ChaCha20Poly1305)
NONE = Method("none", 0, None)

# V2Ray's names (infra/conf/shadowsocks.go), compared in lower case.
METHODS: dict[str, Method] = {
    "aes-128-gcm": AES_128_GCM,
    "aead_aes_128_gcm": AES_128_GCM,
    "aes-256-gcm": AES_256_GCM,
    "aead_aes_256_gcm": AES_256_GCM,
    "chacha20-poly1305": CHACHA20_POLY1305,
    "chacha20-ietf-poly1305": CHACHA20_POLY1305,
    "aead_chacha20_poly1305": CHACHA20_POLY1305,
    "none": NONE,
    "plain": NONE,
}


def method_named(name: str) -> Method:
    """The method for a configuration's ``method``; ValueError names what is wrong."""
    found = METHODS.get(name.lower())
    if found is not None:
        return found
    if name.lower() in STREAM_CIPHERS:
        raise ValueError(f"stream cipher {name!r} is insecure and not supported (as in V2Ray "
                         "4.x): use aes-128-gcm, aes-256-gcm or chacha20-poly1305")
    raise ValueError(f"unknown cipher method {name!r}")


def password_key(password: str | bytes, size: int) -> bytes:
    """EVP_BytesToKey(MD5) of the password, ``size`` bytes."""
    secret = password.encode() if isinstance(password, str) else password
    key = b""
    digest = b""
    while len(key) < size:
        digest = hashlib.md5(digest + secret).digest()
        key += digest
    return key[:size]


def subkey(key: bytes, salt: bytes) -> bytes:
    """The AEAD key of one direction or packet: HKDF-SHA1(key, salt, "ss-subkey")."""
    return HKDF(hashes.SHA1(), len(key), salt, _SUBKEY_INFO).derive(key)


class _Nonce:
    """A 12-byte little-endian counter, from 0."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> bytes:
        nonce = self.value.to_bytes(12, "little")
        self.value += 1
        return nonce


class Sealer:
    """Encrypts one direction of a TCP stream: ``seal`` gives the bytes to send (the salt in
    front of the first ones)."""

    __slots__ = ("_aead", "_nonce", "_pending")

    def __init__(self, method: Method, key: bytes, salt: bytes | None = None) -> None:
        if method.aead is None:
            self._aead = None
            self._pending = b""
        else:
            salt = salt if salt is not None else os.urandom(method.salt_size)
            self._aead = method.aead(subkey(key, salt))
            self._pending = salt
        self._nonce = _Nonce()

    def seal(self, data: bytes | memoryview) -> bytes:
        out = [self._pending] if self._pending else []
        self._pending = b""
        aead = self._aead
        if aead is None:
            out.append(bytes(data))
            return b"".join(out)
        view = memoryview(data)
        nonce = self._nonce
        for start in range(0, len(view), MAX_PAYLOAD):
            piece = view[start:start + MAX_PAYLOAD]
            out.append(aead.encrypt(nonce.next(), _SIZE.pack(len(piece)), None))
            out.append(aead.encrypt(nonce.next(), bytes(piece), None))
        return b"".join(out)


class Opener:
    """Decrypts one direction of a TCP stream: ``feed`` gives the payloads completed. It
    keeps at most one chunk (16 KiB and its tags) between calls. ``finished`` is set by an
    empty chunk, V2Ray's end of stream."""

    __slots__ = ("_method", "_key", "_aead", "_nonce", "_buffer", "_size", "finished")

    def __init__(self, method: Method, key: bytes) -> None:
        self._method = method
        self._key = key
        self._aead: AEAD | None = None
        self._nonce = _Nonce()
        self._buffer = bytearray()
        self._size = -1  # the payload size of the chunk being read, once its length is open
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        method = self._method
        if method.aead is None:
            return [data] if data else []
        buffer = self._buffer
        buffer += data
        pos = 0
        if self._aead is None:
            if len(buffer) < method.salt_size:
                return []
            self._aead = method.aead(subkey(self._key, bytes(buffer[:method.salt_size])))
            pos = method.salt_size
        aead = self._aead
        nonce = self._nonce
        payloads = []
        while not self.finished:
            if self._size < 0:
                if len(buffer) - pos < 2 + TAG:
                    break
                size = _SIZE.unpack(_open(aead, nonce.next(), buffer[pos:pos + 2 + TAG]))[0]
                pos += 2 + TAG
                if size > MAX_PAYLOAD:
                    raise ShadowsocksError(f"chunk of {size} bytes (at most {MAX_PAYLOAD})")
                self._size = size
            end = pos + self._size + TAG
            if len(buffer) < end:
                break
            payload = _open(aead, nonce.next(), buffer[pos:end])
            pos = end
            self._size = -1
            if payload:
                payloads.append(payload)
            else:
                self.finished = True
        del buffer[:pos]
        return payloads


def _open(aead: AEAD, nonce: bytes, sealed: bytes | bytearray) -> bytes:
    try:
        return aead.decrypt(nonce, bytes(sealed), None)
    except InvalidTag:
        raise ShadowsocksError("authentication failed (wrong password or method?)") from None


def seal_packet(method: Method, key: bytes, plain: bytes, salt: bytes | None = None) -> bytes:
    """A UDP packet: salt ‖ AEAD(plain) with nonce 0 (``plain`` as is for ``none``)."""
    if method.aead is None:
        return plain
    salt = salt if salt is not None else os.urandom(method.salt_size)
    return salt + method.aead(subkey(key, salt)).encrypt(bytes(12), plain, None)


def open_packet(method: Method, key: bytes, packet: bytes) -> bytes:
    """The plaintext of a UDP packet."""
    if method.aead is None:
        return packet
    if len(packet) < method.salt_size + TAG:
        raise ShadowsocksError("packet too short")
    salt = packet[:method.salt_size]
    aead = method.aead(subkey(key, salt))
    return _open(aead, bytes(12), packet[method.salt_size:])
