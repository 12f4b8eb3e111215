"""The sans-IO HTTP/1.1 heads the transports share: collecting, parsing, writing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.transport.http1 import (
    HeadError,
    HeadReader,
    HeadTooLong,
    check_partial_request,
    format_head,
    http_date,
    parse_request,
    parse_response,
)

REQUEST = (b"GET /ws?ed=2048 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, Upgrade\r\n"
           b"Upgrade: websocket\r\n\r\n")


@given(st.lists(st.integers(0, len(REQUEST) + 10), max_size=6), st.binary(max_size=40))
def test_a_head_comes_out_whole_however_it_is_cut(cuts, rest):
    data = REQUEST + rest
    reader = HeadReader(1000)
    got = None
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        piece = data[start:cut]
        start = max(start, cut)
        if got is None:
            got = reader.feed(piece)
        else:
            got = (got[0], got[1] + piece)  # after the head: the caller's business
    assert got == (REQUEST, rest)


def test_a_head_past_the_limit_is_refused():
    reader = HeadReader(20)
    assert reader.feed(b"GET / HTTP/1.1\r\n") is None
    with pytest.raises(HeadTooLong):
        reader.feed(b"Host: aaaaaaaaaa\r\n")
    with pytest.raises(HeadTooLong):  # complete, but too long all the same
        HeadReader(20).feed(b"GET / HTTP/1.1\r\nHost: aaaaaa\r\n\r\n")


def test_request_fields():
    request = parse_request(REQUEST)
    assert (request.method, request.target, request.version) == ("GET", "/ws?ed=2048",
                                                                  "HTTP/1.1")
    assert request.path == "/ws"
    assert request.head.get("host") == "example.com"
    assert request.head.has_token("Connection", "upgrade")
    assert not request.head.has_token("Connection", "close")
    assert request.keep_alive and not request.has_body


@pytest.mark.parametrize("target,path", [
    ("/a%20b?x=1#f", "/a b"),
    ("http://host:80/ws?x", "/ws"),
    ("http://host", "/"),
    ("*", "*"),
])
def test_the_path_is_gos_url_path(target, path):
    assert parse_request(f"GET {target} HTTP/1.1\r\n\r\n".encode()).path == path


@pytest.mark.parametrize("head,keep_alive,has_body", [
    (b"GET / HTTP/1.0\r\n\r\n", False, False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, False),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False, False),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", True, True),
    (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", True, False),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True, True),
])
def test_keep_alive_and_body(head, keep_alive, has_body):
    request = parse_request(head)
    assert (request.keep_alive, request.has_body) == (keep_alive, has_body)


@pytest.mark.parametrize("head", [
    b"garbage\r\n\r\n",
    b"GET /\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/11\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
    b"\r\n\r\n",
])
def test_malformed_requests(head):
    with pytest.raises(HeadError):
        parse_request(head)


def test_a_partial_request_is_judged_by_its_complete_lines():
    check_partial_request(b"GET / HTTP/1.1\r\nHost: a")  # fine so far
    check_partial_request(b"GET / HT")  # no complete line yet
    with pytest.raises(HeadError):
        check_partial_request(b"garbage\r\nmore")


def test_response_and_writing():
    head = format_head("HTTP/1.1 101 Switching Protocols", [("Upgrade", "websocket")])
    assert head == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    response = parse_response(head)
    assert (response.version, response.status, response.reason) == ("HTTP/1.1", 101,
                                                                     "Switching Protocols")
    with pytest.raises(HeadError):
        parse_response(b"HTTP/1.1 2000 OK\r\n\r\n")


def test_http_date_is_the_rfc_1123_form():
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", http_date())


@given(st.binary(max_size=300))
def test_parsers_raise_nothing_but_head_error(data):
    for parse in (parse_request, parse_response, check_partial_request):
        try:
            parse(data)
        except HeadError:
            pass
