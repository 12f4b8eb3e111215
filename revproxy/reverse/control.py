"""Hand-coded protobuf codec for the reverse-proxy ``Control`` message (app/reverse/config.proto).

``message Control { State state = 1; bytes random = 99; }`` with ``State`` ACTIVE=0, DRAIN=1; the
portal sends one per packet on the control session, padded with 0–63 random bytes.
"""

from __future__ import annotations

import os
import secrets

STATE_ACTIVE = 0
STATE_DRAIN = 1
CONTROL_DOMAIN = "reverse.internal.v2fly.org"

_TAG_STATE = b"\x08"  # field 1, wire type 0 (varint)
_TAG_RANDOM = b"\x9a\x06"  # field 99, wire type 2 (length-delimited)
_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LEN = 2
_WIRE_FIXED32 = 5


class ControlError(Exception):
    """The bytes are not a well-formed protobuf message."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_control(state: int, random_len: int | None = None) -> bytes:
    """Serialize a Control message; ``random_len`` None draws 0–63 like V2Ray's FillInRandom.

    Proto3 omits default values: ``state`` ACTIVE and an empty ``random`` produce no bytes.
    """
    if state != STATE_ACTIVE and state != STATE_DRAIN:
        raise ValueError(f"state {state} is neither STATE_ACTIVE nor STATE_DRAIN")
    if random_len is None:
        random_len = secrets.randbelow(64)
    elif random_len < 0:
        raise ValueError(f"random_len {random_len} is negative")
    out = _TAG_STATE + _varint(state) if state else b""
    if random_len:
        out += _TAG_RANDOM + _varint(random_len) + os.urandom(random_len)
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """``(value, next_pos)`` of the varint at ``pos``; at most 10 bytes, 64 bits, as protobuf."""
    value = 0
    for i in range(10):
        if pos >= len(data):
            raise ControlError("truncated varint")
        byte = data[pos]
        pos += 1
        if i == 9 and byte > 1:
            raise ControlError("varint overflows 64 bits")
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos
    raise ControlError("varint longer than 10 bytes")


def decode_control(data: bytes | bytearray | memoryview) -> int:
    """The ``state`` of a serialized Control message (empty input is ACTIVE).

    As protobuf does: the last ``state`` wins, it is read as a signed int32 and may be a value
    this code does not know (callers treat anything but ACTIVE as inactive, as V2Ray's bridge
    does); unknown fields and known fields with an unexpected wire type are skipped. Groups
    (wire types 3/4), never sent by V2Ray, are refused with ControlError like any malformed input.
    """
    data = bytes(data)
    end = len(data)
    state = STATE_ACTIVE
    pos = 0
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if not 0 < field <= 0x7FFFFFFF:  # protobuf-go accepts any positive int32 here
            raise ControlError(f"invalid field number {field}")
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(data, pos)
            if field == 1:
                value &= 0xFFFFFFFF
                state = value - (1 << 32) if value >= 1 << 31 else value
        elif wire == _WIRE_LEN:
            size, pos = _read_varint(data, pos)
            pos += size
        elif wire == _WIRE_FIXED64:
            pos += 8
        elif wire == _WIRE_FIXED32:
            pos += 4
        else:
            raise ControlError(f"unsupported wire type {wire} (field {field})")
        if pos > end:
            raise ControlError(f"truncated field {field}")
    return state
