"""UDP sessions: net/udp.py's per-source sessions over one socket, the dokodemo-door's UDP
side, datagram boundaries through the relay and a mux UDP session, oversized datagrams."""

from __future__ import annotations

import os
import select
import socket
import time

import gevent
import pytest
from gevent import socket as gsocket

from revproxy.mux.client import MuxClient
from revproxy.mux.connection import MAX_UDP_PAYLOAD
from revproxy.mux.frame import NETWORK_UDP
from revproxy.net import udp as udp_module
from revproxy.net.listen import bind_datagram
from revproxy.net.relay import relay
from revproxy.net.session import Session
from revproxy.net.stream import SocketStream
from revproxy.net.udp import DatagramSocket, PacketSessions, SourceStream
from revproxy.proxy.dokodemo import DokodemoInbound


def _bound() -> socket.socket:
    return bind_datagram("127.0.0.1", 0)  # (SO_REUSEADDR: connected_socket binds it again)


def _tcp_and_udp_port() -> int:
    """A port free for both a TCP listener and a UDP socket. The kernel picks it for TCP, so
    that no TCP socket holds it, not even one in TIME_WAIT (a port picked for UDP may be the
    local port of a recent TCP connection, and a listener cannot bind it then)."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                bind_datagram("127.0.0.1", port).close()
            except OSError:
                continue
            return port


def _echo_server() -> tuple[gsocket.socket, gevent.Greenlet]:
    """A UDP server on loopback answering each datagram with b"echo:" and the datagram."""
    echo = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            data, source = echo.recvfrom(65535)
            echo.sendto(b"echo:" + data, source)

    return echo, gevent.spawn(serve)


def _client() -> gsocket.socket:
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    return sock


def _echo(stream: SourceStream) -> None:
    """Answer each datagram with its upper-case self, until the stream ends."""
    stream.settimeout(5)
    try:
        while True:
            stream.send(stream.recv().upper())
    except (OSError, TimeoutError):
        stream.close()


def test_each_source_is_a_session_and_boundaries_are_kept() -> None:
    seen: list[tuple] = []

    def serve(stream: SourceStream) -> None:
        seen.append(stream.source)
        _echo(stream)

    server = PacketSessions(_bound(), serve)
    server.start()
    address = server.sock.getsockname()
    a, b = _client(), _client()
    try:
        for word in (b"one", b"two", b"three"):
            a.sendto(word, address)
            b.sendto(word + b"!", address)
        assert [a.recv(100) for _ in range(3)] == [b"ONE", b"TWO", b"THREE"]
        assert [b.recv(100) for _ in range(3)] == [b"ONE!", b"TWO!", b"THREE!"]
        assert sorted(seen) == sorted([a.getsockname(), b.getsockname()])
    finally:
        a.close()
        b.close()
        server.close()


def test_idle_sources_end_and_come_back_as_new_sessions() -> None:
    opened: list[SourceStream] = []

    def serve(stream: SourceStream) -> None:
        opened.append(stream)
        try:
            while True:
                stream.send(stream.recv())
        except OSError:
            pass  # ended by the sweep

    server = PacketSessions(_bound(), serve, idle=0.2)
    server.start()
    client = _client()
    try:
        client.sendto(b"x", server.sock.getsockname())
        assert client.recv(10) == b"x"
        deadline = time.monotonic() + 3
        while server.sessions and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert not server.sessions and opened[0].closed
        client.sendto(b"y", server.sock.getsockname())
        assert client.recv(10) == b"y"
        assert len(opened) == 2
    finally:
        client.close()
        server.close()


def test_the_table_of_sources_is_bounded() -> None:
    server = PacketSessions(_bound(), _echo, max_sources=2)
    server.start()
    clients = [_client() for _ in range(3)]
    try:
        for client in clients:
            client.sendto(b"hi", server.sock.getsockname())
            gevent.sleep(0.05)
        assert clients[0].recv(10) == b"HI" and clients[1].recv(10) == b"HI"
        clients[2].settimeout(0.3)
        with pytest.raises(TimeoutError):
            clients[2].recv(10)
        assert server.dropped == 1 and len(server.sessions) == 2
    finally:
        for client in clients:
            client.close()
        server.close()


def test_one_sessions_socket_reads_one_datagram_a_turn_and_many_read_on() -> None:
    """A socket serving one source reads a datagram per callback (the next waits for the
    loop's next turn, nothing lost); with several sources (or none yet) it reads on."""
    got: dict[tuple, list[bytes]] = {}
    server = PacketSessions(_bound(), lambda stream: None)  # not started: turns by hand
    address = server.sock.getsockname()
    a, b = _client(), _client()

    def collect(source: tuple) -> None:
        server.sessions[source].attach_sink(got.setdefault(source, []).append)

    def settle() -> None:  # (loopback queues a datagram within sendto; never hang)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            readable, _, _ = select.select([server.sock], [], [], 0.5)
            if readable:
                return

    try:
        a.sendto(b"a1", address)
        settle()
        server._readable()  # no session yet: reads on, opens a's
        collect(a.getsockname())
        for word in (b"a2", b"a3"):
            a.sendto(word, address)
        settle()
        server._readable()
        assert got[a.getsockname()] == [b"a1", b"a2"]  # one datagram this turn
        server._readable()
        assert got[a.getsockname()] == [b"a1", b"a2", b"a3"]
        b.sendto(b"b1", address)
        settle()
        server._readable()
        collect(b.getsockname())
        for word in (b"a4", b"a5"):
            a.sendto(word, address)
        b.sendto(b"b2", address)
        settle()
        server._readable()  # two sessions: everything waiting, in one turn
        assert got[a.getsockname()][3:] == [b"a4", b"a5"]
        assert got[b.getsockname()] == [b"b1", b"b2"]
    finally:
        a.close()
        b.close()
        server.close()


def test_a_datagram_sent_makes_the_loop_linger_a_bounded_while() -> None:
    """After a datagram goes out the loop polls without sleeping (an idle watcher is
    active), for ``LINGER`` seconds only: then it sleeps in the poll again."""
    server = PacketSessions(_bound(), lambda stream: None)
    out = DatagramSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    out.sock.connect(server.sock.getsockname())
    watcher = None
    try:
        out.send(b"request")
        watcher = udp_module._linger.watcher
        assert watcher is not None and watcher.active
        deadline = time.monotonic() + 3
        while watcher.active and time.monotonic() < deadline:
            gevent.sleep(0.001)
        assert not watcher.active
        assert udp_module.LINGER <= 0.001  # (a while shorter than any wait worth a sleep)
    finally:
        out.close()
        server.close()


def test_a_full_queue_drops_and_garbage_is_just_data() -> None:
    server = PacketSessions(_bound(), lambda stream: None)  # nobody reads
    stream = SourceStream(server, ("127.0.0.1", 9))
    for _ in range(100):
        stream.deliver(b"\x00" * 1000)
    assert len(stream._items) == 16  # 16 KiB: the rest was dropped
    stream.close()
    with pytest.raises(ConnectionAbortedError):
        stream.recv()
    server.close()


def test_a_source_gets_a_socket_of_its_own_for_a_sibling() -> None:
    server = PacketSessions(_bound(), lambda stream: None)
    server.start()
    client = _client()
    try:
        stream = SourceStream(server, client.getsockname())
        own = stream.connected_socket()
        own.settimeout(2)
        client.sendto(b"to the sibling", server.sock.getsockname())
        assert own.recv(100) == b"to the sibling"  # the connected socket matches first
        own.send(b"answer")
        data, sender = client.recvfrom(100)
        assert data == b"answer" and sender == server.sock.getsockname()
        stream.close()
        assert own.fileno() == -1
    finally:
        client.close()
        server.close()


class _Recorder:
    def __init__(self) -> None:
        self.sessions: list[tuple[Session, object]] = []

    def handle(self, session: Session, stream: object) -> None:
        self.sessions.append((session, stream))


def test_dokodemo_dispatches_a_udp_session_per_source() -> None:
    recorder = _Recorder()
    inbound = DokodemoInbound("dns-in", "10.0.0.53", 53, False, recorder)  # type: ignore[arg-type]
    server = PacketSessions(_bound(), inbound.handle_datagrams)
    stream = SourceStream(server, ("127.0.0.1", 4444))
    inbound.handle_datagrams(stream)
    session, given = recorder.sessions[0]
    assert (session.target.network, session.target.address, session.target.port) == \
        ("udp", "10.0.0.53", 53)
    assert session.inbound_tag == "dns-in" and session.source == "127.0.0.1:4444"
    assert given is stream
    server.close()


def test_relay_keeps_datagram_boundaries_through_a_mux_udp_session() -> None:
    """Freedom's side: a mux UDP session ⇄ a connected UDP socket, one frame per datagram;
    oversized datagrams are dropped, the session goes on."""
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    tunnel = SocketStream(left)
    mux = MuxClient(tunnel, "t")
    gevent.spawn(mux.run)
    session = mux.open_session(NETWORK_UDP, "127.0.0.1", 9, b"first")
    written = []

    def collect() -> None:
        peer = SocketStream(right)
        while data := peer.recv():
            written.append(data)

    collector = gevent.spawn(collect)
    session.send(b"a" * 10)
    session.send(b"b" * (MAX_UDP_PAYLOAD + 1))  # dropped
    session.send(b"c" * MAX_UDP_PAYLOAD)
    gevent.sleep(0.2)
    wire = b"".join(written)
    # New frame with b"first", then two Keep frames: 10 and 2048 B; nothing of 2049 B.
    assert b"first" in wire and b"a" * 10 in wire and b"c" * MAX_UDP_PAYLOAD in wire
    assert b"b" * 100 not in wire
    session._deliver(b"x" * (MAX_UDP_PAYLOAD + 1))  # from the peer: dropped too
    session._deliver(b"y" * 3)
    session.settimeout(1)
    assert session.recv() == b"yyy"
    collector.kill()
    mux.close()


def test_datagram_stream_relay_keeps_boundaries() -> None:
    """A source's stream ⇄ a connected UDP socket (freedom's), spliced by the relay."""
    echo = _bound()
    echo_address = echo.getsockname()

    def echo_server() -> None:
        sock = gsocket.socket(fileno=echo.detach())
        while True:
            data, source = sock.recvfrom(65535)
            sock.sendto(data + b"/" + str(len(data)).encode(), source)

    echoer = gevent.spawn(echo_server)

    def serve(stream: SourceStream) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.connect(echo_address)
        relay(stream, DatagramSocket(upstream))

    server = PacketSessions(_bound(), serve)
    server.start()
    client = _client()
    try:
        for size in (1, 100, 3000):
            client.sendto(b"z" * size, server.sock.getsockname())
        answers = sorted(client.recv(65535) for _ in range(3))
        assert answers == sorted(b"z" * n + b"/" + str(n).encode() for n in (1, 100, 3000))
    finally:
        client.close()
        server.close()
        echoer.kill()


class _Pulled:
    """A datagram stream without sinks (as SOCKS' and Shadowsocks' UDP streams are): the
    relay gives it its pumps."""

    def __init__(self, stream: SourceStream) -> None:
        self.stream = stream

    def recv(self) -> bytes:
        return self.stream.recv()

    def send(self, data: bytes | memoryview) -> None:
        self.stream.send(bytes(data).upper())

    def close_write(self) -> None:
        pass

    def close(self) -> None:
        self.stream.close()

    def settimeout(self, seconds: float | None) -> None:
        self.stream.settimeout(seconds)


@pytest.mark.parametrize("pulled", [False, True], ids=["spliced", "pumped"])
def test_a_source_and_its_socket_end_together(pulled: bool) -> None:
    """Relayed to a connected UDP socket, spliced (no greenlet) or by the pumps: datagrams
    go both ways, and when the source is idle its session ends, the socket is closed and
    ``on_done`` runs."""
    echo = _bound()
    echo_address = echo.getsockname()
    done: list[DatagramSocket] = []

    def echo_server() -> None:
        sock = gsocket.socket(fileno=echo.detach())
        while True:
            data, source = sock.recvfrom(65535)
            sock.sendto(data[::-1], source)

    echoer = gevent.spawn(echo_server)

    def serve(stream: SourceStream) -> None:
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain.connect(echo_address)
        upstream = DatagramSocket(plain)
        relay(_Pulled(stream) if pulled else stream, upstream,
              on_done=lambda: done.append(upstream))

    server = PacketSessions(_bound(), serve, idle=0.2)
    server.start()
    client = _client()
    try:
        for word in (b"ab", b"cde"):
            client.sendto(word, server.sock.getsockname())
            assert client.recv(100) == (word[::-1].upper() if pulled else word[::-1])
        deadline = time.monotonic() + 3
        while not done and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert done and done[0].closed and done[0].sock.fileno() == -1
        assert not server.sessions
    finally:
        client.close()
        server.close()
        echoer.kill()


def test_a_refused_datagram_ends_the_spliced_session() -> None:
    """Nothing listens where freedom sends: the ICMP error ends the session (the source's
    next datagram opens a new one)."""
    nobody = _bound()
    refused = nobody.getsockname()
    nobody.close()
    sessions: list[SourceStream] = []

    def serve(stream: SourceStream) -> None:
        sessions.append(stream)
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain.connect(refused)
        relay(stream, DatagramSocket(plain))

    server = PacketSessions(_bound(), serve)
    server.start()
    client = _client()
    try:
        client.sendto(b"anyone?", server.sock.getsockname())
        deadline = time.monotonic() + 3
        while not (sessions and sessions[0].closed) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert sessions and sessions[0].closed and not server.sessions
    finally:
        client.close()
        server.close()


def test_a_handed_over_source_is_served_once_and_its_socket_closed() -> None:
    """The sibling's side: the source's own socket, one session started at once, closed
    with the session when it is idle."""
    listener = _bound()
    client = _client()
    got: list[bytes] = []

    def serve(stream: SourceStream) -> None:
        try:
            while True:
                data = stream.recv()
                got.append(data)
                stream.send(data[::-1])
        except OSError:
            pass

    try:
        own = SourceStream(PacketSessions(listener, _echo), client.getsockname()) \
            .connected_socket()
        sibling = PacketSessions(own, serve, idle=0.2, once=True)
        sibling.start()
        sibling.open(own.getpeername())
        client.sendto(b"abc", listener.getsockname())
        assert client.recv(10) == b"cba"
        deadline = time.monotonic() + 3
        while not sibling.closed and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert sibling.closed and own.fileno() == -1 and got == [b"abc"]
    finally:
        client.close()
        listener.close()


def test_instance_serves_dokodemo_udp_through_freedom() -> None:
    """A whole configuration, no tunnel: dokodemo-door "udp" alone -> freedom -> a UDP
    echo server; no TCP listener for that inbound."""
    from revproxy.config import parse_config
    from revproxy.instance import Instance

    echo, echoer = _echo_server()
    public = _tcp_and_udp_port()
    config = parse_config({
        "inbounds": [{"tag": "in", "listen": "127.0.0.1", "port": public,
                      "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": echo.getsockname()[1],
                                   "network": "udp"}}],
        "outbounds": [{"protocol": "freedom"}]}, "udp-test")
    instance = Instance(config)
    instance.start()
    client = _client()
    try:
        assert not instance.servers and len(instance.packet_servers) == 1
        for word in (b"a", b"bb"):
            client.sendto(word, ("127.0.0.1", public))
            assert client.recv(100) == b"echo:" + word
    finally:
        client.close()
        instance.stop_accepting()
        echoer.kill()
        echo.close()


def test_socks_udp_associate_datagrams_are_relayed() -> None:
    """SOCKS5 UDP: the client's datagrams carry their destination; answers come back with
    it; bad headers and fragments are dropped and the client goes on."""
    from revproxy.config import parse_config
    from revproxy.instance import Instance
    from revproxy.proxy.socks.codec import decode_udp, encode_udp

    echo, echoer = _echo_server()
    echo_port = echo.getsockname()[1]
    public = _tcp_and_udp_port()
    config = parse_config({
        "inbounds": [{"tag": "socks", "listen": "127.0.0.1", "port": public,
                      "protocol": "socks", "settings": {"udp": True}}],
        "outbounds": [{"protocol": "freedom"}]}, "socks-udp-test")
    instance = Instance(config)
    instance.start()
    client = _client()
    try:
        assert len(instance.packet_servers) == 1
        client.sendto(b"\x00\x00\x01garbage", ("127.0.0.1", public))  # fragment: dropped
        client.sendto(b"\x01", ("127.0.0.1", public))  # too short: dropped
        for word in (b"one", b"two"):
            client.sendto(encode_udp("127.0.0.1", echo_port, word), ("127.0.0.1", public))
            assert decode_udp(client.recv(100)) == ("127.0.0.1", echo_port, b"echo:" + word)
    finally:
        client.close()
        instance.stop_accepting()
        echoer.kill()
        echo.close()


@pytest.mark.parametrize("method", ["aes-128-gcm", "chacha20-poly1305", "none"])
def test_shadowsocks_udp_packets_are_relayed(method: str) -> None:
    """Shadowsocks UDP: sealed packets carry their destination; answers come back sealed
    with it; packets that fail to open are dropped and the client goes on."""
    from revproxy.config import parse_config
    from revproxy.instance import Instance
    from revproxy.proxy.shadowsocks.codec import decode_packet, encode_packet
    from revproxy.proxy.shadowsocks.crypto import METHODS, password_key

    echo, echoer = _echo_server()
    echo_port = echo.getsockname()[1]
    public = _tcp_and_udp_port()
    config = parse_config({
        "inbounds": [{"tag": "ss", "listen": "127.0.0.1", "port": public,
                      "protocol": "shadowsocks",
                      "settings": {"method": method, "password": "pw", "udp": True}}],
        "outbounds": [{"protocol": "freedom"}]}, "ss-udp-test")
    cipher = METHODS[method]
    key = password_key("pw", cipher.key_size)
    instance = Instance(config)
    instance.start()
    client = _client()
    try:
        assert len(instance.packet_servers) == 1
        client.sendto(os.urandom(60), ("127.0.0.1", public))  # fails to open: dropped
        for word in (b"one", b"two"):
            client.sendto(encode_packet(cipher, key, "127.0.0.1", echo_port, word),
                          ("127.0.0.1", public))
            destination, payload = decode_packet(cipher, key, client.recv(200))
            assert (destination.address, destination.port, payload) == \
                ("127.0.0.1", echo_port, b"echo:" + word)
    finally:
        client.close()
        instance.stop_accepting()
        echoer.kill()
        echo.close()
