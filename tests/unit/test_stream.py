"""SocketStream on plain non-blocking sockets: waits in the hub only when a call would block,
times out, and closing it wakes whoever waits on it."""

from __future__ import annotations

import socket

import gevent
import pytest

from revproxy.net.stream import RECV_SIZE, SocketStream

TIMEOUT = 10


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield SocketStream(a), SocketStream(b)
    a.close()
    b.close()


def test_recv_waits_for_data_and_sees_the_end(pair):
    a, b = pair
    reader = gevent.spawn(a.recv)
    gevent.sleep(0.05)
    assert not reader.ready()  # waiting, not spinning or failing
    b.send(b"hello")
    assert reader.get(timeout=TIMEOUT) == b"hello"
    b.close_write()
    with gevent.Timeout(TIMEOUT):
        assert a.recv() == b""


def test_send_larger_than_the_socket_buffer_waits_for_room(pair):
    a, b = pair
    data = bytes(range(256)) * 40_000  # 10 MB: many socket buffers' worth
    sender = gevent.spawn(a.send, data)
    received = bytearray()
    with gevent.Timeout(TIMEOUT):
        while len(received) < len(data):
            received += b.recv()
    sender.get(timeout=TIMEOUT)
    assert received == data


def test_recv_times_out(pair):
    a, _ = pair
    a.settimeout(0.1)
    with pytest.raises(TimeoutError), gevent.Timeout(TIMEOUT):
        a.recv()


def test_close_wakes_a_waiting_reader_and_writer(pair):
    a, b = pair
    reader = gevent.spawn(a.recv)
    writer = gevent.spawn(a.send, b"x" * (16 * RECV_SIZE * 64))  # b reads nothing: blocks
    gevent.sleep(0.1)
    assert not reader.ready() and not writer.ready()
    a.close()
    gevent.joinall([reader, writer], timeout=TIMEOUT)
    assert isinstance(reader.exception, ConnectionAbortedError)
    assert isinstance(writer.exception, ConnectionAbortedError)
    with pytest.raises(OSError):
        a.recv()  # closed: an error, not a hang


def test_send_nowait_keeps_what_does_not_fit_and_keeps_the_order(pair):
    a, b = pair
    big = bytes(range(256)) * 40_000  # far more than the socket buffers
    assert a.send_nowait(b"first") is True  # fits: sent at once
    assert a.send_nowait(big) is False  # the rest is kept, nothing waited
    assert a.send_nowait(b"after") is False  # queued behind what was kept
    reader = gevent.spawn(lambda: b"".join(iter(b.recv, b"")))
    a.send(b"last")  # sends what was kept first, waiting for room
    a.flush()  # nothing left: no-op
    a.close_write()
    assert reader.get(timeout=TIMEOUT) == b"first" + big + b"after" + b"last"
