"""Shadowsocks codec: key derivation against OpenSSL and RFC 5869, chunk framing and nonces,
request headers, UDP packets, and garbage/truncation fuzzing (no sockets)."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proxy.shadowsocks.codec import (
    Destination,
    RequestDecoder,
    decode_packet,
    encode_packet,
    encode_request,
)
from revproxy.proxy.shadowsocks.crypto import (
    AES_128_GCM,
    AES_256_GCM,
    CHACHA20_POLY1305,
    MAX_PAYLOAD,
    NONE,
    Opener,
    Sealer,
    ShadowsocksError,
    method_named,
    password_key,
    subkey,
)

AEADS = [AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305]
ALL = [*AEADS, NONE]


def hkdf_sha1(key: bytes, salt: bytes, info: bytes, size: int) -> bytes:
    """RFC 5869 written out, to check the library call against."""
    prk = hmac.new(salt, key, hashlib.sha1).digest()
    out, block, counter = b"", b"", 1
    while len(out) < size:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha1).digest()
        out += block
        counter += 1
    return out[:size]


def test_password_key_matches_openssl_bytes_to_key():
    # openssl enc -aes-256-cbc -k foobar -P -md md5 -nosalt
    assert password_key("foobar", 32).hex().upper() == (
        "3858F62230AC3C915F300C664312C63F568378529614D22DDB49237D2F60BFDF")
    assert password_key("foobar", 16) == hashlib.md5(b"foobar").digest()


def test_subkey_is_hkdf_sha1_with_ss_subkey():
    key, salt = os.urandom(32), os.urandom(32)
    assert subkey(key, salt) == hkdf_sha1(key, salt, b"ss-subkey", 32)


@pytest.mark.parametrize("name, method", [
    ("aes-128-gcm", AES_128_GCM), ("AEAD_AES_128_GCM", AES_128_GCM),
    ("aes-256-gcm", AES_256_GCM), ("chacha20-poly1305", CHACHA20_POLY1305),
    ("chacha20-ietf-poly1305", CHACHA20_POLY1305), ("none", NONE), ("plain", NONE)])
def test_method_names(name, method):
    assert method_named(name) is method


def test_stream_ciphers_and_unknown_methods_are_refused_clearly():
    with pytest.raises(ValueError, match="stream cipher 'aes-256-cfb' is insecure"):
        method_named("aes-256-cfb")
    with pytest.raises(ValueError, match="unknown cipher method 'rot13'"):
        method_named("rot13")


def test_chunks_are_laid_out_as_the_spec_says():
    key, salt = password_key("pw", 16), bytes(range(16))
    sealed = Sealer(AES_128_GCM, key, salt).seal(b"hello")
    assert sealed[:16] == salt
    aead = AESGCM(hkdf_sha1(key, salt, b"ss-subkey", 16))
    length = aead.decrypt((0).to_bytes(12, "little"), sealed[16:34], None)
    assert struct.unpack(">H", length) == (5,)
    assert aead.decrypt((1).to_bytes(12, "little"), sealed[34:], None) == b"hello"


def test_big_writes_are_split_at_0x3fff():
    key = password_key("pw", 32)
    sealer, opener = Sealer(AES_256_GCM, key), Opener(AES_256_GCM, key)
    data = os.urandom(3 * MAX_PAYLOAD + 5)
    sealed = sealer.seal(data)
    assert len(sealed) == 32 + 4 * (2 + 16 + 16) + len(data)
    assert b"".join(opener.feed(sealed)) == data


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
@settings(max_examples=30, deadline=None)
@given(pieces=st.lists(st.binary(max_size=3000), max_size=6), cuts=st.lists(
    st.integers(1, 200), min_size=1, max_size=20))
def test_stream_round_trip_in_any_slicing(method, pieces, cuts):
    key = password_key("secret", method.key_size)
    sealer, opener = Sealer(method, key), Opener(method, key)
    wire = b"".join(sealer.seal(piece) for piece in pieces)
    out, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out += opener.feed(wire[pos:pos + step])
        pos += step
        i += 1
    assert b"".join(out) == b"".join(pieces)


def test_wrong_password_fails_authentication():
    sealed = Sealer(AES_128_GCM, password_key("a", 16)).seal(b"data")
    with pytest.raises(ShadowsocksError, match="authentication failed"):
        Opener(AES_128_GCM, password_key("b", 16)).feed(sealed)


def test_an_oversized_chunk_is_refused():
    key, salt = password_key("pw", 16), os.urandom(16)
    aead = AESGCM(subkey(key, salt))
    bad = salt + aead.encrypt(bytes(12), struct.pack(">H", MAX_PAYLOAD + 1), None)
    with pytest.raises(ShadowsocksError, match="chunk of 16384 bytes"):
        Opener(AES_128_GCM, key).feed(bad)


def test_an_empty_chunk_ends_the_stream_as_in_v2ray():
    key, salt = password_key("pw", 16), os.urandom(16)
    aead = AESGCM(subkey(key, salt))
    nonce = [(n).to_bytes(12, "little") for n in range(4)]
    wire = (salt + aead.encrypt(nonce[0], b"\0\0", None) + aead.encrypt(nonce[1], b"", None)
            + b"ignored after the end")
    opener = Opener(AES_128_GCM, key)
    assert opener.feed(wire) == []
    assert opener.finished


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
@pytest.mark.parametrize("address", ["example.com", "10.1.2.3", "2001:db8::1"])
def test_request_round_trip(method, address):
    key = password_key("pw", method.key_size)
    wire = encode_request(Sealer(method, key), address, 8443, b"GET / HTTP/1.1\r\n")
    decoder = RequestDecoder(method, key)
    for i in range(len(wire)):  # one byte at a time
        found = decoder.feed(wire[i:i + 1])
        if found is not None:
            break
    assert found == Destination(address, 8443)
    # AEAD: the payload is sealed with the destination; none: it follows in the clear.
    assert decoder.rest + wire[i + 1:] == b"GET / HTTP/1.1\r\n"
    assert decoder.received == i + 1


def test_request_address_type_is_masked_like_v2ray():
    # The one-time-auth flag (0x10) of old clients is ignored.
    key = password_key("pw", 16)
    plain = b"\x13\x07example\x01\xbb"
    decoder = RequestDecoder(AES_128_GCM, key)
    assert decoder.feed(Sealer(AES_128_GCM, key).seal(plain)) == Destination("example", 443)


def test_invalid_destinations_are_refused():
    key = password_key("pw", 16)
    for plain in (b"\x05abcdef", b"\x03\x03a b\x00\x50", b"\x03\x00\x00\x50"):
        decoder = RequestDecoder(AES_128_GCM, key)
        with pytest.raises(ShadowsocksError, match="invalid destination"):
            decoder.feed(Sealer(AES_128_GCM, key).seal(plain))


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=600))
def test_garbage_never_crashes_the_request_decoder(garbage):
    for method in (AES_128_GCM, NONE):
        decoder = RequestDecoder(method, password_key("pw", method.key_size))
        try:
            decoder.feed(garbage)
        except ShadowsocksError:
            pass


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
def test_truncated_requests_wait_for_more(method):
    key = password_key("pw", method.key_size)
    wire = encode_request(Sealer(method, key), "example.com", 80)
    for cut in range(len(wire)):
        assert RequestDecoder(method, key).feed(wire[:cut]) is None


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
@settings(max_examples=20, deadline=None)
@given(payload=st.binary(max_size=2000), port=st.integers(0, 65535))
def test_udp_packet_round_trip(method, payload, port):
    key = password_key("pw", method.key_size)
    packet = encode_packet(method, key, "203.0.113.9", port, payload)
    assert decode_packet(method, key, packet) == (Destination("203.0.113.9", port), payload)


def test_udp_packets_use_a_fresh_salt_and_nonce_zero():
    key = password_key("pw", 32)
    packet = encode_packet(CHACHA20_POLY1305, key, "1.2.3.4", 53, b"q")
    one, two = packet, encode_packet(CHACHA20_POLY1305, key, "1.2.3.4", 53, b"q")
    assert one[:32] != two[:32]
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    plain = ChaCha20Poly1305(hkdf_sha1(key, packet[:32], b"ss-subkey", 32)).decrypt(
        bytes(12), packet[32:], None)
    assert plain == b"\x01\x01\x02\x03\x04\x00\x35q"


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_udp_packets_are_refused(garbage):
    try:
        decode_packet(AES_256_GCM, password_key("pw", 32), garbage)
    except ShadowsocksError:
        pass


# -- configuration (V2Ray's infra/conf/shadowsocks.go) ---------------------------------------

def parsed(settings: dict, outbound: dict | None = None):
    from revproxy.config import ConfigError, parse_config
    data = {"inbounds": [{"port": 1, "protocol": "shadowsocks", "settings": settings}],
            "outbounds": [outbound or {"protocol": "freedom"}]}
    try:
        return parse_config(data, "t.json"), []
    except ConfigError as exc:
        return None, exc.problems


@pytest.mark.parametrize("name, canonical", [
    ("AES-128-GCM", "aes-128-gcm"), ("aead_aes_256_gcm", "aes-256-gcm"),
    ("chacha20-ietf-poly1305", "chacha20-poly1305"), ("plain", "none")])
def test_config_methods(name, canonical):
    config, found = parsed({"method": name, "password": "pw"})
    assert not found
    assert config.inbounds[0].settings.method == canonical


def test_config_refuses_stream_ciphers_and_missing_passwords():
    _, found = parsed({"method": "aes-256-cfb"})
    assert found == [
        't.json: inbounds[0].settings.method: stream cipher "aes-256-cfb" is insecure and not '
        'supported by revproxy (nor by V2Ray 4.x): use "aes-128-gcm", "aes-256-gcm" or '
        '"chacha20-poly1305"',
        't.json: inbounds[0].settings: missing required key "password"']


def test_config_udp_is_served_and_udp_alone_an_error():
    config, found = parsed({"method": "none", "password": "pw", "network": "tcp,udp"})
    assert not found and not any("UDP" in line for line in config.warnings)
    _, found = parsed({"method": "none", "password": "pw", "network": "udp"})
    assert found == ['t.json: inbounds[0].settings.network: UDP alone is not supported by '
                     'revproxy yet: include "tcp"']


def test_config_outbound_servers():
    outbound = {"protocol": "shadowsocks", "settings": {"servers": [
        {"address": "192.0.2.1", "port": 8388, "method": "aes-128-gcm", "password": "x",
         "ota": True}]}}
    config, found = parsed({"method": "none", "password": "pw"}, outbound)
    assert not found
    server = config.outbounds[0].settings.servers[0]
    assert (server.address, server.port, server.method) == ("192.0.2.1", 8388, "aes-128-gcm")
