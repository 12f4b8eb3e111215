"""The new inbounds' I/O over socket pairs, with a stand-in dispatcher: what each hands on,
what a bad peer gets (V2Ray's answer or silence), deadlines, VLESS fallbacks, and the HTTP
inbound's plain requests through its pipe (rewriting, keep-alive, chunked, 503)."""

from __future__ import annotations

import socket

import gevent
import pytest

from revproxy.net.session import Ending, Session
from revproxy.net.stream import SocketStream, Stream
from revproxy.proxy import streams
from revproxy.proxy.http.inbound import HTTPInbound
from revproxy.proxy.shadowsocks.codec import encode_request
from revproxy.proxy.shadowsocks.crypto import AES_128_GCM, Opener, Sealer, password_key
from revproxy.proxy.shadowsocks.inbound import ShadowsocksInbound
from revproxy.proxy.socks.inbound import SocksInbound
from revproxy.proxy.vless.codec import (
    COMMAND_TCP,
    COMMAND_UDP,
    Fallback,
    Request,
    User,
    encode_packet,
)
from revproxy.proxy.vless.codec import (
    encode_request as vless_request,
)
from revproxy.proxy.vless.inbound import VLESSInbound

TIMEOUT = 10
USER = User.from_uuid("27848739-7e62-4138-9fd3-098a63964b6b")


class Dispatcher:
    """Records what an inbound hands on; ``serve`` (if set) runs on the stream."""

    def __init__(self, serve=None) -> None:
        self.sessions: list[tuple[Session, Stream]] = []
        self.serve = serve

    def handle(self, session: Session, stream: Stream) -> None:
        session.ending.add(stream.close)  # as the real one does
        self.sessions.append((session, stream))
        if self.serve is not None:
            self.serve(session, stream)


def pair() -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of a TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    client.setblocking(False)
    return server, client


def serve(handler, sock: socket.socket) -> tuple[gevent.Greenlet, Ending]:
    ending = Ending()
    ending.add(sock.close)
    return gevent.spawn(handler, sock, ("127.0.0.1", 40000), ending), ending


def read_all(stream: SocketStream) -> bytes:
    chunks = []
    with gevent.Timeout(TIMEOUT):
        while data := stream.recv():
            chunks.append(data)
    return b"".join(chunks)


def echo(session: Session, stream: Stream) -> None:
    """An upstream that answers each read with the same bytes, upper-cased."""
    while data := stream.recv():
        stream.send(data.upper())
    stream.close_write()
    session.ending.end()


# -- VLESS -------------------------------------------------------------------------------------

def test_vless_tcp_session_and_response_header():
    dispatcher = Dispatcher(echo)
    server, client = pair()
    task, ending = serve(VLESSInbound("in", [USER], dispatcher).handle_connection, server)
    peer = SocketStream(client)
    peer.send(vless_request(Request(USER.id, COMMAND_TCP, "example.com", 80)) + b"hello")
    peer.close_write()
    assert read_all(peer) == b"\x00\x00HELLO"
    task.join(TIMEOUT)
    session, _ = dispatcher.sessions[0]
    assert (session.target.network, session.target.address, session.target.port) == \
        ("tcp", "example.com", 80)


def test_vless_udp_frames_each_datagram():
    dispatcher = Dispatcher(echo)
    server, client = pair()
    serve(VLESSInbound("in", [USER], dispatcher).handle_connection, server)
    peer = SocketStream(client)
    peer.send(vless_request(Request(USER.id, COMMAND_UDP, "10.0.0.1", 53))
              + encode_packet(b"one") + encode_packet(b"two"))
    peer.close_write()
    assert read_all(peer) == b"\x00\x00" + encode_packet(b"ONE") + encode_packet(b"TWO")
    assert dispatcher.sessions[0][0].target.network == "udp"


def test_vless_unknown_user_is_closed_without_an_answer():
    dispatcher = Dispatcher()
    server, client = pair()
    task, ending = serve(VLESSInbound("in", [USER], dispatcher).handle_connection, server)
    peer = SocketStream(client)
    peer.send(vless_request(Request(bytes(16), COMMAND_TCP, "example.com", 80)))
    assert read_all(peer) == b""
    task.join(TIMEOUT)
    assert ending.ended and not dispatcher.sessions


def test_vless_fallback_gets_every_byte_with_a_proxy_header():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    fallback = Fallback(f"127.0.0.1:{listener.getsockname()[1]}", xver=1)
    server, client = pair()
    serve(VLESSInbound("in", [USER], Dispatcher(), fallbacks=[fallback]).handle_connection,
          server)
    peer = SocketStream(client)
    peer.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with gevent.Timeout(TIMEOUT):
        while True:
            try:
                accepted, _ = listener.accept()
                break
            except BlockingIOError:
                gevent.sleep(0.01)
    accepted.setblocking(False)
    behind = SocketStream(accepted)
    received = b""
    with gevent.Timeout(TIMEOUT):
        while not received.endswith(b"\r\n\r\n"):
            received += behind.recv()
    local = server.getsockname()[1]
    assert received == (f"PROXY TCP4 127.0.0.1 127.0.0.1 40000 {local}\r\n".encode()
                        + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    behind.send(b"answer")
    behind.close()
    assert read_all(peer) == b"answer"
    listener.close()


# -- Shadowsocks -------------------------------------------------------------------------------

KEY = password_key("pw", 16)


def test_shadowsocks_session_both_ways():
    dispatcher = Dispatcher(echo)
    server, client = pair()
    serve(ShadowsocksInbound("in", AES_128_GCM, KEY, dispatcher).handle_connection, server)
    peer = SocketStream(client)
    peer.send(encode_request(Sealer(AES_128_GCM, KEY), "example.com", 443, b"abc"))
    peer.close_write()
    assert b"".join(Opener(AES_128_GCM, KEY).feed(read_all(peer))) == b"ABC"
    assert dispatcher.sessions[0][0].target.address == "example.com"


def test_shadowsocks_wrong_key_drains_and_stays_silent():
    inbound = ShadowsocksInbound("in", AES_128_GCM, KEY, Dispatcher())
    server, client = pair()
    task, ending = serve(inbound.handle_connection, server)
    peer = SocketStream(client)
    peer.send(encode_request(Sealer(AES_128_GCM, password_key("other", 16)), "a.b", 1))
    gevent.sleep(0.1)
    assert not task.ready()  # still reading: the prober learns nothing from the timing
    peer.send(b"\0" * (inbound._drain_base + 100))
    assert read_all(peer) == b""
    task.join(TIMEOUT)
    assert ending.ended


# -- SOCKS -------------------------------------------------------------------------------------

def test_socks_connect_with_early_data():
    dispatcher = Dispatcher(echo)
    server, client = pair()
    serve(SocksInbound("in", dispatcher, listen="127.0.0.1").handle_connection, server)
    peer = SocketStream(client)
    peer.send(b"\x05\x01\x00\x05\x01\x00\x03\x07example\x00\x50early")
    peer.close_write()
    answer = read_all(peer)
    assert answer.startswith(b"\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01")
    assert answer.endswith(b"EARLY")


def test_socks_handshake_deadline(monkeypatch):
    monkeypatch.setattr(streams, "HANDSHAKE_TIMEOUT", 0.2)
    server, client = pair()
    task, ending = serve(SocksInbound("in", Dispatcher()).handle_connection, server)
    peer = SocketStream(client)
    peer.send(b"\x05")  # and nothing more
    assert read_all(peer) == b""
    task.join(TIMEOUT)
    assert ending.ended


# -- HTTP --------------------------------------------------------------------------------------

def upstream(answers: list[bytes], seen: list[bytes]):
    """A fake origin behind the dispatcher: records the request, sends the next answer."""

    def run(session: Session, stream: Stream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = stream.recv()
            if not data:
                break
            request += data
        seen.append(request)
        stream.send(answers.pop(0))
        stream.close_write()
        session.ending.end()

    return lambda session, stream: gevent.spawn(run, session, stream)


def test_http_plain_requests_keep_alive_and_rewrite():
    seen: list[bytes] = []
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"]
    dispatcher = Dispatcher(upstream(answers, seen))
    server, client = pair()
    task, _ = serve(HTTPInbound("in", dispatcher).handle_connection, server)
    peer = SocketStream(client)
    ask = (b"GET http://example.com/a HTTP/1.1\r\nHost: example.com\r\n"
           b"Proxy-Connection: keep-alive\r\n\r\n")
    peer.send(ask + ask)  # pipelined
    answer = read_all(peer)
    assert answer == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=4\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\n")
    assert seen == [b"GET /a HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"] * 2
    task.join(TIMEOUT)


def test_http_no_response_is_503_and_auth_is_407():
    dispatcher = Dispatcher(lambda session, stream: session.ending.end())
    server, client = pair()
    serve(HTTPInbound("in", dispatcher).handle_connection, server)
    peer = SocketStream(client)
    peer.send(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    assert read_all(peer).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    server, client = pair()
    serve(HTTPInbound("in", Dispatcher(), accounts={"u": "p"}).handle_connection, server)
    peer = SocketStream(client)
    peer.send(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert read_all(peer).startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")


def test_http_origin_form_needs_allow_transparent():
    server, client = pair()
    serve(HTTPInbound("in", Dispatcher()).handle_connection, server)
    peer = SocketStream(client)
    peer.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert read_all(peer).startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize("garbage", [b"\x00\xff" * 50, b"GET / HTTP/1.1\r\nbad\r\n\r\n"])
def test_http_garbage_is_closed_quietly(garbage):
    server, client = pair()
    task, ending = serve(HTTPInbound("in", Dispatcher()).handle_connection, server)
    peer = SocketStream(client)
    peer.send(garbage)
    peer.close_write()
    assert read_all(peer) == b""
    task.join(TIMEOUT)
    assert task.successful() and ending.ended


def test_shadowsocks_drain_ends_at_the_deadline(monkeypatch):
    monkeypatch.setattr(streams, "HANDSHAKE_TIMEOUT", 0.3)
    server, client = pair()
    task, ending = serve(ShadowsocksInbound("in", AES_128_GCM, KEY, Dispatcher())
                         .handle_connection, server)
    peer = SocketStream(client)
    peer.send(b"\xff" * 200)  # a salt and a length that do not authenticate; then silence
    assert read_all(peer) == b""
    task.join(TIMEOUT)
    assert ending.ended
