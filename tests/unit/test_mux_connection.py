"""Mux endpoints over a real socket pair: sessions, half-close, errors and tunnel loss."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket

from revproxy.mux.client import MuxClient
from revproxy.mux.frame import (
    FLOW_HELLO,
    NETWORK_TCP,
    NETWORK_UDP,
    STATUS_END,
    STATUS_KEEPALIVE,
    FrameDecoder,
    decode_flow,
    encode_end,
    encode_keep,
    encode_keepalive,
    encode_new,
)
from revproxy.mux.server import MuxServer
from revproxy.net.stream import SocketStream

from .sockets import plain

TIMEOUT = 10


def echo(session) -> None:
    while data := session.recv():
        session.send(data)
    session.close_write()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    accepted = []

    def accept(session, frame):
        accepted.append((session, frame))
        gevent.spawn(echo, session)

    client = MuxClient(SocketStream(plain(a)), "client")
    server = MuxServer(SocketStream(plain(b)), accept, "server")
    runners = [gevent.spawn(client.run), gevent.spawn(server.run)]
    yield client, server, accepted
    client.close()
    server.close()
    gevent.joinall(runners, timeout=TIMEOUT)


def read_all(session) -> bytes:
    chunks = []
    with gevent.Timeout(TIMEOUT):
        while data := session.recv():
            chunks.append(data)
    return b"".join(chunks)


def test_tcp_session_round_trip_with_first_payload(pair):
    client, server, accepted = pair
    big = bytes(range(256)) * 1000  # larger than one frame
    session = client.open_session(NETWORK_TCP, "example.com", 80, b"hello ")
    session.send(big)
    session.close_write()
    assert read_all(session) == b"hello " + big
    frame = accepted[0][1]
    assert (frame.address, frame.port, frame.network) == ("example.com", 80, NETWORK_TCP)
    assert frame.payload == b"hello "
    session.close()


def test_session_ids_count_up_from_one(pair):
    client, _, accepted = pair
    sessions = [client.open_session(NETWORK_TCP, "10.0.0.1", 1, b"x") for _ in range(3)]
    assert [s.id for s in sessions] == [1, 2, 3]
    assert client.total_sessions == 3


def test_udp_session_keeps_datagram_boundaries(pair):
    client, _, _ = pair
    session = client.open_session(NETWORK_UDP, "127.0.0.1", 53, b"one")
    session.send(b"two")
    session.send(b"three")
    with gevent.Timeout(TIMEOUT):
        assert [session.recv() for _ in range(3)] == [b"one", b"two", b"three"]


def test_tunnel_loss_resets_sessions_promptly(pair):
    client, server, _ = pair
    session = client.open_session(NETWORK_TCP, "example.com", 80, b"x")
    with gevent.Timeout(TIMEOUT):
        assert session.recv() == b"x"
    server.close()
    with gevent.Timeout(TIMEOUT), pytest.raises(ConnectionResetError):
        while session.recv():
            pass
    assert client.closed


class RawPeer:
    """The far end of a MuxServer driven by hand, frame by frame."""

    def __init__(self):
        self.sock, theirs = socket.socketpair()
        self.accepted = []
        self.server = MuxServer(SocketStream(plain(theirs)),
                                lambda s, f: self.accepted.append(s), "server")
        self.runner = gevent.spawn(self.server.run)
        self.decoder = FrameDecoder()
        self.signals = []  # (session id, flow signal) as the server sent them

    def frames(self):
        """The next frames the server sent, less its flow-control signals (kept apart)."""
        with gevent.Timeout(TIMEOUT):
            while True:
                frames = []
                for frame in self.decoder.feed(self.sock.recv(65536)):
                    if frame.status == STATUS_KEEPALIVE and frame.payload is not None:
                        self.signals.append((frame.session_id, decode_flow(frame.payload)))
                    else:
                        frames.append(frame)
                if frames:
                    return frames


def test_each_end_says_hello_first():
    peer = RawPeer()
    peer.sock.sendall(encode_keep(99, b"data"))
    peer.frames()
    assert peer.signals[0] == (0, FLOW_HELLO)


def test_keep_for_unknown_session_is_answered_with_end():
    peer = RawPeer()
    peer.sock.sendall(encode_keep(99, b"data"))
    frames = peer.frames()
    assert (frames[0].session_id, frames[0].status) == (99, STATUS_END)


def test_end_with_error_resets_the_session():
    peer = RawPeer()
    peer.sock.sendall(encode_new(5, NETWORK_TCP, "example.com", 80) + encode_end(5, error=True))
    with gevent.Timeout(TIMEOUT):
        while not peer.accepted:
            gevent.sleep(0.01)
        with pytest.raises(ConnectionResetError):
            peer.accepted[0].recv()


def test_keepalive_is_accepted_and_noticed():
    peer = RawPeer()
    peer.sock.sendall(encode_keepalive() + encode_new(1, NETWORK_TCP, "a.b", 1, b"hi"))
    with gevent.Timeout(TIMEOUT):
        while not peer.accepted:
            gevent.sleep(0.01)
        assert peer.accepted[0].recv() == b"hi"
    assert peer.server.peer_sends_keepalive and not peer.server.closed


def test_malformed_frame_closes_the_connection_and_its_sessions():
    peer = RawPeer()
    peer.sock.sendall(encode_new(1, NETWORK_TCP, "a.b", 1))
    peer.sock.sendall(b"\x00\x04\x00\x01\x09\x00")  # unknown status 9
    peer.runner.join(timeout=TIMEOUT)
    assert peer.server.closed
    with gevent.Timeout(TIMEOUT), pytest.raises(ConnectionResetError):
        peer.accepted[0].recv()
    with gevent.Timeout(TIMEOUT):
        assert peer.sock.recv(100) == b""  # the tunnel itself was closed


def test_a_reused_session_id_keeps_the_newer_session():
    """A New frame for an id in use replaces the old session; closing the old one afterwards
    must not take the newer one out of the table."""
    peer = RawPeer()
    peer.sock.sendall(encode_new(5, NETWORK_TCP, "a.b", 1, b"one"))
    peer.sock.sendall(encode_new(5, NETWORK_TCP, "a.b", 1, b"two"))
    with gevent.Timeout(TIMEOUT):
        while len(peer.accepted) < 2:
            gevent.sleep(0.01)
    old, new = peer.accepted
    old.close()
    assert peer.server.sessions[5] is new
    peer.sock.sendall(encode_keep(5, b"three"))
    with gevent.Timeout(TIMEOUT):
        assert new.recv() == b"two"
        assert new.recv() == b"three"
