"""The hand-off between workers: the metadata codec (without sockets, fuzzed), the ancillary
data parser, and the channel's sender and receiving loop over real Unix sockets in a private
directory: who may send, what is refused, that every refused descriptor is closed, that a
visitor the receiver cannot take is reset, and that the loop goes on."""

from __future__ import annotations

import array
import itertools
import logging
import os
import resource
import select
import socket
import stat
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.net.session import Session, Target
from revproxy.server import handoff
from revproxy.server.handoff import Handoff, HandoffError, Receiver

EXAMPLE = Handoff(7, "portal", "tcp", "example.com", 80, "192.0.2.1:4242", "public",
                  "user@example.com", b"GET / HTTP/1.1\r\n\r\n", level=3)


# -- the codec


def test_a_hand_off_survives_encoding() -> None:
    for example in (EXAMPLE, Handoff(1, "p", "udp", "2001:db8::1", 0, ""),
                    Handoff(0xFFFFFFFF, "порта́л", "tcp", "例え.jp", 65535, "[::1]:1", None,
                            "é", b"\x00" * 100, level=0xFFFFFFFF)):
        assert Handoff.decode(example.encode()) == example


def test_a_session_travels_with_its_routing() -> None:
    session = Session(Target("tcp", "example.com", 80), "public", source="192.0.2.1:4242",
                      email="user@example.com", level=2, first_payload=b"hello")
    offer = Handoff.of_session(session, "portal", 3)
    received = Handoff.decode(offer.encode()).session()
    assert received.target == session.target
    assert (received.inbound_tag, received.source, received.email) == \
        ("public", "192.0.2.1:4242", "user@example.com")
    assert (received.outbound_tag, received.tunnel_id, received.first_payload) == \
        ("portal", 3, b"hello")
    assert received.level == 2  # the receiver applies the visitor's level's limits


def test_a_session_without_a_level_travels_at_level_0() -> None:
    session = Session(Target("tcp", "example.com", 80), "public")
    assert Handoff.decode(Handoff.of_session(session, "portal", 3).encode()).level == 0


@pytest.mark.parametrize("change, problem", [
    (lambda data: b"\x01" + data[1:], "version 1"),  # before the level
    (lambda data: b"", "no data"),
    (lambda data: data[:1] + b"\x03" + data[2:], "network"),
    (lambda data: data[:2] + b"\x80" + data[3:], "flags"),
    (lambda data: data[:3] + b"\x00\x00\x00\x00" + data[7:], "tunnel id 0"),
    (lambda data: data[:5], "too short"),
    (lambda data: data[:12], "too short"),
    (lambda data: data[:14], "cut short"),
    (lambda data: data[:13] + b"\x04\x01" + data[15:], "a text field of 1025"),
    (lambda data: data[:15] + b"\xff" + data[16:], "UTF-8"),
    (lambda data: data[:15] + b"\n" + data[16:], "control characters"),
])
def test_malformed_metadata_is_refused(change, problem) -> None:
    with pytest.raises(HandoffError, match=problem):
        Handoff.decode(change(EXAMPLE.encode()))


def test_an_empty_address_is_refused() -> None:
    with pytest.raises(HandoffError, match="empty"):
        Handoff.decode(Handoff(1, "portal", "tcp", "", 80, "x").encode())


def test_what_cannot_be_encoded_says_so() -> None:
    for bad in (Handoff(1, "portal", "sctp", "a", 1, ""), Handoff(0, "portal", "tcp", "a", 1, ""),
                Handoff(1, "portal", "tcp", "a" * 1025, 1, ""),
                Handoff(1, "portal", "tcp", "a\nb", 1, ""), Handoff(1, "", "tcp", "a", 1, ""),
                Handoff(1, "portal", "tcp", "\udcff", 1, ""),
                Handoff(1, "portal", "tcp", "a", 1, "", first_payload=bytes(200_000)),
                Handoff(1, "portal", "tcp", "a", 1, "", level=-1),
                Handoff(1, "portal", "tcp", "a", 1, "", level=2**32)):
        with pytest.raises(HandoffError):
            bad.encode()


def _text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp", "Co",
                                                       "Cn", "Zs")),
                   max_size=max_size).filter(str.isprintable)


@given(st.builds(Handoff, st.integers(1, 0xFFFFFFFF), _text().filter(bool),
                 st.sampled_from(["tcp", "udp"]), _text(255).filter(bool),
                 st.integers(0, 0xFFFF), _text(), st.none() | _text(), st.none() | _text(),
                 st.binary(max_size=2000), st.booleans(), st.integers(0, 0xFFFFFFFF)))
def test_any_valid_hand_off_survives_encoding(offer: Handoff) -> None:
    assert Handoff.decode(offer.encode()) == offer


@given(st.binary(max_size=600))
def test_decoding_any_bytes_gives_a_hand_off_or_a_hand_off_error(data: bytes) -> None:
    try:
        Handoff.decode(data)
    except HandoffError:
        pass


@given(st.integers(0, 200), st.integers(0, 255))
def test_decoding_a_damaged_hand_off_gives_a_hand_off_or_a_hand_off_error(
        where: int, value: int) -> None:
    data = bytearray(EXAMPLE.encode())
    data[where % len(data)] = value
    try:
        decoded = Handoff.decode(bytes(data))
    except HandoffError:
        return
    assert decoded.tunnel_id > 0 and decoded.network in ("tcp", "udp") and decoded.address


def test_the_ancillary_data_gives_descriptors_and_credentials() -> None:
    fds = array.array("i", [5, 6]).tobytes()
    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds + b"\x01\x02"),  # a cut int is left
               (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", 10, 20, 30)),
               (socket.IPPROTO_IP, socket.SCM_RIGHTS, fds)]  # another level: not ours
    assert handoff.parse_ancillary(ancdata) == ([5, 6], (10, 20, 30))
    assert handoff.parse_ancillary([]) == ([], None)


# -- the channel


@pytest.fixture
def directory(tmp_path):
    path = tmp_path / "handoff"
    path.mkdir(0o700)
    return str(path)


@pytest.fixture
def tcp_pair():
    """A connected TCP pair: (the visitor's end, the served end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    yield client, served
    client.close()
    served.close()


def reset_seen(client: socket.socket) -> bool:
    """Whether the peer of ``client`` reset the connection (rather than closing it)."""
    client.settimeout(5)
    try:
        client.recv(100)
    except ConnectionResetError:
        return True
    return False


class Stop(Exception):
    pass


class Loop:
    """A receiver over a real endpoint, run for a given number of wake-ups."""

    def __init__(self, directory: str, siblings: set[int], refusal=None) -> None:
        self.endpoint = handoff.bind_endpoint(directory, os.getpid())
        self.served: list[tuple[Session, socket.socket]] = []
        self.sleeps: list[float] = []
        self.turns = 0
        self.receiver = Receiver(
            self.endpoint, handoff.endpoint_path(directory, os.getpid()),
            is_sibling=siblings.__contains__, refusal=refusal or (lambda offer: None),
            serve=lambda session, sock: self.served.append((session, sock)),
            wait_readable=self._wait, sleep=self.sleeps.append)

    def _wait(self, fd: int) -> None:
        if self.turns <= 0:
            raise Stop
        self.turns -= 1

    def run(self, turns: int = 1) -> None:
        self.turns = turns
        with pytest.raises(Stop):
            self.receiver.run()

    def close(self) -> None:
        for _, sock in self.served:
            sock.close()
        self.receiver.close()


def wait_writable(fd: int, timeout: float) -> None:
    """What gevent's wait_write does, without gevent."""
    if not select.select([], [fd], [], timeout)[1]:
        raise TimeoutError


@pytest.fixture
def sender(directory):
    made = handoff.Sender(directory, wait_writable)
    yield made
    made.close()


@pytest.fixture
def raw():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def send_raw(sender: socket.socket, directory: str, data: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sender.sendmsg([data], ancillary, 0, handoff.endpoint_path(directory, os.getpid()))


def test_the_endpoint_is_private(directory) -> None:
    endpoint = handoff.bind_endpoint(directory, 12345)
    try:
        mode = os.stat(handoff.endpoint_path(directory, 12345)).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert endpoint.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
    finally:
        endpoint.close()


def test_no_endpoint_in_a_directory_others_can_enter(tmp_path) -> None:
    os.chmod(tmp_path, 0o755)
    with pytest.raises(OSError, match="not private"):
        handoff.bind_endpoint(str(tmp_path), 12345)


def test_the_master_makes_and_removes_a_private_directory() -> None:
    path = handoff.create_directory()
    try:
        info = os.lstat(path)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.geteuid()
        handoff.bind_endpoint(path, 4242).close()  # what a worker leaves behind
    finally:
        handoff.remove_directory(path)
    assert not os.path.exists(path)


def test_a_sibling_hands_a_visitor_over(directory, sender, tcp_pair) -> None:
    client, served = tcp_pair
    loop = Loop(directory, {os.getpid()})
    try:
        sender.send(os.getpid(), EXAMPLE, served)
        served.close()  # the sender's copy
        loop.run()
        [(session, visitor)] = loop.served
        assert session.outbound_tag == "portal" and session.tunnel_id == 7
        assert session.first_payload == EXAMPLE.first_payload
        # Taken: an orderly close again, and non-blocking for SocketStream.
        assert visitor.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == bytes(8)
        assert not visitor.getblocking()
        visitor.sendall(b"served")
        assert client.recv(100) == b"served"
        assert loop.receiver.taken == 1
    finally:
        loop.close()


def test_a_refused_visitor_is_reset_and_the_loop_goes_on(directory, sender, tcp_pair,
                                                          caplog) -> None:
    client, served = tcp_pair
    loop = Loop(directory, {os.getpid()}, refusal=lambda offer: "no such tunnel")
    try:
        sender.send(os.getpid(), EXAMPLE, served)
        served.close()
        with caplog.at_level(logging.WARNING, "revproxy"):
            loop.run()
        assert loop.served == [] and loop.receiver.lost == 1
        assert "is lost: no such tunnel" in caplog.text
        assert reset_seen(client)
    finally:
        loop.close()


def test_a_stranger_with_our_uid_is_refused(directory, raw, tcp_pair, caplog) -> None:
    _, served = tcp_pair
    pipe_r, pipe_w = os.pipe()
    loop = Loop(directory, siblings=set())  # our own pid is no sibling of ours
    try:
        send_raw(raw, directory, EXAMPLE.encode(), [served.fileno()])
        send_raw(raw, directory, b"garbage", [pipe_r, pipe_w])
        send_raw(raw, directory, b"", [])
        with caplog.at_level(logging.WARNING, "revproxy"):
            loop.run(3)
        assert loop.served == [] and loop.receiver.refused == 3
        assert "not a sibling" in caplog.text
        # Each of them closed: the pipe's write end is open only here now.
        os.close(pipe_w)
        assert os.read(pipe_r, 1) == b""
    finally:
        os.close(pipe_r)
        loop.close()


def test_a_sibling_sending_garbage_loses_nothing_else(directory, sender, raw,
                                                      tcp_pair) -> None:
    client, served = tcp_pair
    pipe_r, pipe_w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listening = socket.create_server(("127.0.0.1", 0))
    loop = Loop(directory, {os.getpid()})
    try:
        send_raw(raw, directory, b"\x01garbage", [served.fileno()])
        send_raw(raw, directory, EXAMPLE.encode(), [pipe_w])
        send_raw(raw, directory, EXAMPLE.encode(), [udp.fileno()])
        send_raw(raw, directory, EXAMPLE.encode(), [listening.fileno()])
        send_raw(raw, directory, EXAMPLE.encode(), [])
        send_raw(raw, directory, EXAMPLE.encode(), [served.fileno(), pipe_w])
        before = len(os.listdir("/proc/self/fd"))
        loop.run(6)
        assert len(os.listdir("/proc/self/fd")) == before  # every received copy closed
        assert loop.served == [] and loop.receiver.lost == 6
        # ... and a good one after all that is still served
        sender.send(os.getpid(), EXAMPLE, served)
        loop.run()
        assert len(loop.served) == 1 and loop.receiver.taken == 1
    finally:
        for sock in (udp, listening):
            sock.close()
        os.close(pipe_r)
        os.close(pipe_w)
        loop.close()
    assert client.fileno() >= 0


def test_a_failing_serve_closes_the_visitor(directory, sender, tcp_pair, caplog) -> None:
    client, served = tcp_pair
    loop = Loop(directory, {os.getpid()})

    def broken(session: Session, sock: socket.socket) -> None:
        raise RuntimeError("bug")

    loop.receiver.serve = broken
    try:
        sender.send(os.getpid(), EXAMPLE, served)
        served.close()
        loop.run()
        assert loop.receiver.lost == 1 and "is lost" in caplog.text
        assert reset_seen(client)
    finally:
        loop.close()


def test_out_of_descriptors_the_hand_offs_wait(directory, sender, tcp_pair,
                                               monkeypatch) -> None:
    _, served = tcp_pair
    spare = itertools.chain([False, False], itertools.repeat(True))
    monkeypatch.setattr(handoff, "_descriptor_to_spare", lambda fd: next(spare))
    loop = Loop(directory, {os.getpid()})
    try:
        sender.send(os.getpid(), EXAMPLE, served)
        loop.run()
        assert loop.sleeps == [0.01, 0.02]  # waited, then took it
        assert len(loop.served) == 1
    finally:
        loop.close()


def test_a_visitor_lost_for_want_of_descriptors_is_reset_and_logged(directory, sender,
                                                                   tcp_pair, caplog) -> None:
    client, served = tcp_pair
    loop = Loop(directory, {os.getpid()})
    sender.send(os.getpid(), EXAMPLE, served)
    served.close()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    try:
        # No descriptor free: the kernel cannot install the visitor and drops it.
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        filler = []
        try:
            while True:
                filler.append(os.dup(0))
        except OSError:
            pass
        message = loop.endpoint.recvmsg(handoff.MAX_DATAGRAM + 1, handoff._ANCILLARY_SPACE)
        for fd in filler:
            os.close(fd)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    data, ancdata, flags, _ = message
    assert flags & socket.MSG_CTRUNC
    with caplog.at_level(logging.WARNING, "revproxy"):
        assert not loop.receiver.take(data, ancdata, flags)
    assert "no descriptor to receive the visitor with" in caplog.text
    assert reset_seen(client)
    loop.close()


def test_sending_to_a_gone_worker_fails_and_keeps_the_visitor(directory, sender,
                                                               tcp_pair) -> None:
    client, served = tcp_pair
    with pytest.raises(FileNotFoundError):
        sender.send(999_999, EXAMPLE, served)
    assert served.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == bytes(8)
    served.sendall(b"still mine")
    assert client.recv(100) == b"still mine"


def test_a_worker_that_takes_nothing_times_the_sender_out(directory, tcp_pair) -> None:
    _, served = tcp_pair
    endpoint = handoff.bind_endpoint(directory, os.getpid())  # never read
    waits: list[float] = []

    def wait(fd: int, timeout: float) -> None:
        waits.append(timeout)
        wait_writable(fd, timeout)

    sender = handoff.Sender(directory, wait)
    try:
        with pytest.raises(TimeoutError):
            for _ in range(1000):  # until the queue is full
                sender.send(os.getpid(), EXAMPLE, served, patience=0.05)
        assert waits and waits[0] <= 0.05  # it waited for room, within its patience
        assert served.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == bytes(8)
    finally:
        sender.close()
        endpoint.close()


def test_a_sender_waits_for_room_in_a_full_queue(directory, tcp_pair) -> None:
    _, served = tcp_pair
    loop = Loop(directory, {os.getpid()})
    waits: list[int] = []

    def wait(fd: int, timeout: float) -> None:
        assert not select.select([], [fd], [], 0)[1]  # full: the kernel says unwritable
        waits.append(fd)
        loop.run(0)  # the receiver takes what is queued ...
        wait_writable(fd, timeout)  # ... which makes room

    sender = handoff.Sender(directory, wait)
    try:
        while not waits:
            sender.send(os.getpid(), EXAMPLE, served, patience=5.0)
        assert len(loop.served) >= 1 and loop.receiver.lost == 0
        loop.run(0)
        assert len(loop.served) == loop.receiver.taken  # the last one too
    finally:
        sender.close()
        loop.close()


def test_a_restarted_worker_is_reached_at_its_new_endpoint(directory, sender,
                                                             tcp_pair) -> None:
    client, served = tcp_pair
    first = Loop(directory, {os.getpid()})
    sender.send(os.getpid(), EXAMPLE, served)
    first.run(0)
    first.close()  # unlinks its endpoint
    with pytest.raises(FileNotFoundError):
        sender.send(os.getpid(), EXAMPLE, served)
    # Killed without unlinking: its endpoint is still there, with no socket behind it.
    dead = handoff.bind_endpoint(directory, os.getpid())
    sender.send(os.getpid(), EXAMPLE, served)  # connected to it
    dead.close()
    with pytest.raises(ConnectionRefusedError):
        sender.send(os.getpid(), EXAMPLE, served)
    assert served.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == bytes(8)
    second = Loop(directory, {os.getpid()})  # the same pid, a new socket
    try:
        sender.send(os.getpid(), EXAMPLE, served)
        second.run(0)
        assert len(second.served) == 1
    finally:
        second.close()
    served.sendall(b"still mine")
    assert client.recv(100).endswith(b"still mine")


def test_closing_logs_what_was_still_queued(directory, sender, tcp_pair, caplog) -> None:
    client, served = tcp_pair
    loop = Loop(directory, {os.getpid()})
    sender.send(os.getpid(), EXAMPLE, served)
    served.close()
    with caplog.at_level(logging.WARNING, "revproxy"):
        loop.close()
    assert "this worker is exiting" in caplog.text and loop.receiver.lost == 1
    assert not os.path.exists(handoff.endpoint_path(directory, os.getpid()))
    assert reset_seen(client)
