"""Legacy VMess requests (users with alter ids): the user hash, the CFB header, the response,
replays and garbage, without sockets."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proxy.vmess import legacy
from revproxy.proxy.vmess.body import request_body_reader, response_body_writer
from revproxy.proxy.vmess.crypto import User
from revproxy.proxy.vmess.header import (
    COMMAND_MUX,
    COMMAND_TCP,
    OPTION_CHUNK_MASKING,
    OPTION_CHUNK_STREAM,
    OPTION_GLOBAL_PADDING,
    SECURITY_AES128_GCM,
    SECURITY_LEGACY,
    SECURITY_NONE,
    HandshakeError,
    RequestDecoder,
    drain_sizes,
    is_insecure,
    response_body_key_iv,
    seal_response,
)
from revproxy.proxy.vmess.replay import MemoryReplayFilter

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"
NOW = 1_700_000_000
OPTION = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def header_plain(body_iv: bytes, body_key: bytes, *, command: int = COMMAND_TCP,
                 security: int = SECURITY_AES128_GCM, padding: int = 3,
                 address: bytes = b"\x02\x0bexample.com", port: int = 443) -> bytes:
    """A request header laid out as V2Ray's client writes it (encoding/client.go)."""
    plain = bytes((1,)) + body_iv + body_key + bytes((0x5A, OPTION, padding << 4 | security, 0,
                                                       command))
    if command != COMMAND_MUX:
        plain += struct.pack(">H", port) + address
    plain += os.urandom(padding)
    return plain + fnv1a32(plain).to_bytes(4, "big")


def decoder(alter: int = 4, now: float = NOW) -> tuple[RequestDecoder, User]:
    user = User(UID)
    users = legacy.LegacyUsers([(user, alter)])
    return RequestDecoder([user], MemoryReplayFilter(), now=lambda: now,
                          legacy_users=users), user


def request(alter_index: int = 2, ts: int = NOW, **fields: object) -> tuple[bytes, bytes, bytes]:
    key, iv = os.urandom(16), os.urandom(16)
    id_bytes = legacy.alter_ids(UID, 4)[alter_index]
    wire = legacy.seal_request(UID, id_bytes, ts, header_plain(iv, key, **fields))  # type: ignore[arg-type]
    return wire, key, iv


def test_alter_ids_chain_md5_with_v2rays_salt() -> None:
    ids = legacy.alter_ids(UID, 3)
    first = hashlib.md5(uuid.UUID(UID).bytes + b"16167dc8-16b6-4e6d-b8bb-65dd68113a81").digest()
    assert ids[0] == first
    assert ids[1] == hashlib.md5(first + b"16167dc8-16b6-4e6d-b8bb-65dd68113a81").digest()
    assert len(set(ids)) == 3


def test_user_hash_is_hmac_md5_of_the_time() -> None:
    id_bytes = legacy.alter_ids(UID, 1)[0]
    assert legacy.user_hash(id_bytes, NOW) == hmac.new(
        id_bytes, struct.pack(">Q", NOW), hashlib.md5).digest()


@pytest.mark.parametrize("skew", [-120, -30, 0, 29, 120])
def test_a_legacy_request_opens_within_the_time_window(skew: int) -> None:
    dec, user = decoder()
    wire, key, iv = request(ts=NOW + skew)
    header = dec.feed(wire + b"body")
    assert header is not None and header.legacy and dec.user is user
    assert (header.address, header.port, header.body_key, header.body_iv) == (
        "example.com", 443, key, iv)
    assert dec.rest == b"body"


@pytest.mark.parametrize("skew", [-121, 121, 3600])
def test_a_legacy_request_outside_the_window_is_refused(skew: int) -> None:
    dec, _ = decoder()
    wire, _, _ = request(ts=NOW + skew)
    with pytest.raises(HandshakeError, match="no user"):
        dec.feed(wire)


def test_the_window_moves_with_the_clock() -> None:
    clock = [float(NOW)]
    user = User(UID)
    users = legacy.LegacyUsers([(user, 2)])
    replay = MemoryReplayFilter()
    late, _, _ = request(alter_index=1, ts=NOW + 500)
    first = RequestDecoder([user], replay, now=lambda: clock[0], legacy_users=users)
    with pytest.raises(HandshakeError):
        first.feed(late)
    clock[0] = NOW + 450.0
    assert RequestDecoder([user], replay, now=lambda: clock[0],
                          legacy_users=users).feed(late) is not None
    assert len(users._hashes) == 2 * 241  # two alter ids; old seconds were forgotten


def test_users_without_alter_ids_take_no_legacy_request() -> None:
    user = User(UID)
    dec = RequestDecoder([user], MemoryReplayFilter(), now=lambda: NOW,
                         legacy_users=legacy.LegacyUsers([(user, 0)]))
    primary = uuid.UUID(UID).bytes
    wire = legacy.seal_request(UID, primary, NOW, header_plain(bytes(16), bytes(16)))
    with pytest.raises(HandshakeError, match="no user"):
        dec.feed(wire)


def test_byte_by_byte_and_every_address_kind() -> None:
    for address, expected in [(b"\x01\x0a\x00\x00\x01", "10.0.0.1"),
                              (b"\x03" + bytes(15) + b"\x01", "::1"),
                              (b"\x02\x01x", "x")]:
        dec, _ = decoder()
        wire, _, _ = request(address=address, padding=15)
        header = None
        for i in range(len(wire)):
            assert header is None
            header = dec.feed(wire[i:i + 1])
        assert header is not None and header.address == expected and dec.rest == b""


def test_the_mux_command_has_no_address() -> None:
    dec, _ = decoder()
    wire, _, _ = request(command=COMMAND_MUX)
    header = dec.feed(wire)
    assert header is not None and header.command == COMMAND_MUX


def test_a_replayed_legacy_request_is_refused() -> None:
    user = User(UID)
    users = legacy.LegacyUsers([(user, 4)])
    replay = MemoryReplayFilter()
    wire, _, _ = request()
    assert RequestDecoder([user], replay, now=lambda: NOW, legacy_users=users).feed(wire)
    again = RequestDecoder([user], replay, now=lambda: NOW + 5.0, legacy_users=users)
    with pytest.raises(HandshakeError, match="replayed"):
        again.feed(wire)


def test_a_corrupted_header_fails_its_checksum() -> None:
    dec, _ = decoder()
    wire, _, _ = request()
    with pytest.raises(HandshakeError):
        dec.feed(wire[:20] + bytes([wire[20] ^ 1]) + wire[21:])


def test_the_legacy_cfb_body_is_refused_clearly() -> None:
    dec, _ = decoder()
    wire, _, _ = request(security=SECURITY_LEGACY)
    with pytest.raises(HandshakeError, match="aes-128-cfb"):
        dec.feed(wire)


def test_insecure_securities() -> None:
    assert is_insecure(SECURITY_NONE) and is_insecure(SECURITY_LEGACY)
    assert not is_insecure(SECURITY_AES128_GCM)


def test_the_response_uses_md5_keys_and_a_cfb_header() -> None:
    dec, _ = decoder()
    wire, key, iv = request()
    header = dec.feed(wire)
    assert header is not None
    assert response_body_key_iv(header) == (hashlib.md5(key).digest(),
                                            hashlib.md5(iv).digest())
    assert legacy.open_response(key, iv, seal_response(header)) == bytes((0x5A, 0, 0, 0))
    # The body codecs work with the derived keys both ways.
    writer = response_body_writer(header)
    assert writer.seal(b"hello")
    assert request_body_reader(header).feed(b"") == []


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=400))
def test_garbage_is_refused_or_waits_never_crashes(garbage: bytes) -> None:
    dec, _ = decoder()
    try:
        assert dec.feed(garbage) is None
    except HandshakeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_a_matched_hash_with_garbage_after_it(tail: bytes) -> None:
    """The first 16 bytes are a valid user hash; what follows is random: the decoder refuses
    it, waits for more, or (rarely) opens it, and never raises anything else."""
    dec, _ = decoder()
    head = legacy.user_hash(legacy.alter_ids(UID, 4)[0], NOW)
    try:
        dec.feed(head + tail)
    except HandshakeError:
        pass


def test_the_drain_after_a_failed_handshake_depends_on_the_users_only() -> None:
    one = drain_sizes([User(UID)])
    assert drain_sizes([User(UID)]) == one  # another worker, another reload: the same
    other = drain_sizes([User("27848739-7e62-4138-9fd3-098a63964b6b")])
    assert other != one
    for base, spread in (one, other):
        assert 16 + 38 <= base < 16 + 38 + 3266 and 1 <= spread <= 64
