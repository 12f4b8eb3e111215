"""HTTP proxy codec: request parsing and destinations, Basic auth, V2Ray's rewriting of
forwarded requests and responses, body ends (length, chunked, close), the pipe the inbound
talks through, and garbage fuzzing."""

from __future__ import annotations

import base64

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proxy.http.codec import (
    Body,
    ChunkedBody,
    HeadReader,
    HTTPError,
    LengthBody,
    NoBody,
    basic_credentials,
    connect_request,
    destination,
    forward_request,
    forward_response,
    parse_request,
    parse_response,
    request_body,
    response_body,
)
from revproxy.proxy.streams import pipe


def request(text: str):
    return parse_request(text.replace("\n", "\r\n").encode())


@pytest.mark.parametrize("head, expected", [
    ("CONNECT example.com:443 HTTP/1.1\nHost: example.com:443\n\n", ("example.com", 443)),
    ("CONNECT [2001:db8::1]:8443 HTTP/1.1\n\n", ("2001:db8::1", 8443)),
    ("GET http://example.com/a?b=c HTTP/1.1\nHost: other\n\n", ("example.com", 80)),
    ("GET https://example.com/ HTTP/1.1\n\n", ("example.com", 443)),
    ("GET http://10.0.0.1:8080 HTTP/1.1\n\n", ("10.0.0.1", 8080)),
    ("GET http://user:pw@example.com:81/x HTTP/1.1\n\n", ("example.com", 81)),
    ("GET /path HTTP/1.1\nHost: inside.lan:8000\n\n", ("inside.lan", 8000)),
])
def test_destinations(head, expected):
    assert destination(request(head)) == expected


@pytest.mark.parametrize("head", [
    "GET /x HTTP/1.1\n\n",  # no Host, no authority
    "GET http://a:b:c/ HTTP/1.1\n\n",
    "GET http://example.com:99999/ HTTP/1.1\n\n",
    "CONNECT [::1 HTTP/1.1\n\n",
])
def test_bad_destinations(head):
    with pytest.raises(HTTPError):
        destination(request(head))


@pytest.mark.parametrize("head", [
    "GET  HTTP/1.1\n\n", "GET / HTTP/x\n\n", "G(T / HTTP/1.1\n\n", "GET /\n\n",
    "GET / HTTP/1.1\nbad header\n\n", "GET / HTTP/1.1\n folded: x\n\n", "GET x HTTP/1.1\n\n",
])
def test_malformed_requests(head):
    with pytest.raises(HTTPError):
        request(head)


def test_basic_credentials():
    token = base64.b64encode(b"alice:s3:cret").decode()
    assert basic_credentials(request(
        f"GET http://x/ HTTP/1.1\nProxy-Authorization: Basic {token}\n\n")) == \
        ("alice", "s3:cret")
    for value in ("Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert basic_credentials(request(
            f"GET http://x/ HTTP/1.1\nProxy-Authorization: {value}\n\n")) is None


def test_forwarded_request_is_rewritten_as_v2ray_does():
    parsed = request("POST http://example.com:8080/up?x=1#frag HTTP/1.1\n"
                     "Host: wrong\nProxy-Connection: keep-alive\nProxy-Authorization: Basic x\n"
                     "Connection: X-Custom, keep-alive\nX-Custom: drop me\nTE: trailers\n"
                     "Upgrade: h2c\nContent-Length: 3\nAccept: */*\n\n")
    assert forward_request(parsed) == (
        b"POST /up?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 3\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n")


def test_forwarded_chunked_request_stays_chunked():
    parsed = request("PUT http://e/ HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 9\n\n")
    assert forward_request(parsed) == (
        b"PUT / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    assert isinstance(request_body(parsed), ChunkedBody)


def test_request_bodies():
    assert isinstance(request_body(request("GET http://e/ HTTP/1.1\n\n")), NoBody)
    body = request_body(request("POST http://e/ HTTP/1.1\nContent-Length: 5\n\n"))
    assert body.feed(b"abc") == (b"abc", b"")
    assert body.feed(b"deGET") == (b"de", b"GET")
    assert body.done
    for bad in ("Content-Length: -1", "Content-Length: 1\nContent-Length: 2",
                "Transfer-Encoding: gzip"):
        with pytest.raises(HTTPError):
            request_body(request(f"POST http://e/ HTTP/1.1\n{bad}\n\n"))


def test_chunked_body_end_with_trailers():
    body = ChunkedBody()
    wire = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    assert body.feed(wire[:7]) == (wire[:7], b"")
    passed, rest = body.feed(wire[7:])
    assert passed == wire[7:-4] and rest == b"NEXT" and body.done


@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
       step=st.integers(1, 50))
def test_chunked_body_in_any_slicing(chunks, step):
    wire = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    body, out, rest = ChunkedBody(), b"", b""
    for pos in range(0, len(wire) + 1, step):
        passed, rest = body.feed(wire[pos:pos + step] + b"")
        out += passed
        if body.done:
            break
    assert body.done and out == wire and rest == b""


@pytest.mark.parametrize("bad", [b"zz\r\n", b"-5\r\n", b"0x5\r\n", b"5" * 5000])
def test_bad_chunks(bad):
    with pytest.raises(HTTPError):
        ChunkedBody().feed(bad)


def response(text: str):
    return parse_response(text.replace("\n", "\r\n").encode())


def test_response_with_length_keeps_the_connection():
    parsed = response("HTTP/1.1 200 OK\nContent-Length: 2\nConnection: keep-alive, X-A\n"
                      "X-A: 1\nKeep-Alive: timeout=99\nServer: s\n\n")
    body = response_body(parsed, "GET")
    assert isinstance(body, LengthBody)
    head, keep = forward_response(parsed, body)
    assert keep
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\n"
                    b"Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\n"
                    b"Keep-Alive: timeout=4\r\n\r\n")


def test_chunked_or_close_delimited_responses_end_the_connection():
    chunked = response("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n")
    head, keep = forward_response(chunked, response_body(chunked, "GET"))
    assert not keep
    assert head == (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n")
    until_close = response("HTTP/1.0 200 OK\nServer: old\n\n")
    body = response_body(until_close, "GET")
    assert type(body) is Body and not body.done
    assert forward_response(until_close, body) == (
        b"HTTP/1.0 200 OK\r\nServer: old\r\nConnection: close\r\n\r\n", False)


@pytest.mark.parametrize("status, method", [(204, "GET"), (304, "GET"), (200, "HEAD")])
def test_responses_without_body(status, method):
    parsed = response(f"HTTP/1.1 {status} X\nContent-Length: 10\n\n")
    assert isinstance(response_body(parsed, method), NoBody)


def test_status_line_without_reason():
    assert response("HTTP/1.1 200\n\n").status == 200


def test_head_reader():
    reader = HeadReader()
    assert reader.feed(b"\r\nGET / HTTP/1.1\r\nHost: a\r") is None
    assert reader.feed(b"\n\r\nbody") == (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"body")
    assert HeadReader().feed(b"GET / HTTP/1.1\nHost: a\n\nx") == \
        (b"GET / HTTP/1.1\nHost: a\n\n", b"x")
    with pytest.raises(HTTPError, match="no end"):
        reader = HeadReader()
        for _ in range(100):
            reader.feed(b"X" * 1000)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=400))
def test_garbage_heads_never_crash(garbage):
    reader = HeadReader()
    try:
        found = reader.feed(garbage + b"\r\n\r\n")
        if found is not None:
            parsed = parse_request(found[0])
            destination(parsed)
            request_body(parsed)
            forward_request(parsed)
    except HTTPError:
        pass
    try:
        parsed_response = parse_response(garbage + b"\r\n\r\n")
        forward_response(parsed_response, response_body(parsed_response, "GET"))
    except HTTPError:
        pass


def test_connect_request():
    assert connect_request("example.com:443", ("u", "p")) == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Authorization: Basic dTpw\r\nProxy-Connection: Keep-Alive\r\n\r\n")


def test_pipe_moves_bytes_both_ways_and_ends():
    one, two = pipe(limit=8)
    one.send(b"hello")
    assert two.recv() == b"hello"
    two.send(b"back")
    assert one.recv() == b"back"
    one.close_write()
    assert two.recv() == b""
    two.send(b"still open this way")
    assert one.recv() == b"still open this way"


def test_pipe_back_pressure_and_close():
    one, two = pipe(limit=4)
    one.send(b"12345")  # over the limit: the next send waits for the reader
    sender = gevent.spawn(one.send, b"more")
    gevent.sleep(0.01)
    assert not sender.ready()
    assert two.recv() == b"12345"
    sender.join(1)
    assert sender.successful()
    two.close()
    with pytest.raises(BrokenPipeError):
        one.send(b"x")
    assert one.recv() == b""


def test_pipe_recv_timeout():
    one, _ = pipe()
    one.settimeout(0.01)
    with pytest.raises(TimeoutError):
        one.recv()


def test_config_http_inbound_and_outbound():
    from revproxy.config import ConfigError, parse_config
    from revproxy.config.model import ProxyAccountConfig
    config = parse_config({
        "inbounds": [{"port": 1, "protocol": "http", "settings": {
            "accounts": [{"user": "u", "pass": "p"}], "allowTransparent": True,
            "timeout": 0, "userLevel": 1}}],
        "outbounds": [{"protocol": "http", "settings": {"servers": [
            {"address": "10.0.0.1", "port": 3128}]}}],
    }, "t.json")
    settings = config.inbounds[0].settings
    assert settings.accounts == (ProxyAccountConfig("u", "p"),)
    assert settings.allow_transparent and settings.user_level == 1
    with pytest.raises(ConfigError) as caught:
        parse_config({"outbounds": [{"protocol": "http", "settings": {"servers": []}}]},
                     "t.json")
    assert caught.value.problems == ["t.json: outbounds[0].settings.servers: must not be empty"]
