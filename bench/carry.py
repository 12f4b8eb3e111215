"""What carrying a visitor to a sibling worker costs (net/pairs.py), in one process:

- ``setup``: making a ``Carrier`` and closing it (a loopback TCP connection for a byte
  stream, a Unix SOCK_SEQPACKET pair for a datagram session), per visitor carried;
- ``rtt``: one byte there and back, through the carrier's relay and pair, against the same
  loopback TCP connection without them;
- ``bulk``: MB/s of a one-way transfer, likewise.

Everything runs on one core here (both ends, the relay), so the figures are upper bounds of
the extra hop's cost. Run: ``flock /tmp/bench.lock .venv/bin/python -m bench.carry [--quick]``.
"""

from __future__ import annotations

import argparse
import socket
import time

import gevent
from gevent.socket import wait_read, wait_write

from revproxy.net.pairs import Carrier
from revproxy.net.stream import SocketStream
from revproxy.policy import DEFAULT

CHUNK = 64 * 1024


def _tcp() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for sock in (a, b):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
    return a, b


def _recv(sock: socket.socket, size: int) -> bytes:
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            wait_read(sock.fileno())


def _send(sock: socket.socket, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            wait_write(sock.fileno())


def _path(carried: bool) -> tuple[socket.socket, socket.socket, gevent.Greenlet | None]:
    """(the visitor's end, the serving end) of a direct connection or a carried one."""
    client, served = _tcp()
    if not carried:
        return client, served, None
    carrier = Carrier(datagrams=False)
    far = carrier.far.dup()  # the sibling's copy (relay closes ours)
    far.setblocking(False)
    relay = gevent.spawn(carrier.relay, SocketStream(served), DEFAULT)
    return client, far, relay


def bench_setup(count: int) -> dict[str, float]:
    found = {}
    for name, datagrams in (("stream", False), ("datagram", True)):
        start = time.perf_counter()
        for _ in range(count):
            Carrier(datagrams).close()
        found[f"setup {name} µs"] = (time.perf_counter() - start) / count * 1e6
    return found


def bench_rtt(rounds: int, carried: bool) -> float:
    client, server, relay = _path(carried)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            _send(client, b"x")
            _send(server, _recv(server, 1))
            _recv(client, 1)
        return (time.perf_counter() - start) / rounds * 1e6
    finally:
        client.close()
        server.close()
        if relay is not None:
            relay.kill()


def bench_bulk(total: int, carried: bool) -> float:
    client, server, relay = _path(carried)
    block = b"\x00" * CHUNK

    def sink() -> int:
        got = 0
        while data := _recv(server, CHUNK):
            got += len(data)
        return got

    try:
        reader = gevent.spawn(sink)
        start = time.perf_counter()
        for _ in range(total // CHUNK):
            _send(client, block)
        client.shutdown(socket.SHUT_WR)
        got = reader.get(timeout=120)
        assert got == total, got
        return total / (time.perf_counter() - start) / 1e6
    finally:
        client.close()
        server.close()
        if relay is not None:
            relay.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    count, rounds, total = (500, 2000, 64 << 20) if args.quick else (3000, 10000, 512 << 20)
    results = bench_setup(count)
    for carried in (False, True):
        label = "carried" if carried else "direct"
        results[f"rtt {label} µs"] = min(bench_rtt(rounds, carried) for _ in range(3))
        results[f"bulk {label} MB/s"] = max(bench_bulk(total, carried) for _ in range(3))
    for name, value in results.items():
        print(f"{name:24} {value:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
