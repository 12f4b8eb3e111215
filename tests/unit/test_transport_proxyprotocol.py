"""The PROXY protocol header: parsing (sans-IO, every prefix) and reading it off a socket
without taking more than the header."""

from __future__ import annotations

import socket

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.net.stream import Prefixed, SocketStream
from revproxy.transport.base import TransportError
from revproxy.transport.proxyprotocol import (
    V2_SIGNATURE,
    ProxyHeaderError,
    parse,
    read_proxy_header,
)

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V1_6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
V2_4 = (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 2])
        + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big"))
V2_6 = (V2_SIGNATURE + b"\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::2") + b"\xdc\x04\x01\xbb")
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"
V2_TLV = V2_4[:14] + b"\x00\x14" + V2_4[16:] + b"\x04\x00\x05hello"  # with a NOOP TLV


@pytest.mark.parametrize("header,address", [
    (V1, ("192.0.2.1", 56324)),
    (V1_6, ("2001:db8::1", 56324)),
    (b"PROXY UNKNOWN\r\n", None),
    (V2_4, ("192.0.2.1", 56324)),
    (V2_6, ("2001:db8::1", 56324)),
    (V2_LOCAL, None),
    (V2_TLV, ("192.0.2.1", 56324)),
])
def test_headers(header, address):
    assert parse(header + b"GET / HTTP/1.1\r\n") == (len(header), address)


@pytest.mark.parametrize("header", [V1, V1_6, V2_4, V2_6, V2_LOCAL, V2_TLV])
def test_every_prefix_needs_more(header):
    for end in range(len(header)):
        assert parse(header[:end]) is None


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"PROXX",
                                  b"\r\n\r\nX"])
def test_no_header_passes_through(data):
    assert parse(data) == (0, None)


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 70000 443\r\n",
    b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY SCTP a b c d\r\n",
    b"PROXY " + b"x" * 200,
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
    V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),
])
def test_malformed_headers(data):
    with pytest.raises(ProxyHeaderError):
        parse(data)


@given(st.binary(max_size=120))
def test_parse_raises_nothing_else(data):
    for candidate in (data, V1[:10] + data, V2_SIGNATURE + data):
        try:
            result = parse(candidate)
        except ProxyHeaderError:
            continue
        assert result is None or 0 <= result[0] <= len(candidate)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, SocketStream(b)
    a.close()
    b.close()


def test_reading_takes_the_header_only(pair):
    client, stream = pair
    client.send(V2_4 + b"payload")
    got, peer = read_proxy_header(stream, ("127.0.0.1", 1))
    assert got is stream and peer == ("192.0.2.1", 56324)  # still a plain socket stream
    assert stream.recv() == b"payload"


def test_a_connection_without_header_is_untouched(pair):
    client, stream = pair
    client.send(b"GET / HTTP/1.1\r\n")
    assert read_proxy_header(stream, ("127.0.0.1", 1)) == (stream, ("127.0.0.1", 1))
    assert stream.recv() == b"GET / HTTP/1.1\r\n"


def test_a_header_in_pieces(pair):
    client, stream = pair
    client.send(V1[:10])
    task = gevent.spawn(read_proxy_header, stream, ("127.0.0.1", 1))
    gevent.sleep(0.05)
    client.send(V1[10:] + b"rest")
    got, peer = task.get(timeout=5)
    assert peer == ("192.0.2.1", 56324)
    assert isinstance(got, Prefixed) and got.recv() == b"rest"


def test_a_bad_header_is_refused(pair):
    client, stream = pair
    client.send(b"PROXY TCP4 nonsense\r\n")
    with pytest.raises(TransportError):
        read_proxy_header(stream, ("127.0.0.1", 1))
