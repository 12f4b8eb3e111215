"""Tests for VMess key material: cmd key, nested-HMAC KDF (V2Ray's vector and an independent
HMAC-module construction), AuthID sealing/opening, and the SHAKE128 streams."""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
import zlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proxy.vmess.crypto import (
    PyShake128,
    ShakeStream,
    User,
    chacha20_key,
    cmd_key,
    kdf,
    kdf16,
    open_auth_id,
    seal_auth_id,
)

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def test_cmd_key_is_md5_of_uuid_and_salt() -> None:
    expected = hashlib.md5(uuid.UUID(UID).bytes + b"c48619fe-8f02-49e0-b9e9-edf763e17e21").digest()
    assert cmd_key(UID) == expected
    assert cmd_key(uuid.UUID(UID)) == expected
    assert cmd_key(UID.upper()) == expected
    assert len(expected) == 16


def test_cmd_key_rejects_non_uuid() -> None:
    with pytest.raises(ValueError):
        cmd_key("not-a-uuid")


def test_kdf_matches_v2ray_vector() -> None:
    # v2fly/v2ray-core v5 proxy/vmess/aead/kdf_test.go TestKDFValue
    got = kdf(
        b"Demo Key for KDF Value Test",
        b"Demo Path for KDF Value Test",
        b"Demo Path for KDF Value Test2",
        b"Demo Path for KDF Value Test3",
    )
    assert got.hex() == "53e9d7e1bd7bd25022b71ead07d8a596efc8a845c7888652fd684b4903dc8892"


def test_kdf_without_path_is_plain_hmac_sha256() -> None:
    key = b"some key material"
    assert kdf(key) == hmac.new(b"VMess AEAD KDF", key, hashlib.sha256).digest()


class _HashFromHmac:
    """Adapts an HMAC "factory" to hashlib's interface so Python's hmac module can nest it."""

    digest_size = 32
    block_size = 64

    def __init__(self, make: object, data: bytes = b"") -> None:
        self._make = make
        self._h = make()  # type: ignore[operator]
        self._h.update(data)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()

    def copy(self) -> _HashFromHmac:
        clone = _HashFromHmac.__new__(_HashFromHmac)
        clone._make = self._make
        clone._h = self._h.copy()
        return clone


def _reference_kdf(key: bytes, *path: bytes) -> bytes:
    """The KDF built from Python's hmac module: each path level's hash is the level below."""

    def level(keys: tuple[bytes, ...]) -> object:
        if not keys:
            return lambda: hmac.new(b"VMess AEAD KDF", digestmod=hashlib.sha256)
        below = level(keys[:-1])
        return lambda: hmac.new(keys[-1], digestmod=lambda d=b"": _HashFromHmac(below, d))

    h = level(path)()  # type: ignore[operator]
    h.update(key)
    return h.digest()


@given(
    st.binary(max_size=100),
    st.lists(st.binary(max_size=90), max_size=4),
)
def test_kdf_matches_reference_construction(key: bytes, path: list[bytes]) -> None:
    assert kdf(key, *path) == _reference_kdf(key, *path)
    assert kdf16(key, *path) == kdf(key, *path)[:16]


def test_chacha20_key() -> None:
    k = bytes(range(16))
    first = hashlib.md5(k).digest()
    assert chacha20_key(k) == first + hashlib.md5(first).digest()


def test_user_attributes() -> None:
    u = User(UID.upper(), email="a@b")
    assert u.id == UID
    assert u.cmd_key == cmd_key(UID)
    assert u.email == "a@b"
    assert UID in repr(u)


def _decrypt_auth_id(key: bytes, auth_id: bytes) -> bytes:
    aes_key = kdf16(key, b"AES Auth ID Encryption")
    return Cipher(algorithms.AES(aes_key), modes.ECB()).decryptor().update(auth_id)


def test_auth_id_layout() -> None:
    key = cmd_key(UID)
    auth_id = seal_auth_id(key, 1_700_000_000, b"\x01\x02\x03\x04")
    plain = _decrypt_auth_id(key, auth_id)
    assert plain[:8] == struct.pack(">q", 1_700_000_000)
    assert plain[8:12] == b"\x01\x02\x03\x04"
    assert plain[12:] == struct.pack(">I", zlib.crc32(plain[:12]))


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(min_size=4, max_size=4))
def test_auth_id_round_trip(now: int, rand4: bytes) -> None:
    user = User(UID)
    assert open_auth_id(user, seal_auth_id(user.cmd_key, now, rand4)) == now


def test_auth_id_is_randomised() -> None:
    key = cmd_key(UID)
    assert seal_auth_id(key, 5) != seal_auth_id(key, 5)


def test_auth_id_rejects_bad_rand4() -> None:
    with pytest.raises(ValueError):
        seal_auth_id(cmd_key(UID), 1, b"abc")


@given(st.binary(min_size=16, max_size=16))
def test_open_auth_id_garbage(garbage: bytes) -> None:
    user = User(UID)
    plain = _decrypt_auth_id(user.cmd_key, garbage)
    expected = None
    if struct.unpack(">I", plain[12:])[0] == zlib.crc32(plain[:12]):
        expected = struct.unpack(">q", plain[:8])[0]
    assert open_auth_id(user, garbage) == expected


def test_open_auth_id_wrong_user_or_length() -> None:
    other = User(str(uuid.uuid4()))
    auth_id = seal_auth_id(cmd_key(UID), 1_700_000_000)
    assert open_auth_id(other, auth_id) is None
    assert open_auth_id(User(UID), auth_id[:15]) is None


@pytest.mark.parametrize("position", range(16))
def test_open_auth_id_any_flipped_bit_fails(position: int) -> None:
    user = User(UID)
    auth_id = bytearray(seal_auth_id(user.cmd_key, 1_700_000_000))
    auth_id[position] ^= 0x10
    assert open_auth_id(user, bytes(auth_id)) is None


@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_py_shake128_matches_hashlib(seed: bytes, reads: list[int]) -> None:
    xof = PyShake128(seed)
    out = b"".join(xof.squeeze(n) for n in reads)
    assert out == hashlib.shake_128(seed).digest(len(out))


@given(st.binary(min_size=16, max_size=16))
def test_shake_stream_native_and_pure_agree(seed: bytes) -> None:
    native = ShakeStream(seed)
    pure = ShakeStream(seed, pure_python=True)
    values = [native.next_u16() for _ in range(300)]
    assert values == [pure.next_u16() for _ in range(300)]
    stream = hashlib.shake_128(seed).digest(600)
    assert values == [int.from_bytes(stream[i : i + 2], "big") for i in range(0, 600, 2)]
