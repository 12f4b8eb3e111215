"""Mux.Cool frame codec: byte vectors, round-trips over random split points, and garbage input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revproxy.mux.frame import (
    FLOW_HELLO,
    FLOW_MAGIC,
    FLOW_PAUSE,
    FLOW_RESUME,
    MAX_METADATA,
    NETWORK_TCP,
    NETWORK_UDP,
    OPTION_DATA,
    OPTION_ERROR,
    STATUS_END,
    STATUS_KEEP,
    STATUS_KEEPALIVE,
    STATUS_NEW,
    Frame,
    FrameDecoder,
    MuxError,
    decode_flow,
    encode_end,
    encode_flow,
    encode_keep,
    encode_keep_chunks,
    encode_keepalive,
    encode_new,
)


def decode_all(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.buffered == 0
    return frames


# ---------------------------------------------------------------------------------------------
# Known vectors (layout of common/mux/frame.go WriteTo)


def test_new_domain_tcp_vector() -> None:
    # metaLen=4+1+2+1+1+13 | sid=1 | New | 0 | TCP | port 80 | domain | len 13 | www.v2ray.com
    expected = b"\x00\x16\x00\x01\x01\x00\x01\x00\x50\x02\x0dwww.v2ray.com"
    assert encode_new(1, NETWORK_TCP, "www.v2ray.com", 80) == expected
    assert decode_all(expected) == [Frame(1, STATUS_NEW, 0, NETWORK_TCP, "www.v2ray.com", 80, None)]


def test_new_control_session_vector() -> None:
    # The portal's control session: UDP to reverse.internal.v2fly.org:0.
    encoded = encode_new(1, NETWORK_UDP, "reverse.internal.v2fly.org", 0)
    assert encoded == b"\x00\x23\x00\x01\x01\x00\x02\x00\x00\x02\x1areverse.internal.v2fly.org"


def test_new_ipv4_with_payload_vector() -> None:
    encoded = encode_new(0x0102, NETWORK_TCP, "127.0.0.1", 8080, b"hi")
    assert encoded == b"\x00\x0c\x01\x02\x01\x01\x01\x1f\x90\x01\x7f\x00\x00\x01\x00\x02hi"
    (frame,) = decode_all(encoded)
    assert frame == Frame(0x0102, STATUS_NEW, OPTION_DATA, NETWORK_TCP, "127.0.0.1", 8080, b"hi")


def test_new_ipv6_vector() -> None:
    encoded = encode_new(7, NETWORK_UDP, "2001:db8::1", 53)
    assert encoded == (
        b"\x00\x18\x00\x07\x01\x00\x02\x00\x35\x03" + ipaddress.IPv6Address("2001:db8::1").packed
    )
    assert decode_all(encoded)[0].address == "2001:db8::1"


def test_keep_end_keepalive_vectors() -> None:
    assert encode_keep(3, b"abc") == b"\x00\x04\x00\x03\x02\x01\x00\x03abc"
    assert encode_keep(3, memoryview(b"abc")) == b"\x00\x04\x00\x03\x02\x01\x00\x03abc"
    assert encode_keep(3, b"") == b"\x00\x04\x00\x03\x02\x01\x00\x00"
    assert encode_end(3) == b"\x00\x04\x00\x03\x03\x00"
    assert encode_end(3, error=True) == b"\x00\x04\x00\x03\x03\x02"
    assert encode_keepalive() == b"\x00\x04\x00\x00\x04\x00"
    assert decode_all(encode_keep(3, b"")) == [Frame(3, STATUS_KEEP, OPTION_DATA, payload=b"")]
    assert decode_all(encode_end(3, error=True)) == [Frame(3, STATUS_END, OPTION_ERROR)]
    assert decode_all(encode_keepalive()) == [Frame(0, STATUS_KEEPALIVE, 0)]


def test_empty_payload_on_new_sets_data() -> None:
    (frame,) = decode_all(encode_new(1, NETWORK_TCP, "a", 1, b""))
    assert frame.option == OPTION_DATA and frame.payload == b""


def test_keep_chunks_split_and_join() -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes
    encoded = encode_keep_chunks(9, data, max_payload=8192)
    frames = decode_all(encoded)
    assert [len(f.payload or b"") for f in frames] == [8192, 8192, 8192, 1024]
    assert b"".join(f.payload or b"" for f in frames) == data
    assert all(f.session_id == 9 and f.status == STATUS_KEEP for f in frames)
    assert encode_keep_chunks(9, data[:100]) == encode_keep(9, data[:100])
    assert encode_keep_chunks(9, data[:8192]) == encode_keep(9, data[:8192])
    assert encode_keep_chunks(9, b"") == b""
    assert len(decode_all(encode_keep_chunks(9, memoryview(data), max_payload=1))) == len(data)


def test_max_payload_frame() -> None:
    payload = b"x" * 0xFFFF
    assert decode_all(encode_keep(1, payload))[0].payload == payload
    with pytest.raises(ValueError):
        encode_keep(1, payload + b"x")
    with pytest.raises(ValueError):
        encode_new(1, NETWORK_TCP, "a", 1, payload + b"x")
    with pytest.raises(ValueError):
        encode_keep_chunks(1, payload, max_payload=0x10000)
    with pytest.raises(ValueError):
        encode_keep_chunks(1, payload, max_payload=0)


@pytest.mark.parametrize(
    "address",
    ["", "a" * 256, "bücher.de", "has space", "[::1]", "fe80::1%eth0", "a/b"],
)
def test_encode_refuses_addresses_v2ray_would_refuse(address: str) -> None:
    with pytest.raises(ValueError):
        encode_new(1, NETWORK_TCP, address, 80)


def test_encode_refuses_bad_numbers() -> None:
    with pytest.raises(ValueError):
        encode_new(1, 3, "a", 80)
    with pytest.raises(ValueError):
        encode_new(1, NETWORK_TCP, "a", 65536)
    with pytest.raises(ValueError):
        encode_new(-1, NETWORK_TCP, "a", 80)


# ---------------------------------------------------------------------------------------------
# Decoder behaviour


def meta_frame(meta: bytes, data: bytes | None = None) -> bytes:
    out = struct.pack(">H", len(meta)) + meta
    if data is not None:
        out += struct.pack(">H", len(data)) + data
    return out


def test_extra_metadata_is_ignored() -> None:
    # A Keep frame with an address appended (as some implementations send) and a New frame
    # with trailing bytes after its address.
    keep = meta_frame(b"\x00\x05\x02\x01" + b"\x02\x00\x35\x01\x08\x08\x08\x08", b"dns")
    new = meta_frame(b"\x00\x06\x01\x00\x01\x00\x50\x01\x0a\x00\x00\x01" + b"junk")
    assert decode_all(keep + new) == [
        Frame(5, STATUS_KEEP, OPTION_DATA, payload=b"dns"),
        Frame(6, STATUS_NEW, 0, NETWORK_TCP, "10.0.0.1", 80),
    ]


def test_metadata_length_limits() -> None:
    ok = meta_frame(b"\x00\x01\x02\x00" + b"\x00" * (MAX_METADATA - 4))
    assert decode_all(ok) == [Frame(1, STATUS_KEEP, 0)]
    with pytest.raises(MuxError):
        FrameDecoder().feed(b"\x02\x01")  # 513: refused as soon as the length is seen
    with pytest.raises(MuxError):
        FrameDecoder().feed(meta_frame(b"\x00\x01\x02"))


@pytest.mark.parametrize(
    "meta",
    [
        b"\x00\x01\x01\x00\x01\x00\x50",  # New shorter than 8 bytes
        b"\x00\x01\x01\x00\x03\x00\x50\x01\x01\x02\x03\x04",  # network 3
        b"\x00\x01\x01\x00\x01\x00\x50\x04\x01\x02\x03\x04",  # address type 4
        b"\x00\x01\x01\x00\x01\x00\x50\x01\x01\x02\x03",  # truncated IPv4
        b"\x00\x01\x01\x00\x01\x00\x50\x03" + b"\x00" * 15,  # truncated IPv6
        b"\x00\x01\x01\x00\x01\x00\x50\x02",  # no domain length
        b"\x00\x01\x01\x00\x01\x00\x50\x02\x05abcd",  # truncated domain
        b"\x00\x01\x01\x00\x01\x00\x50\x02\x00",  # empty domain
        b"\x00\x01\x01\x00\x01\x00\x50\x02\x02\xff\xfe",  # not UTF-8
        b"\x00\x01\x01\x00\x01\x00\x50\x02\x06b\xc3\xbccher",  # UTF-8, not ASCII
        b"\x00\x01\x01\x00\x01\x00\x50\x02\x03a b",  # character V2Ray refuses
        b"\x00\x01\x01\x00\x01\x00\x50\x02\x03::1",  # IPv6 only counts in brackets
        b"\x00\x01\x00\x00",  # status 0
        b"\x00\x01\x05\x00",  # status 5
    ],
)
def test_malformed_frames(meta: bytes) -> None:
    with pytest.raises(MuxError):
        FrameDecoder().feed(meta_frame(meta))


def test_domain_ip_literals_become_ips() -> None:
    def target(domain: bytes) -> str | None:
        meta = b"\x00\x01\x01\x00\x01\x00\x50\x02" + bytes((len(domain),)) + domain
        return decode_all(meta_frame(meta))[0].address

    assert target(b"1.2.3.4") == "1.2.3.4"
    assert target(b"[2001:DB8::1]") == "2001:db8::1"
    assert target(b"[::ffff:1.2.3.4]") == "1.2.3.4"
    assert target(b"1.2.3") == "1.2.3"  # digits but not an IP: an ordinary name
    assert target(b"Example-1_x.COM") == "Example-1_x.COM"


def test_ipv4_mapped_ipv6_decodes_as_ipv4() -> None:
    assert decode_all(encode_new(1, NETWORK_TCP, "::ffff:10.1.2.3", 1))[0].address == "10.1.2.3"


def test_error_keeps_earlier_frames_and_poisons_decoder() -> None:
    good = encode_keep(1, b"a") + encode_end(1)
    decoder = FrameDecoder()
    with pytest.raises(MuxError) as info:
        decoder.feed(good + b"\x00\x04\x00\x01\x09\x00")
    assert info.value.frames == [
        Frame(1, STATUS_KEEP, OPTION_DATA, payload=b"a"),
        Frame(1, STATUS_END, 0),
    ]
    with pytest.raises(MuxError):
        decoder.feed(encode_keepalive())


def test_partial_tail_kept_and_input_buffer_reusable() -> None:
    decoder = FrameDecoder()
    wire = bytearray(encode_keep(1, b"hello") + encode_keep(2, b"world"))
    assert decoder.feed(wire[:14]) == [Frame(1, STATUS_KEEP, OPTION_DATA, payload=b"hello")]
    assert decoder.buffered == 1
    rest = bytearray(wire[14:])
    frames = decoder.feed(memoryview(rest))
    rest[:] = b"\x00" * len(rest)  # the caller recycles its receive buffer
    assert frames == [Frame(2, STATUS_KEEP, OPTION_DATA, payload=b"world")]
    assert decoder.buffered == 0
    assert decoder.feed(b"") == []


# ---------------------------------------------------------------------------------------------
# Property tests

session_ids = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=300)
domain_labels = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1
)
domains = (
    st.lists(domain_labels, min_size=1, max_size=8)
    .map(".".join)
    .filter(lambda d: len(d) <= 255 and not d[0].isdigit())
)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).filter(lambda a: not a.ipv4_mapped).map(str)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, Frame]:
    sid = draw(session_ids)
    kind = draw(st.sampled_from(["new", "keep", "end", "keepalive"]))
    if kind == "new":
        network = draw(st.sampled_from([NETWORK_TCP, NETWORK_UDP]))
        address = draw(st.one_of(ipv4s, ipv6s, domains))
        port = draw(st.integers(0, 0xFFFF))
        payload = draw(st.none() | payloads)
        option = 0 if payload is None else OPTION_DATA
        expected = Frame(sid, STATUS_NEW, option, network, address, port, payload)
        return encode_new(sid, network, address, port, payload), expected
    if kind == "keep":
        payload = draw(payloads)
        return encode_keep(sid, payload), Frame(sid, STATUS_KEEP, OPTION_DATA, payload=payload)
    if kind == "end":
        error = draw(st.booleans())
        return encode_end(sid, error), Frame(sid, STATUS_END, OPTION_ERROR if error else 0)
    return encode_keepalive(), Frame(0, STATUS_KEEPALIVE, 0)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), max_size=12), st.data())
def test_round_trip_any_split(items: list[tuple[bytes, Frame]], data: st.DataObject) -> None:
    wire = b"".join(encoded for encoded, _ in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = FrameDecoder()
    got: list[Frame] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        chunk = wire[start:cut]
        got += decoder.feed(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(chunk))
        start = cut
    assert got == [frame for _, frame in items]
    assert decoder.buffered == 0


@given(st.binary(max_size=70000), st.integers(1, 0xFFFF))
def test_keep_chunks_round_trip(data: bytes, max_payload: int) -> None:
    frames_ = decode_all(encode_keep_chunks(5, data, max_payload))
    assert b"".join(f.payload or b"" for f in frames_) == data
    assert all(0 < len(f.payload or b"") <= max_payload for f in frames_)


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_garbage_only_raises_mux_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except MuxError:
        pass


@given(
    st.binary(min_size=4, max_size=40),
    st.sampled_from([STATUS_NEW, STATUS_KEEP, STATUS_END, STATUS_KEEPALIVE]),
    st.binary(max_size=20),
)
def test_garbage_metadata_only_raises_mux_error(meta: bytes, status: int, tail: bytes) -> None:
    # Well-framed metadata with a valid status reaches the address parser with random content.
    frame = meta_frame(meta[:2] + bytes((status,)) + meta[3:]) + tail
    try:
        FrameDecoder().feed(frame)
    except MuxError:
        pass


@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_mutated_frames_only_raise_mux_error(
    items: list[tuple[bytes, Frame]], data: st.DataObject
) -> None:
    wire = bytearray(b"".join(encoded for encoded, _ in items))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        FrameDecoder().feed(bytes(wire))
    except MuxError:
        pass


# -- revproxy's flow-control signals (KeepAlive frames with data; V2Ray discards their data)


@pytest.mark.parametrize("signal", [FLOW_HELLO, FLOW_PAUSE, FLOW_RESUME])
def test_a_flow_signal_is_a_keepalive_frame_with_data(signal):
    (frame,) = decode_all(encode_flow(513, signal))
    assert (frame.session_id, frame.status, frame.option) == (513, STATUS_KEEPALIVE, OPTION_DATA)
    assert frame.payload == FLOW_MAGIC + bytes((signal,))
    assert decode_flow(frame.payload) == signal


def test_a_flow_signal_has_this_layout():
    assert encode_flow(7, FLOW_PAUSE) == (struct.pack(">HHBBH", 4, 7, 4, 1, 17)
                                          + b"revproxy-flow/1:" + bytes((1,)))


@pytest.mark.parametrize("bad", [(70000, FLOW_PAUSE), (1, 3), (1, -1)])
def test_flow_signals_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        encode_flow(*bad)


@given(st.binary(max_size=40))
def test_other_keepalive_data_is_no_signal(data):
    signal = decode_flow(data)
    if signal is not None:
        assert data == FLOW_MAGIC + bytes((signal,)) and signal <= FLOW_RESUME
