"""Per-session flow control over real sockets: a mux client and server joined by a socket pair,
their sessions spliced to loopback TCP connections. One session whose socket stops taking
bytes (a visitor that stops reading, a backend that stops reading an upload) holds up the
others for its allowance at most; it is reset alone at its bounds and deadlines; what the
tunnel holds stays bounded; a slow reader loses nothing. Control frames (End, KeepAlive) are
bounded too. No timing is asserted: timeouts only keep a broken build from hanging."""

from __future__ import annotations

import dataclasses
import os
import socket as stdsocket
import struct

import gevent
import gevent.queue
import pytest
from gevent import socket

from revproxy.mux.client import MuxClient
from revproxy.mux.connection import (
    CONTROL_LIMIT,
    REPLY_LIMIT,
    WRITE_BUFFER,
    FlowLimits,
    MuxConnection,
    SessionReset,
)
from revproxy.mux.frame import (
    FLOW_HELLO,
    FLOW_PAUSE,
    FLOW_RESUME,
    MAX_STREAM_PAYLOAD,
    NETWORK_TCP,
    NETWORK_UDP,
    STATUS_KEEPALIVE,
    encode_flow,
    encode_keep,
    encode_new,
)
from revproxy.mux.server import MuxServer
from revproxy.net.relay import relay
from revproxy.net.stream import RECV_SIZE, SocketStream

from .sockets import plain

TIMEOUT = 20
BUFFER = 256 * 1024
NEVER = 3600.0  # a deadline no test reaches
SO_SNDBUFFORCE = 32  # (Linux; not in Python's socket module)
# What one tunnel read can deliver to one session at once, beyond a bound it was under: the
# read, plus the rest of a frame the previous read began.
ONE_DELIVERY = RECV_SIZE + MAX_STREAM_PAYLOAD


def limits(**changes: float) -> FlowLimits:
    """Small buffers, quick checks, no deadline unless a test sets one."""
    base = FlowLimits(buffer_size=BUFFER, stall_wait=0.2, hold_factor=2, full_timeout=NEVER,
                      write_timeout=NEVER, check_every=0.05, signals=False)
    return dataclasses.replace(base, **changes)


def tcp_pair(rcvbuf: int | None = None,
             sndbuf: int | None = None) -> tuple[socket.socket, stdsocket.socket]:
    """A loopback TCP connection: (outer, a gevent socket the test drives; inner, the plain
    non-blocking end a SocketStream takes). ``rcvbuf`` shrinks the outer end's receive buffer
    (set before connecting, so the window is small from the start) and the inner end's send
    buffer: the kernel then takes little of what the inner end sends while nobody reads.
    ``sndbuf`` sets the inner end's send buffer instead (beyond the sysctl limit, as root)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    outer = socket.socket()
    if rcvbuf is not None:
        outer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    outer.connect(listener.getsockname())
    inner, _ = listener.accept()
    listener.close()
    if sndbuf is not None:
        inner.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
    elif rcvbuf is not None:
        inner.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    return outer, plain(inner)


class Tunnel:
    """A portal-like MuxClient and a bridge-like MuxServer over a socket pair; every session
    the server accepts is relayed to a new TCP connection whose far end (the "backend") is
    queued; ``visit`` relays a new client session to a TCP connection (the "visitor")."""

    def __init__(self, flow: FlowLimits, backend_rcvbuf: int | None = None) -> None:
        a, b = socket.socketpair()
        self.backends: gevent.queue.Queue = gevent.queue.Queue()
        self.backend_rcvbuf = backend_rcvbuf
        self.client = MuxClient(SocketStream(plain(a)), "portal", flow)
        self.server = MuxServer(SocketStream(plain(b)), self._accept, "bridge", flow)
        self.runners = [gevent.spawn(self.client.run), gevent.spawn(self.server.run)]
        self.sockets: list = []

    def _accept(self, session, frame) -> None:
        outer, inner = tcp_pair(self.backend_rcvbuf)
        self.sockets += [outer, inner]
        relay(session, SocketStream(inner))
        self.backends.put(outer)

    def visit(self, rcvbuf: int | None = None, sndbuf: int | None = None):
        """(visitor socket, backend socket, the client's session)."""
        outer, inner = tcp_pair(rcvbuf, sndbuf)
        self.sockets += [outer, inner]
        session = self.client.open_session(NETWORK_TCP, "backend.example", 80)
        relay(SocketStream(inner), session)
        return outer, self.backends.get(timeout=TIMEOUT), session

    def close(self) -> None:
        self.client.close()
        self.server.close()
        gevent.joinall(self.runners, timeout=TIMEOUT)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def make_tunnel():
    made: list[Tunnel] = []

    def make(flow: FlowLimits, backend_rcvbuf: int | None = None) -> Tunnel:
        made.append(Tunnel(flow, backend_rcvbuf))
        return made[-1]

    yield make
    for tunnel in made:
        tunnel.close()


def wait_until(predicate, what: str) -> None:
    with gevent.Timeout(TIMEOUT, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.01)


def round_trips(visitor, backend, count: int = 20, size: int = 10_000) -> int:
    """``count`` request/response exchanges of ``size`` bytes each way; returns the count."""
    with gevent.Timeout(TIMEOUT):
        for i in range(count):
            request = bytes([i % 256]) * size
            visitor.sendall(request)
            got = b""
            while len(got) < size:
                got += backend.recv(65536)
            assert got == request
            backend.sendall(got[::-1])
            got = b""
            while len(got) < size:
                got += visitor.recv(65536)
            assert got == request[::-1]
    return count


def others_keep_flowing(tunnel: Tunnel, visitors: int = 5) -> None:
    pairs = [tunnel.visit()[:2] for _ in range(visitors)]
    done = gevent.joinall([gevent.spawn(round_trips, v, b) for v, b in pairs], raise_error=True)
    assert [g.value for g in done] == [20] * visitors


def read_exactly(sock, size: int, chunk: int = 65536, pause: float = 0.0) -> bytearray:
    """Read ``size`` bytes, ``chunk`` at most per read, ``pause`` s apart."""
    received = bytearray()
    with gevent.Timeout(TIMEOUT):
        while len(received) < size:
            received += sock.recv(chunk)
            if pause:
                gevent.sleep(pause)
    return received


def read_until_closed(sock) -> tuple[int, Exception | None]:
    """Read everything; (bytes read, the error that ended it or None for an orderly end)."""
    total = 0
    with gevent.Timeout(TIMEOUT):
        try:
            while data := sock.recv(65536):
                total += len(data)
        except OSError as exc:
            return total, exc
    return total, None


class Peak:
    """Samples ``conn.buffered`` (what its sessions hold) until stopped; keeps the maximum."""

    def __init__(self, conn: MuxConnection) -> None:
        self.conn = conn
        self.value = 0
        self._runner = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.value = max(self.value, self.conn.buffered)
            gevent.sleep(0.001)

    def stop(self) -> int:
        self._runner.kill()
        return self.value


def test_others_flow_while_one_visitor_does_not_read_and_it_loses_nothing(make_tunnel):
    tunnel = make_tunnel(limits())
    stalled, backend, session = tunnel.visit(rcvbuf=4096)
    data = bytes(range(256)) * (3 * BUFFER // 2 // 256)  # full, under twice the buffer
    sender = gevent.spawn(backend.sendall, data)
    wait_until(lambda: session._full_since, "the stalled session to be full")
    others_keep_flowing(tunnel)
    assert not session.closed  # full, but within its deadline and bounds
    assert tunnel.client.buffered < 2 * BUFFER
    assert read_exactly(stalled, len(data)) == data  # the visitor reads again: every byte, in order
    sender.get(timeout=TIMEOUT)
    wait_until(lambda: tunnel.client.buffered == 0, "the buffers to drain")


def test_a_slow_reader_gets_everything_and_the_tunnel_waits_for_it(make_tunnel):
    """A visitor slower than the tunnel keeps taking bytes: the reader waits for it (the
    tunnel's back-pressure) instead of resetting it, however much it downloads."""
    tunnel = make_tunnel(limits(stall_wait=NEVER / 2))
    peak = Peak(tunnel.client)
    slow, backend, session = tunnel.visit(rcvbuf=4096)
    data = bytes(range(256)) * (8 * BUFFER // 256)  # four hold limits
    sender = gevent.spawn(backend.sendall, data)
    assert read_exactly(slow, len(data), 16384, 0.001)  # slower than the tunnel == data
    sender.get(timeout=TIMEOUT)
    assert not session.closed
    assert peak.stop() < BUFFER + ONE_DELIVERY  # the reader waited at the buffer size


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_SNDBUFFORCE needs root")
def test_a_slow_reader_behind_a_big_send_buffer_is_not_taken_for_a_stalled_one(make_tunnel):
    """The kernel reports a socket writable again only when a third of its send buffer has
    drained: behind a 2 MiB buffer, a visitor reading 0.5 MB/s takes nothing, as far as
    writes can tell, for longer than ``stall_wait``. What its peer acknowledges shows that it
    moves on, so the reader waits for it instead of resetting it."""
    small = 64 * 1024
    tunnel = make_tunnel(limits(buffer_size=small, stall_wait=0.3))
    slow, backend, session = tunnel.visit(rcvbuf=4096, sndbuf=1024 * 1024)
    data = bytes(range(256)) * ((2 * 1024 * 1024 + 6 * small) // 256)
    sender = gevent.spawn(backend.sendall, data)
    assert read_exactly(slow, len(data), 4096, 0.008) == data
    sender.get(timeout=TIMEOUT)
    assert not session.closed


def test_a_session_full_past_its_deadline_is_reset_alone(make_tunnel):
    tunnel = make_tunnel(limits(full_timeout=0.3))
    stalled, backend, session = tunnel.visit(rcvbuf=4096)
    data = b"x" * (3 * BUFFER // 2)  # full, under twice the buffer
    gevent.spawn(backend.sendall, data)
    wait_until(lambda: session._full_since, "the stalled session to be full")
    wait_until(lambda: session.closed, "the full session to be reset")
    read, error = read_until_closed(stalled)
    assert read < len(data)
    assert isinstance(error, ConnectionResetError)  # closed with a reset, not a clean end
    assert read_until_closed(backend)[0] == 0  # the bridge's side ended too
    assert tunnel.client.buffered == 0
    others_keep_flowing(tunnel)


def test_a_flooded_session_is_reset_at_its_hold_limit_and_memory_stays_bounded(make_tunnel):
    tunnel = make_tunnel(limits())
    peak = Peak(tunnel.client)
    stalled, backend, session = tunnel.visit(rcvbuf=4096)
    flood = gevent.spawn(backend.sendall, b"y" * (64 * BUFFER))
    others = gevent.spawn(others_keep_flowing, tunnel)
    wait_until(lambda: session.closed, "the flooded session to be reset")
    others.get(timeout=TIMEOUT)
    assert peak.stop() < 2 * BUFFER + ONE_DELIVERY
    assert isinstance(read_until_closed(stalled)[1], ConnectionResetError)
    with pytest.raises(OSError), gevent.Timeout(TIMEOUT):
        flood.get()  # the backend's connection was closed under it
    assert tunnel.client.buffered == 0


def test_a_socket_that_takes_nothing_is_reset_after_the_write_timeout(make_tunnel):
    tunnel = make_tunnel(limits(write_timeout=0.3))
    stalled, backend, session = tunnel.visit(rcvbuf=4096)
    backend.sendall(b"z" * (BUFFER // 2))  # not full: only the write timeout applies
    wait_until(lambda: session._buffered, "bytes held for the stalled socket")
    assert not session._full_since
    wait_until(lambda: session.closed, "the stalled session to be reset")
    assert isinstance(read_until_closed(stalled)[1], ConnectionResetError)
    others_keep_flowing(tunnel)


def test_a_backend_that_stops_reading_an_upload_is_reset_alone(make_tunnel):
    tunnel = make_tunnel(limits(full_timeout=0.3), backend_rcvbuf=4096)
    visitor, backend, _ = tunnel.visit()
    uploader = gevent.spawn(visitor.sendall, b"u" * (64 * BUFFER))
    peak = Peak(tunnel.server)
    wait_until(lambda: tunnel.server.active_sessions == 0, "the bridge's session to be reset")
    assert peak.stop() < 2 * BUFFER + ONE_DELIVERY
    with pytest.raises(OSError), gevent.Timeout(TIMEOUT):
        uploader.get()  # the visitor's upload fails: its connection was reset
    read, error = read_until_closed(backend)
    assert read < 64 * BUFFER
    assert isinstance(error, ConnectionResetError)  # the backend too saw a reset
    others_keep_flowing(tunnel)


def test_the_tunnel_bound_resets_the_sessions_holding_most(make_tunnel):
    tunnel = make_tunnel(limits(tunnel_buffer=3 * BUFFER))
    peak = Peak(tunnel.client)
    stalled = [tunnel.visit(rcvbuf=4096) for _ in range(4)]
    for _, backend, _ in stalled:  # each alone stays under its own bounds
        gevent.spawn(backend.sendall, b"w" * (3 * BUFFER // 2))
    wait_until(lambda: sum(s.closed for _, _, s in stalled) >= 2, "resets at the tunnel bound")
    assert peak.stop() < 3 * BUFFER + ONE_DELIVERY
    assert tunnel.client.buffered <= 3 * BUFFER
    others_keep_flowing(tunnel)


def test_a_session_nobody_reads_does_not_block_the_tunnel_reader(make_tunnel):
    """A session used as a stream (``recv``), whose reader is busy elsewhere, is bounded the
    same way instead of making the tunnel's reader wait."""
    tunnel = make_tunnel(limits())
    unread = tunnel.client.open_session(NETWORK_TCP, "backend.example", 80)
    backend = tunnel.backends.get(timeout=TIMEOUT)
    gevent.spawn(backend.sendall, b"v" * (8 * BUFFER))
    others_keep_flowing(tunnel)
    wait_until(lambda: tunnel.client.buffered == 0, "the unread session to be reset")
    with pytest.raises(SessionReset), gevent.Timeout(TIMEOUT):
        unread.recv()
    unread.close()


def test_a_udp_session_nobody_reads_drops_datagrams_instead():
    peer, theirs = socket.socketpair()
    accepted = gevent.queue.Queue()
    server = MuxServer(SocketStream(plain(theirs)), lambda s, f: accepted.put(s), "server",
                       limits())
    runner = gevent.spawn(server.run)
    datagram = b"d" * 1000
    count = 4 * BUFFER // len(datagram)
    frames = encode_new(7, NETWORK_UDP, "127.0.0.1", 53) + encode_keep(7, datagram) * count
    with gevent.Timeout(TIMEOUT):
        peer.sendall(frames)
        while server.bytes_received < len(frames):
            gevent.sleep(0.01)
    session = accepted.get(timeout=TIMEOUT)
    assert not session.closed  # datagrams were dropped, the session lives on
    assert BUFFER <= session._buffered < BUFFER + len(datagram)
    with gevent.Timeout(TIMEOUT):
        assert session.recv() == datagram
    server.close()
    runner.join(TIMEOUT)
    peer.close()


# -- control frames


class SilentPeer:
    """The far end of a MuxServer that writes frames and never reads; the server's tunnel
    socket has a small send buffer so the queue fills quickly."""

    def __init__(self, accept=None, flow: FlowLimits | None = None) -> None:
        self.sock, theirs = socket.socketpair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server = MuxServer(SocketStream(plain(theirs)), accept or (lambda s, f: None),
                                "server", flow or limits())
        self.runner = gevent.spawn(self.server.run)

    def close(self) -> None:
        self.server.close()
        self.runner.join(TIMEOUT)
        self.sock.close()


def test_replies_to_unknown_sessions_stay_bounded_when_the_peer_never_reads():
    peer = SilentPeer()
    frames = b"".join(encode_keep(id_ % 60000 + 1, b"k") for id_ in range(50_000))
    queued = []
    with gevent.Timeout(TIMEOUT):
        for start in range(0, len(frames), 65536):
            peer.sock.sendall(frames[start:start + 65536])
            gevent.sleep(0)
            queued.append(peer.server._out_size)
        while peer.server.bytes_received < len(frames):
            gevent.sleep(0.01)
    assert max(queued) <= REPLY_LIMIT + 8
    assert not peer.server.closed  # unanswered courtesy is no reason to close
    peer.close()


def test_a_peer_that_never_reads_its_end_frames_loses_the_tunnel():
    """Every session the peer opens is closed at once (an End each); the peer never reads."""
    peer = SilentPeer(accept=lambda session, frame: gevent.spawn(session.close))
    with gevent.Timeout(TIMEOUT):
        session_id = 0
        while not peer.server.closed:
            batch = b"".join(encode_new(session_id + i + 1, NETWORK_TCP, "a.b", 1)
                             for i in range(1000))
            session_id = (session_id + 1000) % 60000
            try:
                peer.sock.sendall(batch)
            except OSError:
                break  # the server closed the tunnel
            gevent.sleep(0.01)
            assert peer.server._control_queued <= CONTROL_LIMIT
    assert peer.server.closed
    peer.close()


def test_a_tunnel_that_takes_nothing_is_closed_after_its_write_timeout():
    peer = SilentPeer(flow=limits(tunnel_write_timeout=0.3))
    sender = gevent.spawn(peer.server.write, b"\0" * (2 * WRITE_BUFFER))
    wait_until(lambda: peer.server.closed, "the stuck tunnel to be closed")
    sender.join(TIMEOUT)
    peer.close()


def test_a_keepalive_never_waits_for_a_congested_tunnel():
    peer = SilentPeer()
    big = b"\0" * (2 * WRITE_BUFFER)
    writer = gevent.spawn(lambda: [peer.server.write(big) for _ in range(3)])  # the first
    wait_until(lambda: peer.server.congested, "a congested tunnel")  # is taken, one queued
    with gevent.Timeout(TIMEOUT):
        peer.server.send_keepalive()  # returns at once
    writer.kill()
    peer.close()


class _Acks:
    def __init__(self, round_trip: float) -> None:
        self._round_trip = round_trip

    def unsent(self) -> int:
        return 0

    def round_trip(self) -> float:
        return self._round_trip


def test_the_allowance_without_progress_is_four_round_trips_of_a_far_socket(make_tunnel):
    tunnel = make_tunnel(limits(stall_wait=0.25))
    session = tunnel.client.open_session(NETWORK_TCP, "backend.example", 80)
    assert session.allowance(tunnel.client.limits, True) == 0.25  # no socket: stall_wait
    session.acks = _Acks(0.2)  # a visitor 200 ms away
    assert session.allowance(tunnel.client.limits, True) == pytest.approx(0.8)
    session.acks = _Acks(0.00005)  # loopback: stall_wait
    assert session.allowance(tunnel.client.limits, True) == 0.25
    # Soon after a session gave no progress: stall_after, or four round trips.
    assert session.allowance(tunnel.client.limits, False) == tunnel.client.limits.stall_after
    session.acks = _Acks(0.2)
    assert session.allowance(tunnel.client.limits, False) == pytest.approx(0.8)
    session.close()


# -- with the peer's PAUSE/RESUME signals (both ends revproxy)
#
# The tests above are a revproxy end facing a peer that offers no signals, as V2Ray's ends do.
# Between two revproxy ends a full session asks its peer to stop sending on it instead: the
# reader never waits for it. The reader's allowance is set beyond every timeout here, so a
# reader that waited would fail the test rather than slow it.


def encode_keepalive_with(data: bytes) -> bytes:
    """A KeepAlive frame for session 0 carrying ``data`` (V2Ray reads and discards these)."""
    return struct.pack(">HHBBH", 4, 0, STATUS_KEEPALIVE, 1, len(data)) + data


def signalled(**changes: float) -> FlowLimits:
    """As ``limits``, with signals; a bound far above what a paused session holds (what was
    in flight when the pause went out: the peer's write queue and the socket pair's buffers)."""
    return limits(**{"signals": True, "stall_wait": NEVER / 2, "hold_factor": 16, **changes})


def test_a_visitor_that_stops_reading_is_paused_and_the_others_never_wait(make_tunnel):
    tunnel = make_tunnel(signalled())
    peak = Peak(tunnel.client)
    stalled, backend, session = tunnel.visit(rcvbuf=4096)
    data = bytes(range(256)) * (64 * BUFFER // 256)  # four times the hold limit
    sender = gevent.spawn(backend.sendall, data)
    wait_until(lambda: session._paused_peer, "the stalled session to be paused")
    others_keep_flowing(tunnel)
    assert not session.closed and not sender.dead  # the backend waits, nothing is reset
    assert peak.value < 16 * BUFFER
    assert read_exactly(stalled, len(data)) == data  # the visitor reads again: every byte, in order
    sender.get(timeout=TIMEOUT)
    assert peak.stop() < 16 * BUFFER
    wait_until(lambda: not session._paused_peer and tunnel.client.buffered == 0,
               "the session to be resumed and drained")


def test_a_slow_reader_paces_its_backend_while_the_others_never_wait(make_tunnel):
    tunnel = make_tunnel(signalled())
    slow, backend, session = tunnel.visit(rcvbuf=4096)
    data = bytes(range(256)) * (16 * BUFFER // 256)
    sender = gevent.spawn(backend.sendall, data)
    others = gevent.spawn(others_keep_flowing, tunnel)
    assert read_exactly(slow, len(data), 16384, 0.001)  # slower than the tunnel == data
    sender.get(timeout=TIMEOUT)
    others.get(timeout=TIMEOUT)
    assert not session.closed


def test_a_backend_that_stops_reading_pauses_the_upload_and_loses_nothing(make_tunnel):
    tunnel = make_tunnel(signalled(), backend_rcvbuf=4096)
    visitor, backend, session = tunnel.visit()
    data = bytes(range(256)) * (64 * BUFFER // 256)
    uploader = gevent.spawn(visitor.sendall, data)
    wait_until(lambda: session.paused, "the visitor's session to be paused by the bridge")
    peak = Peak(tunnel.server)
    others_keep_flowing(tunnel)
    assert not uploader.dead and tunnel.server.active_sessions == 6  # waiting, not reset
    assert read_exactly(backend, len(data)) == data  # the backend reads again
    uploader.get(timeout=TIMEOUT)
    assert peak.stop() < 16 * BUFFER


def test_a_greenlet_sending_on_a_paused_session_waits_for_resume(make_tunnel):
    tunnel = make_tunnel(signalled(write_timeout=NEVER))
    session = tunnel.client.open_session(NETWORK_TCP, "backend.example", 80)
    backend = tunnel.backends.get(timeout=TIMEOUT)
    tunnel.server.send_flow(session.id, FLOW_PAUSE)
    wait_until(lambda: session.paused, "the pause to arrive")
    sender = gevent.spawn(session.send, b"after the pause")
    gevent.sleep(0.1)
    assert not sender.dead  # still waiting
    tunnel.server.send_flow(session.id, FLOW_RESUME)
    sender.get(timeout=TIMEOUT)
    with gevent.Timeout(TIMEOUT):
        assert backend.recv(100) == b"after the pause"
    session.close()


def paused_session(tunnel: Tunnel):
    """A new client session its peer (the server) has paused."""
    session = tunnel.client.open_session(NETWORK_TCP, "backend.example", 80)
    tunnel.backends.get(timeout=TIMEOUT)
    tunnel.server.send_flow(session.id, FLOW_PAUSE)
    wait_until(lambda: session.paused, "the pause to arrive")
    return session


def test_a_sender_paused_too_long_gives_up_and_a_reset_or_close_wakes_it(make_tunnel):
    tunnel = make_tunnel(signalled(write_timeout=0.3))
    with pytest.raises(TimeoutError), gevent.Timeout(TIMEOUT):
        paused_session(tunnel).send(b"never resumed")
    for end in ("reset by the peer", "closed on this side"):
        session = paused_session(tunnel)
        sender = gevent.spawn(session.send, b"x")
        gevent.sleep(0.05)
        if end == "reset by the peer":
            tunnel.server.sessions[session.id].reset("test")
        else:
            session.close()
        with pytest.raises(ConnectionResetError), gevent.Timeout(TIMEOUT):
            sender.get()


def test_udp_sessions_and_unknown_data_ignore_signals(make_tunnel):
    tunnel = make_tunnel(signalled())
    udp = tunnel.client.open_session(NETWORK_UDP, "127.0.0.1", 53)
    tunnel.server.send_flow(udp.id, FLOW_PAUSE)
    tunnel.server._queue_control(encode_keepalive_with(b"someone else's data"))
    tcp_session = tunnel.client.open_session(NETWORK_TCP, "backend.example", 80)
    tunnel.server.send_flow(tcp_session.id, FLOW_PAUSE)  # after the others: a marker
    wait_until(lambda: tcp_session.paused, "the signals to arrive")
    assert not udp.paused and not tunnel.client.closed


def test_without_the_peers_hello_no_pause_is_sent(make_tunnel):
    """A peer that did not say hello (V2Ray) is never sent PAUSE: the reader's allowance
    applies instead (the tests above this section)."""
    tunnel = make_tunnel(limits())
    assert not tunnel.client.peer_flow
    stalled, backend, session = tunnel.visit(rcvbuf=4096)
    gevent.spawn(backend.sendall, b"s" * (3 * BUFFER // 2))
    wait_until(lambda: session._full_since, "the stalled session to be full")
    assert not session._paused_peer


def test_a_peer_that_says_hello_but_ignores_pause_meets_the_tunnel_bound():
    """What a paused session receives is bounded by the tunnel's bound, not its own (it was in
    flight): a peer that goes on sending after PAUSE loses that session at the tunnel bound."""
    peer, theirs = socket.socketpair()
    made: list = []

    def accept(session, frame) -> None:
        outer, inner = tcp_pair(rcvbuf=4096)  # a backend that never reads
        made.extend((outer, inner))
        relay(session, SocketStream(inner))

    server = MuxServer(SocketStream(plain(theirs)), accept, "server",
                       signalled(tunnel_buffer=4 * BUFFER))
    runner = gevent.spawn(server.run)
    peak = Peak(server)
    peer.sendall(encode_flow(0, FLOW_HELLO) + encode_new(1, NETWORK_TCP, "a.b", 1))
    wait_until(lambda: server.sessions, "the session")
    session = server.sessions[1]
    frame = encode_keep(1, b"f" * MAX_STREAM_PAYLOAD)
    with gevent.Timeout(TIMEOUT):
        while not session.closed:
            peer.sendall(frame * 8)
            gevent.sleep(0)
    assert peak.stop() < 4 * BUFFER + ONE_DELIVERY
    assert not server.closed and server.buffered == 0
    server.close()
    runner.join(TIMEOUT)
    peer.close()
    for sock in made:
        sock.close()
