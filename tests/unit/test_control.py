"""Reverse Control message codec: byte vectors, round-trips, protobuf skipping rules, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.reverse.control import (
    STATE_ACTIVE,
    STATE_DRAIN,
    ControlError,
    decode_control,
    encode_control,
)


def test_vectors() -> None:
    assert encode_control(STATE_ACTIVE, 0) == b""
    assert encode_control(STATE_DRAIN, 0) == b"\x08\x01"
    drain = encode_control(STATE_DRAIN, 5)
    assert drain[:5] == b"\x08\x01\x9a\x06\x05" and len(drain) == 10
    active = encode_control(STATE_ACTIVE, 63)
    assert active[:3] == b"\x9a\x06\x3f" and len(active) == 66
    big = encode_control(STATE_ACTIVE, 200)
    assert big[:4] == b"\x9a\x06\xc8\x01" and len(big) == 204


def test_default_random_is_0_to_63_bytes() -> None:
    lengths = set()
    for _ in range(300):
        encoded = encode_control(STATE_DRAIN)
        assert decode_control(encoded) == STATE_DRAIN
        lengths.add(len(encoded))
    assert min(lengths) >= 2 and max(lengths) <= 2 + 3 + 63
    assert len(lengths) > 1


def test_encode_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode_control(2)
    with pytest.raises(ValueError):
        encode_control(STATE_ACTIVE, -1)


def test_decode_protobuf_rules() -> None:
    assert decode_control(b"") == STATE_ACTIVE
    # Unknown fields of every supported wire type are skipped.
    unknown = b"\x10\x96\x01" + b"\x19" + b"\x00" * 8 + b"\x22\x02ab" + b"\x2d" + b"\x00" * 4
    assert decode_control(unknown + b"\x08\x01") == STATE_DRAIN
    # Last value wins; an explicit 0 is ACTIVE.
    assert decode_control(b"\x08\x01\x08\x00") == STATE_ACTIVE
    # A known field with the wrong wire type is an unknown field.
    assert decode_control(b"\x0a\x01\x01") == STATE_ACTIVE
    assert decode_control(b"\x98\x06\x01\x08\x01") == STATE_DRAIN
    # Enum values are int32: unknown values pass through, 64-bit -1 truncates to -1.
    assert decode_control(b"\x08\x07") == 7
    assert decode_control(b"\x08" + b"\xff" * 9 + b"\x01") == -1
    assert decode_control(bytearray(b"\x08\x01")) == STATE_DRAIN
    assert decode_control(memoryview(b"\x08\x01")) == STATE_DRAIN


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # missing value
        b"\x08\x80",  # truncated varint
        b"\x08" + b"\xff" * 9 + b"\x02",  # varint overflows 64 bits
        b"\x08" + b"\x80" * 10 + b"\x00",  # varint longer than 10 bytes
        b"\x9a\x06\x05abc",  # truncated bytes
        b"\x19\x00",  # truncated fixed64
        b"\x2d\x00",  # truncated fixed32
        b"\x00\x00",  # field number 0
        b"\x0b\x0c",  # group
        b"\x0e",  # wire type 6
    ],
)
def test_decode_malformed(data: bytes) -> None:
    with pytest.raises(ControlError):
        decode_control(data)


@given(st.sampled_from([STATE_ACTIVE, STATE_DRAIN]), st.none() | st.integers(0, 300))
def test_round_trip(state: int, random_len: int | None) -> None:
    assert decode_control(encode_control(state, random_len)) == state


@given(st.binary(max_size=100))
def test_garbage_only_raises_control_error(data: bytes) -> None:
    try:
        decode_control(data)
    except ControlError:
        pass
