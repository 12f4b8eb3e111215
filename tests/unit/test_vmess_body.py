"""Tests for the VMess body chunk codec: round trips for every security/option/transfer
combination, byte layouts checked by hand-written decoders, garbage and tampering, limits,
and bodies captured from V2Ray 4.34."""

from __future__ import annotations

import hashlib
import itertools
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proxy.vmess.body import (
    MAX_WRITE_PAYLOAD,
    NONCE_COUNT,
    BodyError,
    BodyReader,
    BodyWriter,
    NonceExhausted,
    request_body_reader,
    request_body_writer,
    response_body_reader,
    response_body_writer,
)
from revproxy.proxy.vmess.crypto import User, chacha20_key, kdf16
from revproxy.proxy.vmess.header import (
    COMMAND_TCP,
    COMMAND_UDP,
    OPTION_AUTH_LENGTH,
    OPTION_CHUNK_MASKING,
    OPTION_CHUNK_STREAM,
    OPTION_GLOBAL_PADDING,
    SECURITY_AES128_GCM,
    SECURITY_CHACHA20_POLY1305,
    SECURITY_NONE,
    SECURITY_ZERO,
    RequestDecoder,
    RequestHeader,
    ResponseDecoder,
    new_request_header,
)
from revproxy.proxy.vmess.replay import MemoryReplayFilter

from .test_vmess_header import UID, V2RAY_REQUESTS

KEY = bytes(range(16))
IV = bytes(range(100, 116))
SECURITIES = [SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305, SECURITY_NONE, SECURITY_ZERO]
OPTIONS = [
    sum(bits)
    for n in range(5)
    for bits in itertools.combinations(
        [OPTION_CHUNK_STREAM, OPTION_CHUNK_MASKING, OPTION_GLOBAL_PADDING, OPTION_AUTH_LENGTH], n
    )
    if not (OPTION_GLOBAL_PADDING in bits and OPTION_CHUNK_MASKING not in bits)
]
COMBOS = [(sec, opt, packet) for sec in SECURITIES for opt in OPTIONS for packet in (False, True)]


def _is_raw(security: int, option: int) -> bool:
    return security in (SECURITY_NONE, SECURITY_ZERO) and not option & OPTION_CHUNK_STREAM


def _feed_in_pieces(reader: BodyReader, wire: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    prev = 0
    for cut in sorted({c for c in cuts if c < len(wire)}) + [len(wire)]:
        out += reader.feed(memoryview(wire)[prev:cut])
        prev = cut
    return out


def test_option_combinations_are_all_covered() -> None:
    assert len(OPTIONS) == 12 and len(COMBOS) == 96


@pytest.mark.parametrize(("security", "option", "packet"), COMBOS)
@settings(max_examples=15, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=300), max_size=5),
    max_payload=st.integers(1, 300),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_round_trip(
    security: int,
    option: int,
    packet: bool,
    pieces: list[bytes],
    max_payload: int,
    cuts: list[int],
) -> None:
    if packet:
        max_payload = 300
    writer = BodyWriter(security, KEY, IV, option, max_payload=max_payload, packet=packet)
    reader = BodyReader(security, KEY, IV, option, packet=packet)
    raw = _is_raw(security, option)
    # after the end chunk (or in a raw body) trailing bytes are harmless; AEAD bodies without
    # ChunkStream have no end chunk, so anything after the last chunk would be read as a chunk
    trailer = b"after the end" if raw or option & OPTION_CHUNK_STREAM else b""
    wire = b"".join(writer.seal(p) for p in pieces) + writer.end() + trailer
    out = _feed_in_pieces(reader, wire, cuts)
    data = b"".join(pieces)
    if raw:
        assert b"".join(out) == data + trailer
        assert not reader.finished
    elif packet:
        assert out == [p for p in pieces if p]  # one payload per datagram
    else:
        assert b"".join(out) == data
    assert reader.finished == (not raw and bool(option & OPTION_CHUNK_STREAM))
    if reader.finished:
        assert reader.feed(b"more") == []


@pytest.mark.parametrize(("security", "option"), [(s, o) for s in SECURITIES for o in OPTIONS])
def test_response_direction_helpers(security: int, option: int) -> None:
    base = new_request_header(COMMAND_TCP, "a.b", 1, SECURITY_AES128_GCM)
    wire_security = SECURITY_NONE if security == SECURITY_ZERO else security
    h = RequestHeader(**{**base.__dict__, "security": wire_security, "option": option})
    for make_writer, make_reader in (
        (request_body_writer, request_body_reader),
        (response_body_writer, response_body_reader),
    ):
        writer = make_writer(h, max_payload=100)
        reader = make_reader(h)
        wire = writer.seal(b"x" * 250) + writer.end()
        assert b"".join(reader.feed(wire)) == b"x" * 250
    if wire_security != SECURITY_NONE:  # the two directions use different keys
        try:
            assert response_body_reader(h).feed(request_body_writer(h).seal(b"y" * 40)) == []
        except BodyError:
            pass


def test_udp_helpers_keep_datagrams() -> None:
    h = new_request_header(COMMAND_UDP, "1.1.1.1", 53, SECURITY_NONE)
    writer, reader = request_body_writer(h), request_body_reader(h)
    assert reader.feed(writer.seal(b"one") + writer.seal(b"") + writer.seal(b"two")) == [
        b"one",
        b"two",
    ]


# --- byte layouts, decoded by hand -------------------------------------------------------------


def _shake_words(iv: bytes, n: int) -> list[int]:
    stream = hashlib.shake_128(iv).digest(2 * n)
    return [int.from_bytes(stream[i : i + 2], "big") for i in range(0, 2 * n, 2)]


def _nonce(counter: int, iv: bytes) -> bytes:
    return struct.pack(">H", counter) + iv[2:12]


def test_layout_aes_masking_padding() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, option)
    wire = writer.seal(b"first") + writer.seal(b"second!") + writer.end()
    words = _shake_words(IV, 6)
    pos = 0
    for i, payload in enumerate([b"first", b"second!", b""]):
        padding = words[2 * i] % 64  # drawn before the mask
        size = struct.unpack(">H", wire[pos : pos + 2])[0] ^ words[2 * i + 1]
        assert size == len(payload) + 16 + padding
        sealed = wire[pos + 2 : pos + 2 + size - padding]
        assert AESGCM(KEY).decrypt(_nonce(i, IV), sealed, None) == payload
        pos += 2 + size
    assert pos == len(wire)


def test_padding_bytes_are_fresh_across_chunks_and_pool_refills() -> None:
    """Padding comes from a pool of random bytes; no byte of it is sent twice."""
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, option)
    words = _shake_words(IV, 2 * 400)
    pads = []
    for i in range(400):  # about 12 KiB of padding: the 4 KiB pool is refilled twice
        wire = writer.seal(b"x")
        padding = words[2 * i] % 64
        assert len(wire) == 2 + 1 + 16 + padding
        if padding:
            pads.append(wire[-padding:])
    joined = b"".join(pads)
    assert len(joined) > 2 * 4096
    chunks = {joined[i:i + 16] for i in range(0, len(joined) - 15, 16)}
    assert len(chunks) == len(joined) // 16  # no repeated 16-byte block: not recycled


def test_layout_chacha_plain_size() -> None:
    writer = BodyWriter(SECURITY_CHACHA20_POLY1305, KEY, IV, OPTION_CHUNK_STREAM)
    wire = writer.seal(b"hello")
    assert struct.unpack(">H", wire[:2])[0] == 5 + 16 == len(wire) - 2
    aead = ChaCha20Poly1305(chacha20_key(KEY))
    assert aead.decrypt(_nonce(0, IV), wire[2:], None) == b"hello"
    assert aead.decrypt(_nonce(1, IV), writer.end()[2:], None) == b""


def test_layout_aead_without_chunk_stream_still_chunks_but_has_no_end() -> None:
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, 0)
    wire = writer.seal(b"abc")
    assert wire[:2] == b"\x00\x13" and AESGCM(KEY).decrypt(_nonce(0, IV), wire[2:], None) == b"abc"
    assert writer.end() == b""


def test_layout_none_stream_masked() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_NONE, KEY, IV, option, max_payload=4)
    wire = writer.seal(b"abcdef") + writer.end()
    w = _shake_words(IV, 3)  # no padding words for a "none" stream, even with GlobalPadding
    assert wire == (
        struct.pack(">H", 4 ^ w[0]) + b"abcd" + struct.pack(">H", 2 ^ w[1]) + b"ef"
    ) + struct.pack(">H", w[2])


def test_layout_none_packet_padded() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_NONE, KEY, IV, option, packet=True)
    wire = writer.seal(b"datagram")
    w = _shake_words(IV, 2)
    padding = w[0] % 64
    assert struct.unpack(">H", wire[:2])[0] ^ w[1] == 8 + padding
    assert wire[2:10] == b"datagram" and len(wire) == 10 + padding


def test_layout_none_raw() -> None:
    writer = BodyWriter(SECURITY_ZERO, KEY, IV, OPTION_AUTH_LENGTH)
    assert writer.seal(memoryview(b"as is")) == b"as is" and writer.end() == b""


@pytest.mark.parametrize("security", [SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305])
def test_layout_authenticated_length(security: int) -> None:
    """v5: length sealed under KDF16(request key, "auth_len") with nonces from the request IV,
    in both directions; padding still comes from SHAKE128(this direction's IV)."""
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING | OPTION_AUTH_LENGTH
    req_key, req_iv = bytes(range(50, 66)), bytes(range(70, 86))

    def aead(key: bytes) -> AESGCM | ChaCha20Poly1305:
        if security == SECURITY_AES128_GCM:
            return AESGCM(key)
        return ChaCha20Poly1305(chacha20_key(key))

    writer = BodyWriter(security, KEY, IV, option, request_key=req_key, request_iv=req_iv)
    wire = writer.seal(b"payload") + writer.end()
    length_aead = aead(kdf16(req_key, b"auth_len"))
    words = _shake_words(IV, 2)
    pos = 0
    for i, payload in enumerate([b"payload", b""]):
        plain_len = length_aead.decrypt(_nonce(i, req_iv), wire[pos : pos + 18], None)
        padding = words[i] % 64
        size = struct.unpack(">H", plain_len)[0] + 16
        assert size == len(payload) + 16 + padding
        sealed = wire[pos + 18 : pos + 18 + size - padding]
        assert aead(KEY).decrypt(_nonce(i, IV), sealed, None) == payload
        pos += 18 + size
    assert pos == len(wire)
    reader = BodyReader(security, KEY, IV, option, request_key=req_key, request_iv=req_iv)
    assert reader.feed(wire) == [b"payload"] and reader.finished
    with pytest.raises(BodyError):
        BodyReader(security, KEY, IV, option).feed(wire)  # length key from the wrong seed


def test_auth_length_ignored_for_none() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_AUTH_LENGTH
    assert BodyWriter(SECURITY_NONE, KEY, IV, option).seal(b"ab") == b"\x00\x02ab"


# --- limits and validation ---------------------------------------------------------------------


def test_largest_chunks_fit_the_size_field() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, option, max_payload=65535 - 16 - 63)
    reader = BodyReader(SECURITY_AES128_GCM, KEY, IV, option)
    data = bytes(range(256)) * 600
    assert b"".join(reader.feed(writer.seal(data) + writer.end())) == data
    assert reader.finished
    BodyWriter(SECURITY_NONE, KEY, IV, OPTION_CHUNK_STREAM, max_payload=65535)
    BodyWriter(SECURITY_AES128_GCM, KEY, IV, OPTION_CHUNK_STREAM, max_payload=65535 - 16)


@pytest.mark.parametrize(
    ("security", "option", "max_payload"),
    [
        (SECURITY_AES128_GCM, 0x0D, 0),
        (SECURITY_AES128_GCM, 0x0D, 65535 - 16 - 63 + 1),
        (SECURITY_AES128_GCM, 0x01, 65535 - 16 + 1),
        (SECURITY_NONE, 0x01, 65536),
    ],
)
def test_max_payload_validation(security: int, option: int, max_payload: int) -> None:
    with pytest.raises(ValueError):
        BodyWriter(security, KEY, IV, option, max_payload=max_payload)


@pytest.mark.parametrize(
    ("security", "key", "iv", "option"),
    [
        (1, KEY, IV, 0x01),
        (2, KEY, IV, 0x01),
        (7, KEY, IV, 0x01),
        (SECURITY_AES128_GCM, KEY[:15], IV, 0x01),
        (SECURITY_AES128_GCM, KEY, IV + b"x", 0x01),
        (SECURITY_AES128_GCM, KEY, IV, OPTION_CHUNK_STREAM | OPTION_GLOBAL_PADDING),
    ],
)
def test_constructor_validation(security: int, key: bytes, iv: bytes, option: int) -> None:
    with pytest.raises(ValueError):
        BodyWriter(security, key, iv, option)
    with pytest.raises(ValueError):
        BodyReader(security, key, iv, option)


def test_packet_too_large_and_empty_seal() -> None:
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, 0x0D, max_payload=100, packet=True)
    with pytest.raises(ValueError):
        writer.seal(bytes(101))
    assert writer.seal(b"") == b""
    stream = BodyWriter(SECURITY_AES128_GCM, KEY, IV, 0x0D)
    assert stream.seal(bytearray()) == b""


def test_reader_does_not_keep_callers_buffer() -> None:
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, 0x0D)
    reader = BodyReader(SECURITY_AES128_GCM, KEY, IV, 0x0D)
    wire = bytearray(writer.seal(b"keep me intact"))
    assert reader.feed(memoryview(wire)[:10]) == []
    wire[:10] = bytes(10)
    assert reader.feed(memoryview(wire)[10:]) == [b"keep me intact"]


# --- tampering and garbage ---------------------------------------------------------------------


@pytest.mark.parametrize("security", [SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305])
@pytest.mark.parametrize("option", [0x01, 0x05, 0x0D, 0x1D])
def test_flipped_bytes_never_yield_forged_payload(security: int, option: int) -> None:
    writer = BodyWriter(security, KEY, IV, option)
    wire = writer.seal(b"authentic payload")
    size_len = 18 if option & OPTION_AUTH_LENGTH else 2
    for i in range(size_len + 17 + 16):  # size field and sealed payload; padding is unsigned
        bad = bytearray(wire)
        bad[i] ^= 0x04
        reader = BodyReader(security, KEY, IV, option)
        if i >= size_len or option & OPTION_AUTH_LENGTH:
            with pytest.raises(BodyError):
                reader.feed(bytes(bad))
        else:
            try:
                assert reader.feed(bytes(bad) + bytes(70000)) == []
            except BodyError:
                pass


@pytest.mark.parametrize("security", [SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305])
def test_size_below_overhead_rejected(security: int) -> None:
    reader = BodyReader(security, KEY, IV, OPTION_CHUNK_STREAM)
    with pytest.raises(BodyError):
        reader.feed(b"\x00\x05hello")
    padded = BodyReader(security, KEY, IV, 0x0D)
    padding, mask = _shake_words(IV, 2)
    too_small = (16 + padding % 64 - 1) ^ mask
    with pytest.raises(BodyError):
        padded.feed(struct.pack(">H", too_small))


def test_none_packet_size_below_padding_rejected() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    padding, mask = _shake_words(IV, 2)
    if padding % 64 == 0:
        pytest.skip("this IV draws no padding")
    reader = BodyReader(SECURITY_NONE, KEY, IV, option, packet=True)
    with pytest.raises(BodyError):
        reader.feed(struct.pack(">H", (padding % 64 - 1) ^ mask))


@pytest.mark.parametrize(("security", "option", "packet"), COMBOS)
@settings(max_examples=20, deadline=None)
@given(garbage=st.binary(max_size=400), step=st.integers(1, 64))
def test_garbage(security: int, option: int, packet: bool, garbage: bytes, step: int) -> None:
    reader = BodyReader(security, KEY, IV, option, packet=packet)
    out: list[bytes] = []
    try:
        for i in range(0, len(garbage), step):
            out += reader.feed(garbage[i : i + step])
    except BodyError:
        assert security in (SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305) or packet
        return
    assert all(isinstance(p, bytes) and p for p in out)
    if security in (SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305):
        assert out == []  # nothing unauthenticated ever comes out


# --- V2Ray 4.34 captures -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(V2RAY_REQUESTS))
def test_decode_v2ray_client_body(name: str) -> None:
    ts, hexdata = V2RAY_REQUESTS[name]
    decoder = RequestDecoder([User(UID)], MemoryReplayFilter(), now=lambda: ts)
    header = decoder.feed(bytes.fromhex(hexdata))
    assert header is not None
    reader = request_body_reader(header)
    assert reader.feed(decoder.rest) == [b"hello v2ray"]
    assert reader.finished


# A real `v2ray` 4.34 VMess server echoing "ping v2ray server" for requests with these fixed
# body keys/IVs (response auth 0xA5), options as new_request_header sets them.
V2RAY_RESPONSES = {
    SECURITY_AES128_GCM: "aa1d68ab7682eaf0a2bbe77a0e1ac5538bca2ed328499b36227ddbc68d71154f01a5"
    "cc5474bc42828353f6883594383964681407d2eba5dfcce81184e508f624aba8007e9e06c9615a6ac70e121c"
    "9f5a2ab061a571d840dfe170a562c9f1accdf4a3905d190cc5a1d93f7d8f5d2ff7b59aec",
    SECURITY_CHACHA20_POLY1305: "fc7fdd34886af759a446bc3bfd2b14a4e26b5b9edf29ce7864647a11b778"
    "f43b83a620948c86b4b5536a1b04c4eeb796d502d1bc420a0534cd9bcbdd892fd76f386fb78d5328089f3c60"
    "d2a9ce469e61b634017f5e6b",
    SECURITY_NONE: "9649a0be12f5e5b85ffc93edc3657804462584142b488364e07fd1ce066fbd065c1611f1"
    "fa65afe370696e6720763272617920736572766572",
}


@pytest.mark.parametrize("security", sorted(V2RAY_RESPONSES))
def test_decode_v2ray_server_response(security: int) -> None:
    fresh = new_request_header(COMMAND_TCP, "127.0.0.1", 31001, security)
    header = RequestHeader(
        command=COMMAND_TCP,
        address="127.0.0.1",
        port=31001,
        security=security,
        option=fresh.option,
        body_key=bytes(range(security * 32, security * 32 + 16)),
        body_iv=bytes(range(security * 32 + 16, security * 32 + 32)),
        response_auth=0xA5,
    )
    decoder = ResponseDecoder(header)
    assert decoder.feed(bytes.fromhex(V2RAY_RESPONSES[security]))
    assert response_body_reader(header).feed(decoder.rest) == [b"ping v2ray server"]


@pytest.mark.parametrize("option", [OPTION_CHUNK_STREAM,
                                    OPTION_CHUNK_STREAM | OPTION_AUTH_LENGTH])
def test_a_writer_never_reuses_a_nonce(option: int) -> None:
    """2**16 chunks use every nonce once, in order; the next chunk (or the end chunk) is
    refused: the connection ends rather than reuse a nonce."""
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, option)
    chunks = [writer.seal(b"x") for _ in range(NONCE_COUNT)]
    assert writer.chunks == NONCE_COUNT
    if not option & OPTION_AUTH_LENGTH:  # size ‖ sealed: open the first and the last
        assert AESGCM(KEY).decrypt(_nonce(0, IV), chunks[0][2:], None) == b"x"
        assert AESGCM(KEY).decrypt(_nonce(NONCE_COUNT - 1, IV), chunks[-1][2:], None) == b"x"
    with pytest.raises(NonceExhausted):
        writer.seal(b"one too many")
    with pytest.raises(NonceExhausted):
        writer.end()
    assert isinstance(NonceExhausted(), ConnectionError)  # the relay ends the connection


def test_a_reader_follows_a_writer_that_wraps_its_nonce() -> None:
    """V2Ray's writers wrap the counter after 2**16 chunks: the chunk after wrapping is sealed
    with counter 0 again, and the reader (which counts on) opens it."""
    reader = BodyReader(SECURITY_AES128_GCM, KEY, IV, OPTION_CHUNK_STREAM)
    reader._c.counter = NONCE_COUNT  # as if 2**16 chunks were read
    sealed = AESGCM(KEY).encrypt(_nonce(0, IV), b"wrapped", None)
    assert reader.feed(struct.pack(">H", len(sealed)) + sealed) == [b"wrapped"]
    assert reader.chunks == NONCE_COUNT + 1


def test_writers_use_the_largest_chunks_by_default() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_AES128_GCM, KEY, IV, option)
    reader = BodyReader(SECURITY_AES128_GCM, KEY, IV, option)
    data = bytes(3 * MAX_WRITE_PAYLOAD)
    assert b"".join(reader.feed(writer.seal(data))) == data
    assert writer.chunks == 3
