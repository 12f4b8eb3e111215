"""The relay into a stream that seals its writes in chunks (a direct VMess connection, no
mux), over real socket pairs: a bulk transfer is sealed in near-maximal chunks, one per read
instead of a full one and a scrap (a writer has 2**16 nonces), in both the download of a
VMess inbound and the upload of a VMess outbound; every byte arrives in order, and a read
that brought more than a chunk is passed on without waiting for more."""

from __future__ import annotations

import hashlib

import gevent
from gevent import socket

from revproxy.net.relay import relay
from revproxy.net.stream import Prefixed, SocketStream
from revproxy.policy import DEFAULT
from revproxy.proxy.vmess.body import MAX_WRITE_PAYLOAD
from revproxy.proxy.vmess.header import COMMAND_TCP, SECURITY_AES128_GCM, new_request_header
from revproxy.proxy.vmess.stream import VMessClientStream, VMessServerStream

from .sockets import plain

TIMEOUT = 20
BULK = 16 * 2**20


def pattern(size: int) -> bytes:
    """size bytes that differ from block to block, so that a lost or moved piece shows."""
    blocks = (hashlib.sha256(n.to_bytes(4, "big")).digest() * 1024
              for n in range(size // 32768 + 1))
    return b"".join(blocks)[:size]


class Direct:
    """A relay between a plain socket (the far end: ``peer``) and a VMess stream whose other
    end (``vmess_peer``) decodes what it seals. ``inbound``: the VMess stream is a server's
    (a VMess inbound relayed to freedom), else a client's (an inbound relayed to a VMess
    outbound)."""

    def __init__(self, inbound: bool, early: bytes = b"") -> None:
        header = new_request_header(COMMAND_TCP, "example.com", 80, SECURITY_AES128_GCM)
        x, y = socket.socketpair()
        server = VMessServerStream(SocketStream(plain(x)), header, b"")
        client = VMessClientStream(SocketStream(plain(y)), header)
        self.sealing, self.vmess_peer = (server, client) if inbound else (client, server)
        near, self.peer = socket.socketpair()
        plain_side = SocketStream(plain(near))
        src = Prefixed(plain_side, early) if early else plain_side
        ends = (server, src) if inbound else (src, client)
        self.relay = gevent.spawn(relay, *ends, DEFAULT)

    @property
    def chunks(self) -> int:
        return self.sealing._writer.chunks

    def send(self, data: bytes) -> gevent.Greenlet:
        """The far end sends data, then ends its side."""
        def run() -> None:
            self.peer.sendall(data)
            self.peer.shutdown(socket.SHUT_WR)
        return gevent.spawn(run)

    def receive(self, size: int) -> bytes:
        """What the VMess peer decodes, until size bytes came."""
        got = bytearray()
        with gevent.Timeout(TIMEOUT):
            while len(got) < size:
                data = self.vmess_peer.recv()
                assert data, f"ended after {len(got)} bytes"
                got += data
        return bytes(got)

    def close(self) -> None:
        self.vmess_peer.close_write()
        self.peer.close()
        self.relay.join(TIMEOUT)
        self.vmess_peer.close()
        assert self.relay.dead


def bulk_through(inbound: bool) -> None:
    pair = Direct(inbound)
    try:
        data = pattern(BULK)
        sender = pair.send(data)
        assert pair.receive(BULK) == data
        sender.join(TIMEOUT)
        # Reads of 64 KiB sealed a full chunk and a 81-byte one each (~32 KiB a chunk). The
        # sender, in this process, runs only when the relay waits: each fill of the socket's
        # buffer ends in one short chunk (~56 KiB a chunk on average).
        assert BULK / pair.chunks > 0.75 * MAX_WRITE_PAYLOAD, f"{pair.chunks} chunks"
    finally:
        pair.close()


def test_a_vmess_inbounds_download_is_sealed_in_near_maximal_chunks() -> None:
    bulk_through(inbound=True)


def test_a_vmess_outbounds_upload_is_sealed_in_near_maximal_chunks() -> None:
    bulk_through(inbound=False)


def test_more_than_a_chunk_in_one_read_goes_on_without_waiting_for_more() -> None:
    pair = Direct(inbound=True)
    try:
        with gevent.Timeout(TIMEOUT):
            for size in (65536, 3, MAX_WRITE_PAYLOAD + 1, 200_000):
                data = pattern(size)
                pair.peer.sendall(data)  # and nothing more until it has all come through
                assert pair.receive(size) == data
    finally:
        pair.close()


def test_early_bytes_of_a_prefixed_socket_come_first_and_whole() -> None:
    early = pattern(200_000)[::-1]  # three chunks' worth
    pair = Direct(inbound=True, early=early)
    try:
        data = pattern(3 * 2**20)
        pair.send(data)
        assert pair.receive(len(early) + len(data)) == early + data
    finally:
        pair.close()
