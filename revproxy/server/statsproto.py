"""Hand-written protobuf codec for the few messages of V2Ray's stats and logger API
(app/stats/command/command.proto, app/log/command/config.proto in V2Ray 4.34), so that no
protoc step and no protobuf runtime are needed. Sans-IO: bytes in, values out.

    GetStatsRequest   { string name = 1; bool reset = 2; }
    QueryStatsRequest { string pattern = 1; bool reset = 2; }
    Stat              { string name = 1; int64 value = 2; }
    GetStatsResponse  { Stat stat = 1; }
    QueryStatsResponse{ repeated Stat stat = 1; }
    SysStatsRequest   {}
    SysStatsResponse  { uint32 NumGoroutine = 1; uint32 NumGC = 2; uint64 Alloc = 3;
                        uint64 TotalAlloc = 4; uint64 Sys = 5; uint64 Mallocs = 6;
                        uint64 Frees = 7; uint64 LiveObjects = 8; uint64 PauseTotalNs = 9;
                        uint32 Uptime = 10; }
    RestartLoggerRequest {}   RestartLoggerResponse {}

Proto3: fields at their default value are not written; unknown fields are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

STATS_SERVICE = "v2ray.core.app.stats.command.StatsService"
LOGGER_SERVICE = "v2ray.core.app.log.command.LoggerService"
SYS_STATS_FIELDS = ("NumGoroutine", "NumGC", "Alloc", "TotalAlloc", "Sys", "Mallocs", "Frees",
                    "LiveObjects", "PauseTotalNs", "Uptime")
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5
MAX_MESSAGE = 1 << 16  # requests are a name and a flag: anything larger is refused
_U64 = (1 << 64) - 1


class ProtoError(ValueError):
    """Not a well-formed message of the expected type."""


def varint(value: int) -> bytes:
    value &= _U64  # negative int64 values are written as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ProtoError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _U64, pos
    raise ProtoError("varint longer than 10 bytes")


def fields(data: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field; varints as ints, the rest as bytes."""
    if len(data) > MAX_MESSAGE:
        raise ProtoError(f"message of {len(data)} bytes")
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        value: int | bytes
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _WIRE_LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ProtoError("truncated length-delimited field")
            value, pos = data[pos:pos + length], pos + length
        elif wire in (_WIRE_FIXED64, _WIRE_FIXED32):
            size = 8 if wire == _WIRE_FIXED64 else 4
            if pos + size > len(data):
                raise ProtoError("truncated fixed field")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ProtoError(f"wire type {wire} not supported")
        yield number, wire, value


def decode_name_and_reset(data: bytes) -> tuple[str, bool]:
    """A GetStatsRequest (name, reset) or QueryStatsRequest (pattern, reset)."""
    name, reset = "", False
    for number, wire, value in fields(data):
        if number == 1 and wire == _WIRE_LEN:
            assert isinstance(value, bytes)
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtoError("field 1 is not UTF-8") from None
        elif number == 2 and wire == _WIRE_VARINT:
            reset = bool(value)
    return name, reset


def encode_name_and_reset(name: str, reset: bool) -> bytes:
    """The requests, for clients (tests)."""
    out = b""
    if name:
        raw = name.encode("utf-8")
        out += b"\x0a" + varint(len(raw)) + raw
    if reset:
        out += b"\x10\x01"
    return out


def encode_stat(name: str, value: int) -> bytes:
    raw = name.encode("utf-8")
    out = b"\x0a" + varint(len(raw)) + raw if raw else b""
    if value:
        out += b"\x10" + varint(value)
    return out


def encode_get_stats_response(name: str, value: int) -> bytes:
    stat = encode_stat(name, value)
    return b"\x0a" + varint(len(stat)) + stat


def encode_query_stats_response(stats: Iterable[tuple[str, int]]) -> bytes:
    out = bytearray()
    for name, value in stats:
        stat = encode_stat(name, value)
        out += b"\x0a" + varint(len(stat)) + stat
    return bytes(out)


def decode_stats(data: bytes) -> list[tuple[str, int]]:
    """The Stats of a GetStatsResponse or QueryStatsResponse, for clients (tests)."""
    found = []
    for number, wire, value in fields(data):
        if number != 1 or wire != _WIRE_LEN:
            continue
        assert isinstance(value, bytes)
        name, amount = "", 0
        for inner_number, inner_wire, inner in fields(value):
            if inner_number == 1 and inner_wire == _WIRE_LEN:
                assert isinstance(inner, bytes)
                name = inner.decode("utf-8")
            elif inner_number == 2 and inner_wire == _WIRE_VARINT:
                assert isinstance(inner, int)
                amount = inner - (1 << 64) if inner >> 63 else inner
        found.append((name, amount))
    return found


def encode_sys_stats(values: Sequence[int]) -> bytes:
    """A SysStatsResponse from values in ``SYS_STATS_FIELDS`` order (u32 fields are cut to
    32 bits, as V2Ray's conversions do)."""
    out = bytearray()
    for number, (name, value) in enumerate(zip(SYS_STATS_FIELDS, values, strict=True), 1):
        if name in ("NumGoroutine", "NumGC", "Uptime"):
            value &= 0xFFFFFFFF
        if value:
            out += varint(number << 3) + varint(value)
    return bytes(out)


def decode_sys_stats(data: bytes) -> dict[str, int]:
    found = dict.fromkeys(SYS_STATS_FIELDS, 0)
    for number, wire, value in fields(data):
        if wire == _WIRE_VARINT and 1 <= number <= len(SYS_STATS_FIELDS):
            assert isinstance(value, int)
            found[SYS_STATS_FIELDS[number - 1]] = value
    return found


def decode_empty(data: bytes) -> tuple[()]:
    """SysStatsRequest, RestartLoggerRequest: any fields are unknown ones, skipped. (Not
    None: gRPC takes a deserializer's None for a failure.)"""
    for _ in fields(data):
        pass
    return ()
