"""VLESS codec: request/response headers against hand-built bytes, incremental feeding,
rejections (and which ones allow a fallback), UDP packets, V2Ray's fallback choice and the
PROXY headers it sends, and garbage fuzzing (no sockets)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proxy.vless.codec import (
    COMMAND_MUX,
    COMMAND_TCP,
    COMMAND_UDP,
    MUX_ADDRESS,
    RESPONSE,
    Fallback,
    PacketDecoder,
    Request,
    RequestDecoder,
    ResponseDecoder,
    User,
    VLESSError,
    encode_packet,
    encode_request,
    fallback_table,
    pick_fallback,
    proxy_header,
)

ID = "27848739-7e62-4138-9fd3-098a63964b6b"
USER = User.from_uuid(ID, "a@example")
USERS = {USER.id: USER}


def test_request_bytes():
    wire = encode_request(Request(USER.id, COMMAND_TCP, "example.com", 443))
    assert wire == (b"\x00" + uuid.UUID(ID).bytes + b"\x00\x01" + b"\x01\xbb"
                    + b"\x02\x0bexample.com")
    assert encode_request(Request(USER.id, COMMAND_UDP, "10.0.0.1", 53)) == \
        b"\x00" + USER.id + b"\x00\x02" + b"\x00\x35\x01\x0a\x00\x00\x01"
    assert encode_request(Request(USER.id, COMMAND_MUX, MUX_ADDRESS, 0)) == \
        b"\x00" + USER.id + b"\x00\x03"


@pytest.mark.parametrize("command, address, port", [
    (COMMAND_TCP, "example.com", 80), (COMMAND_UDP, "192.0.2.1", 53),
    (COMMAND_TCP, "2001:db8::5", 8080), (COMMAND_MUX, MUX_ADDRESS, 0)])
def test_request_round_trip_byte_by_byte(command, address, port):
    wire = encode_request(Request(USER.id, command, address, port)) + b"body"
    decoder = RequestDecoder(USERS)
    for i in range(len(wire)):
        found = decoder.feed(wire[i:i + 1])
        if found is not None:
            break
    assert found == Request(USER.id, command, address, port)
    assert decoder.user is USER
    assert decoder.rest + wire[i + 1:] == b"body"


def test_addons_are_skipped():
    wire = b"\x00" + USER.id + b"\x03\x0a\x01x" + b"\x01\x00\x50\x01\x7f\x00\x00\x01"
    decoder = RequestDecoder(USERS)
    assert decoder.feed(wire + b"rest") == Request(USER.id, COMMAND_TCP, "127.0.0.1", 80)
    assert decoder.rest == b"rest"


@pytest.mark.parametrize("wire, fallback, message", [
    (b"\x01" + bytes(16), True, "version"),
    (b"\x00" + bytes(16) + b"\x00\x01", True, "user id"),
    (b"\x00" + uuid.UUID(ID).bytes + b"\x00\x07", False, "command"),
    (b"\x00" + uuid.UUID(ID).bytes + b"\x00\x01\x00\x50\x09", False, "address"),
    (b"\x00" + uuid.UUID(ID).bytes + b"\x00\x01\x00\x50\x02\x03a/b", False, "address"),
])
def test_rejections_and_which_allow_a_fallback(wire, fallback, message):
    with pytest.raises(VLESSError, match=message) as caught:
        RequestDecoder(USERS).feed(wire)
    assert caught.value.fallback is fallback


def test_received_keeps_every_byte_for_a_fallback():
    decoder = RequestDecoder(USERS)
    assert decoder.feed(b"\x00" + USER.id[:5]) is None
    with pytest.raises(VLESSError):
        decoder.feed(b"\xff" * 11 + b"GET /")
    assert decoder.received == b"\x00" + USER.id[:5] + b"\xff" * 11 + b"GET /"


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=600))
def test_garbage_never_crashes_the_decoder(garbage):
    try:
        RequestDecoder(USERS).feed(garbage)
    except VLESSError:
        pass


@settings(max_examples=100, deadline=None)
@given(tail=st.binary(max_size=300))
def test_garbage_after_a_valid_user_never_crashes(tail):
    try:
        RequestDecoder(USERS).feed(b"\x00" + USER.id + tail)
    except VLESSError as exc:
        assert not exc.fallback


def test_response_header():
    decoder = ResponseDecoder()
    assert not decoder.feed(b"\x00")
    assert decoder.feed(b"\x00data")
    assert decoder.rest == b"data"
    decoder = ResponseDecoder()
    assert not decoder.feed(b"\x00\x02a")
    assert decoder.feed(b"bc")
    assert decoder.rest == b"c"
    with pytest.raises(VLESSError, match="response version"):
        ResponseDecoder().feed(b"\x01\x00")
    assert RESPONSE == b"\x00\x00"


@settings(max_examples=50, deadline=None)
@given(packets=st.lists(st.binary(min_size=1, max_size=3000), max_size=8),
       step=st.integers(1, 700))
def test_packets_round_trip(packets, step):
    wire = b"".join(encode_packet(p) for p in packets)
    decoder = PacketDecoder()
    out = []
    for pos in range(0, len(wire), step):
        out += decoder.feed(wire[pos:pos + step])
    assert out == packets


def test_empty_packets_are_dropped_as_v2ray_drops_them():
    assert PacketDecoder().feed(b"\x00\x00\x00\x01x") == [b"x"]


FALLBACKS = [
    Fallback(dest="127.0.0.1:80"),
    Fallback(dest="127.0.0.1:81", path="/ws"),
    Fallback(dest="127.0.0.1:82", alpn="h2"),
]


@pytest.mark.parametrize("alpn, first, dest", [
    (None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1:80"),
    (None, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1:81"),
    (None, b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1:81"),
    (None, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1:80"),
    ("h2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "127.0.0.1:82"),
    ("http/1.1", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1:81"),
    (None, b"short", "127.0.0.1:80"),
])
def test_fallback_choice(alpn, first, dest):
    table = fallback_table(FALLBACKS)
    assert table["h2"]["/ws"].dest == "127.0.0.1:81"  # the default ALPN's paths are inherited
    chosen = pick_fallback(table, alpn, first)
    assert chosen is not None and chosen.dest == dest


def test_no_default_fallback_means_none():
    table = fallback_table([Fallback(dest="1.2.3.4:5", path="/only")])
    assert pick_fallback(table, None, b"GET / HTTP/1.1\r\n\r\n") is None
    assert pick_fallback(table, None, b"GET /only HTTP/1.1\r\n\r\n") is not None


def test_proxy_headers():
    assert proxy_header(1, ("192.0.2.1", 5000), ("127.0.0.1", 443)) == \
        b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 443\r\n"
    assert proxy_header(1, ("2001:db8::1", 5000), ("::1", 443)) == \
        b"PROXY TCP6 2001:db8::1 ::1 5000 443\r\n"
    v2 = proxy_header(2, ("192.0.2.1", 5000), ("127.0.0.1", 443))
    assert v2 == (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes((192, 0, 2, 1))
                  + bytes((127, 0, 0, 1)) + b"\x13\x88\x01\xbb")
    assert len(proxy_header(2, ("::ffff:192.0.2.1", 1), ("::1", 2))) == 16 + 36


# -- configuration (V2Ray's infra/conf/vless.go) ---------------------------------------------

def vless_config(settings: dict, outbound: dict | None = None) -> dict:
    return {"inbounds": [{"port": 1, "protocol": "vless", "settings": settings}],
            "outbounds": [outbound or {"protocol": "freedom"}]}


def problems(data: dict) -> list[str]:
    from revproxy.config import ConfigError, parse_config
    try:
        parse_config(data, "t.json")
    except ConfigError as exc:
        return exc.problems
    return []


def test_vless_config_parses_fallbacks_as_v2ray():
    from revproxy.config import parse_config
    from revproxy.config.model import VLESSFallbackConfig
    config = parse_config(vless_config({
        "clients": [{"id": ID, "email": "a@b", "flow": ""}], "decryption": "none",
        "fallbacks": [{"dest": 80}, {"dest": "8080", "path": "/ws", "xver": 2},
                      {"dest": "@abstract", "alpn": "h2"}, {"dest": "/run/web.sock"},
                      {"dest": "example.com:443", "type": "tcp"}]}), "t.json")
    settings = config.inbounds[0].settings
    assert settings.clients[0].id == ID
    assert settings.fallbacks == (
        VLESSFallbackConfig("127.0.0.1:80"),
        VLESSFallbackConfig("127.0.0.1:8080", path="/ws", xver=2),
        VLESSFallbackConfig("@abstract", "unix", alpn="h2"),
        VLESSFallbackConfig("/run/web.sock", "unix"),
        VLESSFallbackConfig("example.com:443"))


@pytest.mark.parametrize("settings, expected", [
    ({"clients": [{"id": ID}]}, 'inbounds[0].settings.decryption: must be "none"'),
    ({"clients": [{"id": ID, "encryption": "none"}], "decryption": "none"},
     "inbounds[0].settings.clients[0].encryption: \"encryption\" belongs in an outbound's"),
    ({"decryption": "none", "fallback": {"dest": 80}},
     'inbounds[0].settings.fallback: use "fallbacks"'),
    ({"decryption": "none", "fallbacks": [{"dest": "serve-ws-none"}]},
     'inbounds[0].settings.fallbacks[0].type: fallback type "serve" is not supported'),
    ({"decryption": "none", "fallbacks": [{"dest": "no-port"}]},
     "inbounds[0].settings.fallbacks[0].dest: please fill in a valid value"),
])
def test_vless_config_refusals(settings, expected):
    found = problems(vless_config(settings))
    assert len(found) == 1 and found[0].startswith(f"t.json: {expected}"), found


def test_vless_outbound_needs_encryption_none():
    outbound = {"protocol": "vless", "settings": {"vnext": [
        {"address": "example.com", "port": 443, "users": [{"id": ID}]}]}}
    assert problems(vless_config({"decryption": "none"}, outbound)) == [
        't.json: outbounds[0].settings.vnext[0].users[0].encryption: must be "none" (V2Ray '
        'requires "encryption": "none" for every user)']
