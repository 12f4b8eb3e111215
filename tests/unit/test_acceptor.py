"""Reusable task greenlets and the accept loop, on loopback."""

from __future__ import annotations

import socket as stdlib_socket

import gevent
import pytest
from gevent import getcurrent, socket
from gevent.event import Event

from revproxy.net.acceptor import Acceptor
from revproxy.net.stream import SocketStream
from revproxy.net.tasks import Tasks

TIMEOUT = 10


def test_finished_greenlets_take_the_next_task():
    tasks = Tasks()
    ran_on = []
    for _ in range(3):
        tasks.spawn(lambda: ran_on.append(getcurrent()))
        gevent.sleep(0)
    assert len(ran_on) == 3 and ran_on[0] is ran_on[1] is ran_on[2]
    assert len(tasks._idle) == 1


def test_a_failing_task_is_logged_and_the_greenlet_goes_on(caplog):
    tasks = Tasks()
    done = Event()

    def fail() -> None:
        raise RuntimeError("boom")

    tasks.spawn(fail)
    tasks.spawn(done.set)
    assert done.wait(TIMEOUT)
    assert "boom" in caplog.text
    gevent.sleep(0)
    # Both were spawned before either ran: two greenlets, and the one that failed is
    # parked for reuse like the other.
    assert len(tasks._idle) == 2 and not any(runner.dead for runner in tasks._idle)


def test_parked_greenlets_are_bounded():
    tasks = Tasks(keep_idle=2)
    release = Event()
    for _ in range(5):
        tasks.spawn(release.wait)
    gevent.sleep(0)
    assert tasks._idle == []  # five greenlets, all busy
    release.set()
    gevent.sleep(0.01)
    assert len(tasks._idle) == 2


@pytest.fixture
def listener():
    sock = stdlib_socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def connect(listener: stdlib_socket.socket) -> socket.socket:
    # Not create_connection: its resolver call would start gevent's thread pool, and
    # later tests fork.
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.connect(listener.getsockname())
    return sock


def test_each_connection_is_handled_then_closed(listener):
    def echo_once(sock, address, ending) -> None:
        assert address[0] == "127.0.0.1"
        stream = SocketStream(sock)  # the socket is non-blocking
        stream.send(stream.recv().upper())
        ending.end()

    acceptor = Acceptor(listener, echo_once)
    acceptor.start_accepting()
    clients = [connect(listener) for _ in range(5)]
    for index, client in enumerate(clients):
        client.sendall(b"hi %d" % index)
    for index, client in enumerate(clients):
        assert client.recv(100) == b"HI %d" % index
        assert client.recv(100) == b""  # closed by the acceptor at the connection's end
        client.close()
    assert acceptor.connections == 0
    acceptor.close()
    assert acceptor.closed


def test_a_connection_may_outlive_its_handler(listener):
    """The handler returns; the connection is open until its ending ends, and counts."""
    endings = []
    acceptor = Acceptor(listener, lambda sock, address, ending: endings.append(ending))
    acceptor.start_accepting()
    client = connect(listener)
    with gevent.Timeout(TIMEOUT):
        while not endings:
            gevent.sleep(0.01)
    gevent.sleep(0.05)  # the handler has returned
    assert acceptor.connections == 1
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recv(1)  # still open
    endings[0].end()
    client.settimeout(TIMEOUT)
    assert client.recv(1) == b""
    assert acceptor.connections == 0
    acceptor.close()
    client.close()


def test_a_failing_handler_ends_its_connection(listener, caplog):
    def fail(sock, address, ending) -> None:
        raise RuntimeError("handler bug")

    acceptor = Acceptor(listener, fail)
    acceptor.start_accepting()
    client = connect(listener)
    assert client.recv(1) == b""  # closed
    assert acceptor.connections == 0
    assert "handler bug" in caplog.text
    acceptor.close()
    client.close()


def test_at_the_limit_it_waits_for_a_connection_to_end(listener):
    release = Event()
    handled = []

    def hold(sock, address, ending) -> None:
        handled.append(address)
        release.wait()
        ending.end()

    acceptor = Acceptor(listener, hold, limit=1)
    acceptor.start_accepting()
    first, second = connect(listener), connect(listener)
    gevent.sleep(0.2)
    assert len(handled) == 1  # the second waits in the backlog
    release.set()
    with gevent.Timeout(TIMEOUT):
        while len(handled) < 2:
            gevent.sleep(0.01)
    acceptor.close()
    first.close()
    second.close()


def test_stopped_acceptor_leaves_connections_to_others(listener):
    handled = []
    acceptor = Acceptor(listener, lambda sock, address, ending: handled.append(address))
    acceptor.start_accepting()
    acceptor.stop_accepting()
    client = connect(listener)
    gevent.sleep(0.2)
    assert handled == []
    acceptor.start_accepting()
    with gevent.Timeout(TIMEOUT):
        while not handled:
            gevent.sleep(0.01)
    acceptor.close()
    client.close()
