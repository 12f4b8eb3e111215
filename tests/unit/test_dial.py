"""Outgoing connections and listening sockets, on loopback."""

from __future__ import annotations

import errno
import socket as stdlib_socket

import pytest
from gevent import socket

from revproxy.net.dial import connect
from revproxy.net.listen import bind_listener
from revproxy.net.stream import SocketStream


def test_connects_to_a_listener_and_tunes_the_socket():
    listener = bind_listener("127.0.0.1", 0)
    try:
        sock = connect("127.0.0.1", listener.getsockname()[1])
        accepted, _ = listener.accept()
        assert sock.getpeername() == listener.getsockname()
        assert sock.gettimeout() == 0.0  # non-blocking, for SocketStream
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        stream = SocketStream(sock)
        stream.send(b"ping")
        assert accepted.recv(4) == b"ping"
        accepted.sendall(b"pong")
        assert stream.recv() == b"pong"
        stream.close()
        accepted.close()
    finally:
        listener.close()


def test_refused_connection_raises_the_error():
    probe = stdlib_socket.socket()
    probe.bind(("127.0.0.1", 0))  # a port nobody listens on while we hold it
    port = probe.getsockname()[1]
    try:
        with pytest.raises(OSError) as raised:
            connect("127.0.0.1", port)
        assert raised.value.errno == errno.ECONNREFUSED
        assert "refused" in str(raised.value).lower()
    finally:
        probe.close()


def test_accepted_sockets_inherit_the_listeners_options():
    """The inbounds do not set TCP_NODELAY and SO_KEEPALIVE per connection: Linux copies them
    from the listening socket."""
    listener = bind_listener("127.0.0.1", 0)
    try:
        client = stdlib_socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        assert accepted.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY)
        assert accepted.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE)
        client.close()
        accepted.close()
    finally:
        listener.close()
