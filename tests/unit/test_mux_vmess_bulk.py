"""A bulk transfer through a mux connection over a VMess stream (real socket pairs): the
splice reads its socket in pieces that, framed, fill one VMess chunk, so a writer's 2**16
nonces carry ~4 GiB; a small write still goes out at once; a writer out of nonces ends the
tunnel rather than reuse one."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket

from revproxy.mux.client import MuxClient
from revproxy.mux.connection import stream_bytes_within
from revproxy.mux.frame import MAX_STREAM_PAYLOAD, NETWORK_TCP, encode_keep_chunks
from revproxy.mux.server import MuxServer
from revproxy.net.stream import RECV_SIZE, SocketStream
from revproxy.policy import DEFAULT
from revproxy.proxy.vmess import stream as vmess_stream
from revproxy.proxy.vmess.body import (
    MAX_WRITE_PAYLOAD,
    NONCE_COUNT,
    BodyWriter,
    NonceExhausted,
)
from revproxy.proxy.vmess.header import (
    COMMAND_MUX,
    OPTION_CHUNK_MASKING,
    OPTION_CHUNK_STREAM,
    OPTION_GLOBAL_PADDING,
    SECURITY_AES128_GCM,
    new_request_header,
)
from revproxy.proxy.vmess.stream import VMessClientStream, VMessServerStream

from .sockets import plain

TIMEOUT = 20
BULK = 16 * 2**20


class Pair:
    """A bridge (mux server over a VMess client stream) splicing each accepted session to one
    end of a backend socket pair, and a portal (mux client over the VMess server stream)."""

    def __init__(self) -> None:
        header = new_request_header(COMMAND_MUX, "", 0, SECURITY_AES128_GCM)
        a, b = socket.socketpair()
        self.bridge_stream = VMessClientStream(SocketStream(plain(a)), header)
        portal_stream = VMessServerStream(SocketStream(plain(b)), header, b"")
        backend, self.backend = socket.socketpair()
        self._spliced = SocketStream(plain(backend))
        self.bridge = MuxServer(self.bridge_stream, self._accept, "bridge")
        self.portal = MuxClient(portal_stream, "portal")
        self.runners = [gevent.spawn(self.bridge.run), gevent.spawn(self.portal.run)]

    def _accept(self, session, frame) -> None:
        session.splice(self._spliced, DEFAULT, None)

    def produce(self, size: int) -> gevent.Greenlet:
        """The backend reads the session's first payload, then sends ``size`` bytes and
        closes."""
        def run() -> None:
            self.backend.recv(16)
            block = memoryview(bytes(range(256)) * 4096)
            left = size
            try:
                while left:
                    left -= self.backend.send(block[:min(left, len(block))])
            except OSError:
                pass  # cut (the nonce test)
            self.backend.close()
        return gevent.spawn(run)

    def close(self) -> None:
        self.bridge.close()
        self.portal.close()
        self.backend.close()
        gevent.joinall(self.runners, timeout=TIMEOUT)


def receive(session, limit: int | None = None) -> int:
    got = 0
    with gevent.Timeout(TIMEOUT):
        while data := session.recv():
            got += len(data)
            if limit is not None and got >= limit:
                break
    return got


def test_a_full_read_fills_one_chunk_exactly() -> None:
    size = stream_bytes_within(MAX_WRITE_PAYLOAD)
    assert len(encode_keep_chunks(1, bytes(size))) == MAX_WRITE_PAYLOAD
    assert len(encode_keep_chunks(1, bytes(size + 1))) > MAX_WRITE_PAYLOAD
    assert stream_bytes_within(MAX_STREAM_PAYLOAD + 8) == MAX_STREAM_PAYLOAD
    assert stream_bytes_within(8) == 0


def test_a_vmess_tunnel_reads_sockets_in_chunk_sized_pieces() -> None:
    pair = Pair()
    try:
        assert pair.bridge.read_size == stream_bytes_within(MAX_WRITE_PAYLOAD)
    finally:
        pair.close()
    a, b = socket.socketpair()
    plain_tunnel = MuxClient(SocketStream(plain(a)), "plain")  # no chunks: read as before
    assert plain_tunnel.read_size == RECV_SIZE
    plain_tunnel.close()
    b.close()


def test_bulk_download_is_sealed_in_near_maximal_chunks() -> None:
    pair = Pair()
    try:
        producer = pair.produce(BULK)
        session = pair.portal.open_session(NETWORK_TCP, "backend", 80, b"GET")
        assert receive(session) == BULK
        producer.join(TIMEOUT)
        chunks = pair.bridge_stream._writer.chunks
        # Reading RECV_SIZE at a time sealed a full chunk and a 144-byte one per read
        # (~34 KB a chunk); now a chunk carries close to MAX_WRITE_PAYLOAD.
        assert BULK / chunks > 0.9 * MAX_WRITE_PAYLOAD, f"{chunks} chunks"
    finally:
        pair.close()


def test_a_small_write_goes_out_without_waiting_for_more() -> None:
    pair = Pair()
    try:
        session = pair.portal.open_session(NETWORK_TCP, "backend", 80, b"GET")
        with gevent.Timeout(TIMEOUT):
            assert pair.backend.recv(16) == b"GET"
            pair.backend.sendall(b"small answer")  # and nothing more for now
            assert session.recv() == b"small answer"
            session.send(b"next")
            assert pair.backend.recv(16) == b"next"
    finally:
        pair.close()


def test_a_writer_refuses_to_seal_past_its_nonce_limit() -> None:
    option = OPTION_CHUNK_STREAM | OPTION_CHUNK_MASKING | OPTION_GLOBAL_PADDING
    writer = BodyWriter(SECURITY_AES128_GCM, bytes(16), bytes(16), option, nonce_limit=3)
    writer.seal(bytes(10))
    writer.seal(bytes(MAX_WRITE_PAYLOAD + 1))  # two chunks
    assert writer.chunks == 3
    with pytest.raises(NonceExhausted):
        writer.seal(b"x")
    for bad in (0, NONCE_COUNT + 1):
        with pytest.raises(ValueError):
            BodyWriter(SECURITY_AES128_GCM, bytes(16), bytes(16), option, nonce_limit=bad)


def test_a_session_past_the_nonce_limit_is_cut_not_wrapped(monkeypatch) -> None:
    limit = 64
    monkeypatch.setattr(vmess_stream, "NONCE_LIMIT", limit)
    pair = Pair()
    try:
        size = 8 * limit * MAX_WRITE_PAYLOAD
        pair.produce(size)
        session = pair.portal.open_session(NETWORK_TCP, "backend", 80, b"GET")
        got = 0
        with pytest.raises(ConnectionResetError):
            with gevent.Timeout(TIMEOUT):
                while data := session.recv():
                    got += len(data)
        assert got <= limit * MAX_WRITE_PAYLOAD
        assert pair.bridge_stream._writer.chunks == limit  # not one more
        assert pair.bridge.closed
    finally:
        pair.close()
