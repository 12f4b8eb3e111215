"""V2Ray's HTTP header disguise: the heads (sans-IO) and the streams that put them on a
connection (over a socket pair)."""

from __future__ import annotations

import socket

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config.model import HTTPHeaderConfig, HTTPRequestConfig, HTTPResponseConfig
from revproxy.config.transport import DEFAULT_REQUEST, DEFAULT_RESPONSE
from revproxy.net.stream import SocketStream
from revproxy.transport.base import TransportError
from revproxy.transport.http1 import parse_request, parse_response
from revproxy.transport.httpheader import BAD_REQUEST, NOT_FOUND, HeaderCodec, HeaderLayer, answer

DEFAULTS = HTTPHeaderConfig(DEFAULT_REQUEST, DEFAULT_RESPONSE)
FIRST = HeaderCodec(DEFAULTS, choice=lambda values: values[0])


def test_the_default_request_is_v2rays():
    assert FIRST.request_head() == (
        b"GET / HTTP/1.1\r\nHost: www.baidu.com\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0; "
        b"WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/53.0.2785.143 Safari/537.36\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nPragma: no-cache\r\n\r\n")


def test_the_default_response_is_v2rays_with_a_date():
    assert FIRST.response_head(now=0) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: "
        b"chunked\r\nConnection: keep-alive\r\nPragma: no-cache\r\nCache-Control: private\r\n"
        b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n")


def test_a_configured_date_is_not_doubled():
    response = HTTPResponseConfig("1.0", "404", "Nope", (("date", ("yesterday",)),))
    codec = HeaderCodec(HTTPHeaderConfig(DEFAULT_REQUEST, response))
    assert codec.response_head() == b"HTTP/1.0 404 Nope\r\ndate: yesterday\r\n\r\n"


def test_values_are_picked_per_connection():
    codec = HeaderCodec(DEFAULTS)
    hosts = {parse_request(codec.request_head()).head.get("Host") for _ in range(200)}
    assert hosts == {"www.baidu.com", "www.bing.com"}


def test_the_server_checks_the_path_only():
    request = HTTPRequestConfig("1.1", "POST", ("/a", "/b"), (("X", ("1",)),))
    codec = HeaderCodec(HTTPHeaderConfig(request, DEFAULT_RESPONSE))
    assert codec.check_request(b"PUT /b?q=1 HTTP/1.0\r\n\r\n") == 0
    assert codec.check_request(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n") == NOT_FOUND
    assert codec.check_request(b"garbage\r\n\r\n") == BAD_REQUEST


def test_the_answers_are_v2rays():
    assert answer(NOT_FOUND, now=0) == (
        b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nCache-Control: private\r\n"
        b"Content-Length: 0\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n")
    assert answer(BAD_REQUEST, now=0).startswith(b"HTTP/1.1 400 Bad Request\r\n")


TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
               min_size=1, max_size=10)
# A configured path with "?", "#" or "%" never matches in V2Ray either (it compares the
# request's decoded path without query or fragment).
PATH = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="?#%"),
               min_size=1, max_size=10).map(lambda s: "/" + s)


@given(st.lists(PATH, min_size=1, max_size=3),
       st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9-]{1,10}", fullmatch=True),
                          st.lists(TEXT, min_size=1, max_size=3).map(tuple)), max_size=4))
def test_a_server_accepts_what_a_client_with_the_same_settings_sends(paths, headers):
    request = HTTPRequestConfig("1.1", "GET", tuple(paths), tuple(headers))
    codec = HeaderCodec(HTTPHeaderConfig(request, DEFAULT_RESPONSE))
    head = codec.request_head()
    assert codec.check_request(head) == 0
    assert parse_response(codec.response_head()).status == 200


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield SocketStream(a), SocketStream(b)
    a.close()
    b.close()


def test_streams_carry_bytes_behind_the_heads(pair):
    client_end, server_end = pair
    layer = HeaderLayer(DEFAULTS)
    client = layer.client(client_end, "example.com", 80)
    client.send(b"hello")  # the request head goes first, with these bytes
    server, peer = layer.server(server_end, ("1.2.3.4", 5))
    assert peer == ("1.2.3.4", 5)
    assert server.recv() == b"hello"
    server.send(b"world")
    assert client.recv() == b"world"  # the response head skipped
    client.send(b"again")
    assert server.recv() == b"again"


def test_a_wrong_path_is_answered_404_and_refused(pair):
    client_end, server_end = pair
    client_end.send(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(TransportError):
        HeaderLayer(DEFAULTS).server(server_end, ("1.2.3.4", 5))
    assert client_end.recv().startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_garbage_is_answered_400_at_once(pair):
    client_end, server_end = pair
    client_end.send(b"garbage\r\n")  # no blank line yet: the first line is enough
    with gevent.Timeout(5):
        with pytest.raises(TransportError):
            HeaderLayer(DEFAULTS).server(server_end, ("1.2.3.4", 5))
    assert client_end.recv().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_a_server_stream_closed_before_it_wrote_answers_400(pair):
    client_end, server_end = pair
    client_end.send(FIRST.request_head() + b"not vmess")
    server, _ = HeaderLayer(DEFAULTS).server(server_end, ("1.2.3.4", 5))
    assert server.recv() == b"not vmess"
    server.close()
    assert client_end.recv().startswith(b"HTTP/1.1 400 Bad Request\r\n")
