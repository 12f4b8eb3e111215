"""VMess AEAD key material: the user's cmd key, V2Ray's nested-HMAC KDF, the AuthID, and the
SHAKE128 stream used to mask chunk lengths. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import sys
import uuid
import zlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
_KDF_ROOT = hmac.new(b"VMess AEAD KDF", digestmod=hashlib.sha256)
_AUTH_ID_SALT = b"AES Auth ID Encryption"
_BLOCK = 64  # block size of SHA-256, and so of every HMAC level of the KDF
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_AUTH_ID = struct.Struct(">q4sI")


def cmd_key(user_id: str | uuid.UUID) -> bytes:
    """MD5(uuid bytes ‖ V2Ray's fixed salt): the 16-byte key every VMess AEAD step starts from."""
    u = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(user_id)
    return hashlib.md5(u.bytes + _CMD_KEY_SALT).digest()


def _nested_hmac(keys: tuple[bytes, ...], data: bytes) -> bytes:
    """HMAC keyed with keys[-1] whose hash function is _nested_hmac(keys[:-1]);
    the innermost level is HMAC-SHA256 keyed with "VMess AEAD KDF"."""
    if not keys:
        h = _KDF_ROOT.copy()
        h.update(data)
        return h.digest()
    inner = keys[:-1]
    key = keys[-1]
    if len(key) > _BLOCK:
        key = _nested_hmac(inner, key)
    key = key.ljust(_BLOCK, b"\0")
    digest = _nested_hmac(inner, key.translate(_IPAD) + data)
    return _nested_hmac(inner, key.translate(_OPAD) + digest)


def kdf(key: bytes, *path: bytes) -> bytes:
    """V2Ray's VMess AEAD KDF: 32 bytes of nested HMAC-SHA256 over key, one level per path item."""
    return _nested_hmac(path, bytes(key))


def kdf16(key: bytes, *path: bytes) -> bytes:
    """The first 16 bytes of kdf()."""
    return kdf(key, *path)[:16]


def chacha20_key(key: bytes) -> bytes:
    """Expand a 16-byte VMess body key to the 32-byte ChaCha20-Poly1305 key MD5(k) ‖ MD5(MD5(k))."""
    first = hashlib.md5(key).digest()
    return first + hashlib.md5(first).digest()


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(key), modes.ECB())


class User:
    """One VMess account; precomputes the cmd key and the AuthID decryptor the server needs.
    Not thread-safe (the decryptor context is reused), which suits one gevent hub per process."""

    __slots__ = ("id", "cmd_key", "email", "level", "_auth_id_decryptor")

    def __init__(self, user_id: str, *, email: str | None = None, level: int = 0) -> None:
        u = uuid.UUID(str(user_id))
        self.id = str(u)
        self.cmd_key = cmd_key(u)
        self.email = email
        self.level = level  # its policy level
        # ECB is stateless per block, so one never-finalized context serves every AuthID.
        self._auth_id_decryptor = _ecb(kdf16(self.cmd_key, _AUTH_ID_SALT)).decryptor()

    def __repr__(self) -> str:
        return f"User({self.id!r}, email={self.email!r})"

    def decrypt_auth_id(self, auth_id: bytes) -> bytes:
        """AES-128-ECB-decrypt one 16-byte AuthID with this user's AuthID key."""
        return self._auth_id_decryptor.update(auth_id)


def seal_auth_id(cmd_key: bytes, now: int, rand4: bytes | None = None) -> bytes:
    """AES-ECB(BE int64 now ‖ 4 random bytes ‖ CRC32 of those 12) under KDF16(cmd_key, salt)."""
    if rand4 is None:
        rand4 = os.urandom(4)
    if len(rand4) != 4:
        raise ValueError("rand4 must be 4 bytes")
    head = struct.pack(">q4s", now, rand4)
    plain = head + struct.pack(">I", zlib.crc32(head))
    return _ecb(kdf16(cmd_key, _AUTH_ID_SALT)).encryptor().update(plain)


def open_auth_id(user: User, auth_id: bytes) -> int | None:
    """The signed timestamp in auth_id if it decrypts under user's key to a valid CRC, else None."""
    if len(auth_id) != 16:
        return None
    plain = user.decrypt_auth_id(bytes(auth_id))
    timestamp, _, crc = _AUTH_ID.unpack(plain)
    if crc != zlib.crc32(plain[:12]):
        return None
    return timestamp


# --- SHAKE128 stream ---------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_RATE = 168  # SHAKE128 rate in bytes (21 lanes)
_LANES = struct.Struct("<21Q")


def _round_constants() -> tuple[int, ...]:
    """The 24 Keccak-f[1600] iota constants, from the LFSR of FIPS 202 §3.2.5."""
    out = []
    r = 1
    for _ in range(24):
        rc = 0
        for j in range(7):
            if r & 1:
                rc |= 1 << ((1 << j) - 1)
            r = ((r << 1) ^ 0x71) & 0xFF if r & 0x80 else r << 1
        out.append(rc)
    return tuple(out)


def _rho_pi() -> tuple[tuple[int, int, int], ...]:
    """(source lane, destination lane, rotation) for the combined rho and pi steps."""
    steps = [(0, 0, 0)]
    x, y = 1, 0
    for t in range(24):
        x, y, src = y, (2 * x + 3 * y) % 5, x + 5 * y
        steps.append((src, x + 5 * y, ((t + 1) * (t + 2) // 2) % 64))
    return tuple(steps)


_RC = _round_constants()
_RHO_PI = _rho_pi()


def _keccak_f1600(a: list[int]) -> None:
    """Permute the 25-lane Keccak state in place."""
    b = [0] * 25
    for rc in _RC:
        c0 = a[0] ^ a[5] ^ a[10] ^ a[15] ^ a[20]
        c1 = a[1] ^ a[6] ^ a[11] ^ a[16] ^ a[21]
        c2 = a[2] ^ a[7] ^ a[12] ^ a[17] ^ a[22]
        c3 = a[3] ^ a[8] ^ a[13] ^ a[18] ^ a[23]
        c4 = a[4] ^ a[9] ^ a[14] ^ a[19] ^ a[24]
        d = (
            c4 ^ (((c1 << 1) | (c1 >> 63)) & _M64),
            c0 ^ (((c2 << 1) | (c2 >> 63)) & _M64),
            c1 ^ (((c3 << 1) | (c3 >> 63)) & _M64),
            c2 ^ (((c4 << 1) | (c4 >> 63)) & _M64),
            c3 ^ (((c0 << 1) | (c0 >> 63)) & _M64),
        )
        for src, dst, rot in _RHO_PI:
            v = a[src] ^ d[src % 5]
            b[dst] = ((v << rot) | (v >> (64 - rot))) & _M64 if rot else v
        for y in range(0, 25, 5):
            b0, b1, b2, b3, b4 = b[y], b[y + 1], b[y + 2], b[y + 3], b[y + 4]
            a[y] = b0 ^ (~b1 & b2)
            a[y + 1] = b1 ^ (~b2 & b3)
            a[y + 2] = b2 ^ (~b3 & b4)
            a[y + 3] = b3 ^ (~b4 & b0)
            a[y + 4] = b4 ^ (~b0 & b1)
        a[0] ^= rc


class PyShake128:
    """Pure-Python streaming SHAKE128 (absorb once, squeeze forever), for cryptography < 45 where
    no streaming XOF exists; hashlib can only recompute the whole output from the start."""

    def __init__(self, data: bytes) -> None:
        padded = bytearray(data)
        padded.append(0x1F)
        padded.extend(bytes(-len(padded) % _RATE))
        padded[-1] |= 0x80
        self._state = [0] * 25
        for off in range(0, len(padded), _RATE):
            for i, lane in enumerate(_LANES.unpack_from(padded, off)):
                self._state[i] ^= lane
            _keccak_f1600(self._state)
        self._out = _LANES.pack(*self._state[:21])
        self._pos = 0

    def squeeze(self, n: int) -> bytes:
        """The next n bytes of output."""
        parts = []
        while n > 0:
            if self._pos == _RATE:
                _keccak_f1600(self._state)
                self._out = _LANES.pack(*self._state[:21])
                self._pos = 0
            take = min(n, _RATE - self._pos)
            parts.append(self._out[self._pos : self._pos + take])
            self._pos += take
            n -= take
        return b"".join(parts)


def _new_xof(seed: bytes) -> hashes.XOFHash | PyShake128:
    """cryptography's native streaming SHAKE128 when it has one (>= 45, OpenSSL >= 3.3)."""
    try:
        xof = hashes.XOFHash(hashes.SHAKE128(digest_size=sys.maxsize))
    except (AttributeError, UnsupportedAlgorithm):
        return PyShake128(seed)
    xof.update(seed)
    return xof


class ShakeStream:
    """SHAKE128(seed) read as big-endian u16s: V2Ray's chunk length mask and padding source."""

    __slots__ = ("_xof", "_buf", "_pos")

    def __init__(self, seed: bytes, *, pure_python: bool = False) -> None:
        self._xof = PyShake128(seed) if pure_python else _new_xof(seed)
        self._buf = b""
        self._pos = 0

    def next_u16(self) -> int:
        """The next two bytes of the stream as a big-endian integer."""
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            buf = self._buf = self._xof.squeeze(_RATE)
            pos = 0
        self._pos = pos + 2
        return (buf[pos] << 8) | buf[pos + 1]
