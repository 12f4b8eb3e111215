"""``prepare``, ``dial`` and ``wrap`` on loopback: the layers a configuration stacks, plain TCP
left a bare socket stream, socket options set, PROXY headers read, failures answered."""

from __future__ import annotations

import os
import socket

import gevent
import pytest

from revproxy.config.model import (
    HTTPHeaderConfig,
    SockoptConfig,
    StreamConfig,
    TLSConfig,
    WebSocketConfig,
)
from revproxy.config.transport import DEFAULT_REQUEST, DEFAULT_RESPONSE
from revproxy.net.listen import (
    SO_MARK,
    TCP_FASTOPEN,
    ListenerOptions,
    bind_listener,
    set_listener_options,
    set_option,
)
from revproxy.net.stream import SocketStream
from revproxy.transport import PLAIN, TransportError, dial, listener_options, prepare, wrap
from revproxy.transport.httpheader import HeaderCodec, HeaderLayer
from revproxy.transport.tcp import TCP_FASTOPEN_CONNECT
from revproxy.transport.tls import TLSLayer
from revproxy.transport.websocket import WebSocketLayer

HTTP = HTTPHeaderConfig(DEFAULT_REQUEST, DEFAULT_RESPONSE)


def test_plain_tcp_is_plain():
    assert prepare(None, server=True) is PLAIN
    assert prepare(StreamConfig(), server=False) is PLAIN
    assert PLAIN.plain


def test_the_layers_stack_bottom_up():
    ws_tls = prepare(StreamConfig(network="ws", websocket=WebSocketConfig(),
                                  tls=TLSConfig(allow_insecure=True)), server=False)
    assert [type(layer) for layer in ws_tls.layers] == [TLSLayer, WebSocketLayer]
    http = prepare(StreamConfig(http_header=HTTP, accept_proxy_protocol=True), server=True)
    assert [type(layer) for layer in http.layers] == [HeaderLayer]
    assert http.accept_header is not None and http.before_connect is None
    assert prepare(StreamConfig(accept_proxy_protocol=True), server=False) is PLAIN
    client = prepare(StreamConfig(sockopt=SockoptConfig(mark=1)), server=False)
    assert client.before_connect is not None and not client.layers


@pytest.fixture
def listener():
    sock = bind_listener("127.0.0.1", 0)
    yield sock
    sock.close()


def accept(listener) -> tuple[socket.socket, tuple]:
    listener.setblocking(False)
    while True:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            gevent.socket.wait_read(listener.fileno(), timeout=5)
            continue
        sock.setblocking(False)
        return sock, address


def test_plain_dial_and_wrap_give_socket_streams(listener):
    client = dial(PLAIN, "127.0.0.1", listener.getsockname()[1])
    sock, address = accept(listener)
    server, peer = wrap(PLAIN, sock, address)
    assert type(client) is SocketStream and type(server) is SocketStream
    assert peer == address
    client.send(b"ping")
    assert server.recv() == b"ping"


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_dial_sets_the_socket_options(listener):
    transport = prepare(StreamConfig(sockopt=SockoptConfig(mark=7, tcp_fast_open=True)),
                        server=False)
    client = dial(transport, "127.0.0.1", listener.getsockname()[1])
    assert isinstance(client, SocketStream)
    assert client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 7
    assert client.sock.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT) == 1


def test_listener_options_are_set_at_bind_time():
    options = listener_options(StreamConfig(sockopt=SockoptConfig(tcp_fast_open=True)))
    assert options == ListenerOptions(fast_open=True)
    assert listener_options(StreamConfig()) is None
    assert listener_options(None) is None
    sock = bind_listener("127.0.0.1", 0, options=options)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN) > 0
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_a_reload_changes_the_options_of_a_kept_listener(listener):
    marked = ListenerOptions(mark=7, transparent=True)
    set_listener_options(listener, marked)
    assert listener.getsockopt(socket.SOL_SOCKET, SO_MARK) == 7
    set_listener_options(listener, None, previous=marked)  # the mark is gone: cleared
    assert listener.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root may set SO_MARK")
def test_a_listener_mark_without_the_capability_says_so():
    with pytest.raises(OSError, match="sockopt.mark: cannot set SO_MARK"):
        bind_listener("127.0.0.1", 0, options=ListenerOptions(mark=7))


def test_an_option_that_cannot_be_set_says_which_and_why():
    with socket.socket() as sock, pytest.raises(OSError) as raised:
        set_option(sock, 12345, 1, 1, "mark", "SO_MARK", True)
    assert str(raised.value).startswith("[Errno 92] sockopt.mark: cannot set SO_MARK (it needs "
                                        "CAP_NET_ADMIN): ")


def test_wrap_reads_a_proxy_header_then_the_layers(listener):
    transport = prepare(StreamConfig(http_header=HTTP, accept_proxy_protocol=True), server=True)
    raw = socket.create_connection(listener.getsockname())
    raw.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 80\r\n"
                + HeaderCodec(HTTP).request_head() + b"data")
    stream, peer = wrap(transport, *accept(listener))
    assert peer == ("192.0.2.9", 4000)
    assert stream.recv() == b"data"
    raw.close()


def test_a_failed_handshake_is_answered_and_raises(listener):
    transport = prepare(StreamConfig(network="ws", websocket=WebSocketConfig(path="/ws")),
                        server=True)
    raw = socket.create_connection(listener.getsockname())
    raw.sendall(b"GET /ws HTTP/1.0\r\n\r\n")  # no upgrade: answered, then closed
    with pytest.raises(TransportError):
        wrap(transport, *accept(listener))
    assert raw.recv(100).startswith(b"HTTP/1.0 400 Bad Request\r\n")
    raw.close()


def test_dial_and_wrap_over_websocket(listener):
    settings = StreamConfig(network="ws", websocket=WebSocketConfig(path="/ws"))
    task = gevent.spawn(lambda: wrap(prepare(settings, server=True), *accept(listener)))
    client = dial(prepare(settings, server=False), "127.0.0.1", listener.getsockname()[1])
    server, _ = task.get(timeout=5)
    client.send(b"over ws")
    assert server.recv() == b"over ws"
    client.close()
    assert server.recv() == b""
