"""SOCKS codec: the server's SOCKS5/4/4a handshakes and V2Ray's answers, the client's SOCKS5
handshake against the server's, UDP datagrams, and garbage fuzzing (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proxy.socks.codec import (
    ClientHandshake,
    ServerHandshake,
    SocksError,
    SocksRequest,
    decode_udp,
    encode_udp,
)

GATEWAY = ("127.0.0.1", 1080)


def server(**options) -> ServerHandshake:
    return ServerHandshake(gateway=GATEWAY, **options)


def test_socks5_connect_no_auth():
    handshake = server()
    assert handshake.feed(b"\x05\x01\x00") == b"\x05\x00"
    answer = handshake.feed(b"\x05\x01\x00\x03\x0bexample.com\x00\x50early")
    assert answer == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"
    assert handshake.request == SocksRequest(5, "tcp", "example.com", 80)
    assert handshake.rest == b"early"


def test_socks5_pipelined_greeting_and_request():
    handshake = server()
    answer = handshake.feed(b"\x05\x02\x02\x00" + b"\x05\x01\x00\x01\x0a\x00\x00\x01\x01\xbb")
    assert answer == b"\x05\x00" + b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"
    assert handshake.request == SocksRequest(5, "tcp", "10.0.0.1", 443)


def test_socks5_password():
    handshake = server(password=True, accounts={"u": "p"})
    assert handshake.feed(b"\x05\x01\x02") == b"\x05\x02"
    assert handshake.feed(b"\x01\x01u\x01p") == b"\x01\x00"
    handshake.feed(b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16")
    assert handshake.request == SocksRequest(5, "tcp", "::1", 22, user="u")


@pytest.mark.parametrize("options, wire, reply", [
    ({"password": True, "accounts": {"u": "p"}}, b"\x05\x01\x00", b"\x05\xff"),
    ({}, b"\x05\x01\x02", b"\x05\xff"),
    ({"password": True, "accounts": {"u": "p"}}, b"\x05\x01\x02\x01\x01u\x01x", b"\x01\xff"),
    ({}, b"\x05\x01\x00\x05\x02\x00\x01\x01\x02\x03\x04\x00\x50",
     b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"),
    ({}, b"\x05\x01\x00\x05\x03\x00\x01\x01\x02\x03\x04\x00\x50",
     b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"),
    ({}, b"\x05\x01\x00\x05\x09\x00\x01\x01\x02\x03\x04\x00\x50",
     b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"),
    ({"password": True}, b"\x04\x01\x00\x50\x01\x02\x03\x04\x00", bytes((0, 91)) + bytes(6)),
    ({}, b"\x04\x02\x00\x50\x01\x02\x03\x04\x00", bytes((0, 91)) + bytes(6)),
    ({}, b"\x06\x01", b""),
])
def test_refusals_answer_as_v2ray(options, wire, reply):
    handshake = server(**options)
    with pytest.raises(SocksError) as caught:
        handshake.feed(wire)
    assert caught.value.reply == reply


def test_udp_associate_replies():
    wire = b"\x05\x01\x00" + b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"
    handshake = server(udp=True, client="127.0.0.1")
    assert handshake.feed(wire).endswith(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38")
    assert handshake.request is not None and handshake.request.command == "udp"
    # A remote client gets the inbound's address; the "ip" setting wins over both.
    remote = ServerHandshake(gateway=("0.0.0.0", 1080), udp=True, client="192.0.2.7")
    assert remote.feed(wire)[2:] == b"\x05\x00\x00\x01\x00\x00\x00\x00\x04\x38"
    configured = ServerHandshake(gateway=GATEWAY, udp=True, udp_address="203.0.113.1",
                                 client="127.0.0.1")
    assert configured.feed(wire)[2:] == b"\x05\x00\x00\x01\xcb\x00\x71\x01\x04\x38"


def test_socks4_and_4a():
    handshake = server()
    assert handshake.feed(b"\x04\x01\x00\x50\x0a\x00\x00\x02user\x00more") == \
        bytes((0, 90)) + bytes(6)
    assert handshake.request == SocksRequest(4, "tcp", "10.0.0.2", 80)
    assert handshake.rest == b"more"
    handshake = server()
    handshake.feed(b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00")
    assert handshake.request is None
    handshake.feed(b"example.org\x00")
    assert handshake.request == SocksRequest(4, "tcp", "example.org", 443)


def test_overlong_socks4_fields_are_refused():
    with pytest.raises(SocksError, match="too long"):
        server().feed(b"\x04\x01\x00\x50\x0a\x00\x00\x02" + b"u" * 2000)


@settings(max_examples=400, deadline=None)
@given(garbage=st.binary(max_size=300), password=st.booleans(), udp=st.booleans())
def test_garbage_never_crashes_the_server(garbage, password, udp):
    handshake = server(password=password, accounts={"u": "p"}, udp=udp)
    try:
        handshake.feed(garbage)
    except SocksError:
        pass


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=300))
def test_garbage_after_a_greeting_never_crashes(tail):
    for greeting in (b"\x05\x01\x00", b"\x04\x01"):
        try:
            server().feed(greeting + tail)
        except SocksError:
            pass


def converse(client: ClientHandshake, handshake: ServerHandshake) -> None:
    to_server = client.start()
    while not client.done:
        to_client = handshake.feed(to_server)
        to_server = client.feed(to_client)


@pytest.mark.parametrize("account", [None, ("user", "pass")])
@pytest.mark.parametrize("address", ["example.com", "198.51.100.3", "2001:db8::9"])
def test_client_against_server(account, address):
    client = ClientHandshake("tcp", address, 8080, account)
    handshake = server(password=account is not None, accounts={"user": "pass"})
    converse(client, handshake)
    assert handshake.request == SocksRequest(5, "tcp", address, 8080,
                                             account[0] if account else None)
    assert client.bound == GATEWAY


def test_client_sees_refusals():
    client = ClientHandshake("tcp", "example.com", 80, ("user", "wrong"))
    client.start()
    client.feed(b"\x05\x02")
    with pytest.raises(SocksError, match="rejects account"):
        client.feed(b"\x01\xff")
    client = ClientHandshake("tcp", "example.com", 80)
    client.start()
    with pytest.raises(SocksError, match="auth method"):
        client.feed(b"\x05\xff")
    client = ClientHandshake("tcp", "example.com", 80)
    client.start()
    client.feed(b"\x05\x00")
    with pytest.raises(SocksError, match="rejects request: 5"):
        client.feed(b"\x05\x05\x00\x01" + bytes(6))


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=1000), port=st.integers(0, 65535),
       address=st.sampled_from(["example.net", "192.0.2.55", "2001:db8::77"]))
def test_udp_round_trip(payload, port, address):
    assert decode_udp(encode_udp(address, port, payload)) == (address, port, payload)


def test_fragmented_udp_is_refused():
    with pytest.raises(SocksError, match="fragmented"):
        decode_udp(b"\x00\x00\x01\x01\x01\x02\x03\x04\x00\x35data")


# -- configuration (V2Ray's infra/conf/socks.go) ---------------------------------------------

def test_config_socks_inbound_and_outbound():
    from revproxy.config import parse_config
    from revproxy.config.model import ProxyAccountConfig
    config = parse_config({
        "inbounds": [{"port": 1, "protocol": "socks", "settings": {
            "auth": "password", "accounts": [{"user": "u", "pass": "p"}], "udp": True,
            "ip": "127.0.0.1", "timeout": 30, "userLevel": 0}}],
        "outbounds": [{"protocol": "socks", "settings": {"servers": [
            {"address": "proxy.lan", "port": 1080, "users": [{"user": "u", "pass": "p"}]}]}}],
    }, "t.json")
    settings = config.inbounds[0].settings
    assert (settings.auth, settings.accounts, settings.udp, settings.ip, settings.timeout) == \
        ("password", (ProxyAccountConfig("u", "p"),), True, "127.0.0.1", 30)
    assert not any("does not relay" in line for line in config.warnings)  # UDP is relayed
    assert config.outbounds[0].settings.servers[0].users == (ProxyAccountConfig("u", "p"),)


def test_config_unknown_socks_auth_falls_back_to_noauth_with_a_warning():
    from revproxy.config import parse_config
    config = parse_config({"inbounds": [{"port": 1, "protocol": "socks",
                                         "settings": {"auth": "gssapi"}}],
                           "outbounds": [{"protocol": "freedom"}]}, "t.json")
    assert config.inbounds[0].settings.auth == "noauth"
    assert any('unknown auth method "gssapi"' in line for line in config.warnings)
