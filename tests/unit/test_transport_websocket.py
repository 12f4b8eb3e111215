"""WebSocket: the handshake's requests and V2Ray's answers (sans-IO), and the stream of
binary messages over a socket pair (masking, pings, closing)."""

from __future__ import annotations

import socket

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from revproxy.config.model import WebSocketConfig
from revproxy.net.stream import SocketStream
from revproxy.transport.base import TransportError
from revproxy.transport.http1 import parse_request
from revproxy.transport.websocket import (
    MALFORMED,
    MISSING_HOST,
    WebSocketLayer,
    WebSocketStream,
    accept_token,
    check_response,
    client_request,
    judge_request,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example
UPGRADE = (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n")
DATE = b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


def test_the_accept_token_is_the_rfcs():
    assert accept_token(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_request_is_laid_out_as_gorilla_sends_it():
    head = client_request("1.2.3.4:8080", "/ws?ed=2048", (("X-Custom", "1"),), KEY)
    assert head == (b"GET /ws?ed=2048 HTTP/1.1\r\nHost: 1.2.3.4:8080\r\n"
                    b"User-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"
                    b"Upgrade: websocket\r\nX-Custom: 1\r\n\r\n")


def test_configured_host_and_user_agent_replace_the_defaults():
    head = parse_request(client_request("1.2.3.4", "/", (("host", "cdn.example"),
                                                         ("User-Agent", "me")), KEY)).head
    assert (head.get("Host"), head.get("User-Agent"), head.count("Host")) == ("cdn.example",
                                                                              "me", 1)


@pytest.mark.parametrize("request_head,answer,upgrade,close", [
    # another path: Go's 404, the connection kept for another request
    (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
     b"HTTP/1.1 404 Not Found\r\n" + DATE + b"Content-Length: 0\r\n\r\n", False, False),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
     b"HTTP/1.1 404 Not Found\r\n" + DATE + b"Content-Length: 0\r\nConnection: close\r\n\r\n",
     False, True),
    (b"GET /x HTTP/1.0\r\n\r\n",
     b"HTTP/1.0 404 Not Found\r\n" + DATE + b"Content-Length: 0\r\n\r\n", False, True),
    # the path without an upgrade: gorilla's refusal
    (b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n",
     b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
     b"Sec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\n" + DATE
     + b"Content-Length: 12\r\n\r\nBad Request\n", False, False),
    (b"POST /ws HTTP/1.1\r\nHost: a\r\n" + UPGRADE + b"\r\n",
     b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n"
     b"Sec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\n" + DATE
     + b"Content-Length: 19\r\n\r\nMethod Not Allowed\n", False, False),
    # what Go cannot read
    (b"GET /ws HTTP/1.1\r\n" + UPGRADE + b"\r\n", MISSING_HOST, False, True),
    (b"nonsense\r\n\r\n", MALFORMED, False, True),
    # the upgrade, a query on the path ignored
    (b"GET /ws?ed=2048 HTTP/1.1\r\nHost: a\r\n" + UPGRADE + b"\r\n",
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", True, False),
])
def test_judging_requests_as_v2ray_does(request_head, answer, upgrade, close):
    verdict = judge_request(request_head, "/ws", now=0)
    assert (verdict.answer, verdict.upgrade, verdict.close) == (answer, upgrade, close)


def test_an_empty_key_or_another_version_is_refused():
    for bad in (UPGRADE.replace(KEY.encode(), b""), UPGRADE.replace(b"13", b"8")):
        verdict = judge_request(b"GET /ws HTTP/1.1\r\nHost: a\r\n" + bad + b"\r\n", "/ws")
        assert verdict.answer.startswith(b"HTTP/1.1 400 ") and not verdict.upgrade


def test_x_forwarded_for_names_the_peer():
    head = b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.2.3, 10.0.0.1\r\n" + UPGRADE
    assert judge_request(head + b"\r\n", "/ws").forwarded_for == "10.1.2.3"
    head = head.replace(b"10.1.2.3", b"unknown")
    assert judge_request(head + b"\r\n", "/ws").forwarded_for is None


def test_checking_the_answer():
    good = judge_request(b"GET /ws HTTP/1.1\r\nHost: a\r\n" + UPGRADE + b"\r\n", "/ws").answer
    check_response(good, KEY)
    with pytest.raises(TransportError, match="bad handshake"):
        check_response(good, "another key")
    with pytest.raises(TransportError, match="404"):
        check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", KEY)
    with pytest.raises(TransportError):
        check_response(b"junk\r\n\r\n", KEY)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield SocketStream(a), SocketStream(b)
    a.close()
    b.close()


def handshake(pair, client_path="/ws?x=1", server_path="/ws"):
    client_end, server_end = pair
    layer = WebSocketLayer(WebSocketConfig(path=client_path), secure=False)
    server_task = gevent.spawn(WebSocketLayer(WebSocketConfig(path=server_path),
                                              secure=False).server, server_end, ("1.2.3.4", 5))
    client = layer.client(client_end, "example.com", 80)
    server, peer = server_task.get(timeout=5)
    return client, server, peer


def test_messages_both_ways(pair):
    client, server, peer = handshake(pair)
    assert peer == ("1.2.3.4", 5)
    payload = bytes(range(256)) * 1000  # more than a socket buffer
    sender = gevent.spawn(client.send, payload)
    received = b""
    while len(received) < len(payload):
        received += server.recv()
    sender.get(timeout=5)
    assert received == payload
    server.send(b"back")
    assert client.recv() == b"back"
    assert client.send_nowait(b"quick")
    assert server.recv() == b"quick"


def test_the_client_masks_and_the_server_does_not(pair):
    client_end, server_end = pair
    client, server, _ = handshake(pair)
    client.send(b"x" * 10)
    raw = server_end.sock.recv(100)
    assert raw[1] & 0x80 and b"x" * 10 not in raw  # masked
    server.send(b"y" * 10)
    raw = client_end.sock.recv(100)
    assert not raw[1] & 0x80 and raw.endswith(b"y" * 10)


def test_a_ping_is_answered_and_text_is_data(pair):
    client_end, server_end = pair
    client, server, _ = handshake(pair)
    peer = Connection(ConnectionType.CLIENT)  # speaks for the client end, raw
    client_end.send(peer.send(Ping(b"hi")) + peer.send(TextMessage("text")))
    assert server.recv() == b"text"
    peer.receive_data(client_end.recv())
    assert [type(e) for e in peer.events()] == [Pong]


def test_a_close_frame_ends_the_stream_and_is_answered(pair):
    client_end, server_end = pair
    client, server, _ = handshake(pair)
    peer = Connection(ConnectionType.CLIENT)
    client_end.send(peer.send(BytesMessage(b"last")) + peer.send(CloseConnection(1000)))
    assert server.recv() == b"last"
    assert server.recv() == b""
    peer.receive_data(client_end.recv())
    assert [type(e) for e in peer.events()] == [CloseConnection]


def test_an_unmasked_frame_at_the_server_is_an_error(pair):
    client_end, server_end = pair
    client, server, _ = handshake(pair)
    client_end.send(Connection(ConnectionType.SERVER).send(BytesMessage(b"unmasked")))
    with pytest.raises(ConnectionError):
        server.recv()


def test_closing_sends_a_close_frame(pair):
    client_end, server_end = pair
    client, server, _ = handshake(pair)
    client.close()
    assert server.recv() == b""


def test_a_wrong_path_then_the_right_one_on_one_connection(pair):
    client_end, server_end = pair
    task = gevent.spawn(WebSocketLayer(WebSocketConfig(path="/ws"), secure=False).server,
                        server_end, ("1.2.3.4", 5))
    client_end.send(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
    assert client_end.recv().startswith(b"HTTP/1.1 404 Not Found\r\n")
    client_end.send(b"GET /ws HTTP/1.1\r\nHost: a\r\n" + UPGRADE + b"\r\n")
    server, _ = task.get(timeout=5)
    assert client_end.recv().startswith(b"HTTP/1.1 101 ")
    assert isinstance(server, WebSocketStream)


def test_a_dialer_refused_with_a_404_fails(pair):
    client_end, server_end = pair
    server_task = gevent.spawn(WebSocketLayer(WebSocketConfig(path="/other"),
                                              secure=False).server, server_end, ("1.2.3.4", 5))
    with pytest.raises(TransportError, match="404"):
        WebSocketLayer(WebSocketConfig(path="/ws"), secure=False).client(client_end, "a", 80)
    server_end.close()
    server_task.join(timeout=5)


class Chunks:
    """An in-memory stream under a ``WebSocketStream``: gives ``data`` in the chunks asked,
    keeps what is sent."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.pieces = []
        at = 0
        for size in sizes:
            if at >= len(data):
                break
            self.pieces.append(data[at:at + size])
            at += size
        if at < len(data):
            self.pieces.append(data[at:])
        self.sent = b""

    def recv(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def send(self, data) -> None:
        self.sent += bytes(data)

    def send_nowait(self, data) -> bool:
        self.sent += bytes(data)
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_all(stream: WebSocketStream) -> bytes:
    received = b""
    while data := stream.recv():
        received += data
    return received


SIZES = [0, 1, 3, 125, 126, 127, 1000, 65535, 65536, 70000]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SIZES), st.sampled_from(["bytes", "split", "text",
                                                                   "ping"])),
                max_size=6),
       st.lists(st.integers(1, 70000), max_size=40))
def test_what_a_wsproto_client_sends_reads_in_any_chunks(messages, chunking):
    """Binary messages (whole or in fragments), text and pings, cut anywhere."""
    peer = Connection(ConnectionType.CLIENT)
    wire, expected, pings = b"", b"", 0
    for index, (size, kind) in enumerate(messages):
        payload = bytes((index + i) % 251 for i in range(size))
        if kind == "bytes":
            wire += peer.send(BytesMessage(payload))
        elif kind == "split":
            wire += peer.send(BytesMessage(payload[:size // 2], message_finished=False))
            wire += peer.send(Ping(b"mid"))
            wire += peer.send(BytesMessage(payload[size // 2:], message_finished=True))
            pings += 1
        elif kind == "text":
            payload = b"t" * size
            wire += peer.send(TextMessage(payload.decode()))
        else:
            wire += peer.send(Ping(b"p"))
            pings += 1
            payload = b""
        expected += payload
    wire += peer.send(CloseConnection(1000))
    inner = Chunks(wire, chunking)
    stream = WebSocketStream(inner, False, inner.recv() if chunking else b"")  # type: ignore
    assert read_all(stream) == expected
    peer.receive_data(inner.sent)
    events = list(peer.events())
    assert [type(e) for e in events] == [Pong] * pings + [CloseConnection]


@pytest.mark.parametrize("size", SIZES)
def test_what_the_client_sends_a_wsproto_server_reads(size):
    inner = Chunks(b"", [])
    stream = WebSocketStream(inner, True, b"")  # type: ignore[arg-type]
    payload = bytes(i % 253 for i in range(size))
    stream.send(payload)
    assert stream.send_nowait(memoryview(payload))  # type: ignore[arg-type]
    server = Connection(ConnectionType.SERVER)
    server.receive_data(inner.sent)
    events = list(server.events())
    assert all(isinstance(e, BytesMessage) for e in events)
    assert b"".join(e.data for e in events) == payload * 2
    assert size < 8 or payload[:8] not in inner.sent  # masked


def test_what_the_server_sends_a_wsproto_client_reads():
    inner = Chunks(b"", [])
    stream = WebSocketStream(inner, False, b"")  # type: ignore[arg-type]
    for size in SIZES:
        stream.send(b"s" * size)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(inner.sent)
    assert b"".join(e.data for e in client.events()) == b"".join(b"s" * n for n in SIZES)


def test_a_length_not_in_its_shortest_form_is_refused_with_a_close():
    frame = bytes((0x82, 0x80 | 126)) + (5).to_bytes(2, "big") + b"\0\0\0\0" + b"hello"
    inner = Chunks(frame, [len(frame)])
    stream = WebSocketStream(inner, False, b"")  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        stream.recv()
    peer = Connection(ConnectionType.CLIENT)
    peer.receive_data(inner.sent)
    (close,) = peer.events()
    assert isinstance(close, CloseConnection) and close.code == 1002


def test_data_frames_amid_a_fragmented_message_are_refused():
    peer = Connection(ConnectionType.CLIENT)
    wire = (peer.send(BytesMessage(b"start", message_finished=False))
            + Connection(ConnectionType.CLIENT).send(BytesMessage(b"whole")))
    stream = WebSocketStream(Chunks(wire, [len(wire)]), False, b"")  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        read_all(stream)
