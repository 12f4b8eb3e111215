"""What carrying a visitor to a sibling worker costs (net/pairs.py), in one process:

- ``setup``: making a ``Carrier`` and closing it (a loopback TCP connection for a byte
  stream, a Unix SOCK_SEQPACKET pair for a datagram session), per visitor carried;
- ``rtt``: one byte there and back, through the carrier's relay and pair, against the same
  loopback TCP connection without them;
- ``bulk``: MB/s of a one-way transfer, likewise.

Everything runs on one core here (both ends, the relay), so the figures are upper bounds of
the extra hop's cost. ``--e2e`` measures it end to end instead: a 2-worker portal with a TLS
dokodemo-door, its bridge's tunnel in one worker, nginx behind the bridge; one keep-alive
TLS connection accepted by the tunnel's worker ("local") and one by the other ("carried",
the other worker is stopped while it connects), each timing sequential 1 KiB GETs and one
big download. Run: ``flock /tmp/bench.lock .venv/bin/python -m bench.carry [--quick]
[--e2e]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


# -- end to end


def _status(pidfile: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "revproxy", "status", "--json", "--pidfile",
                           str(pidfile)], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def _until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


class _Keepalive:
    """One keep-alive TLS connection to the portal's TLS inbound."""

    def __init__(self, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.conn = context.wrap_socket(raw)

    def get(self, path: str) -> int:
        """GET ``path`` (one request at a time); the body's size, read and dropped."""
        self.conn.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.conn.recv(1 << 16)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        got = len(body)
        while got < length:
            chunk = self.conn.recv(min(1 << 20, length - got))
            if not chunk:
                raise ConnectionError("cut")
            got += len(chunk)
        return length

    def close(self) -> None:
        self.conn.close()


def bench_e2e(quick: bool) -> dict[str, float]:
    from bench.procs import Child, free_port, stop_all
    from bench.systems import BIG, SMALL, Backend, make_certificate
    from revproxy.demo import bridge_config, portal_config

    size = (64 if quick else 512) << 20
    requests = 300 if quick else 3000
    tmp = Path(tempfile.mkdtemp(prefix="bench-carry-"))
    backend = Backend(tmp, size, workers="1")
    backend.start()
    user, public, tunnel, tls = str(uuid.uuid4()), free_port(), free_port(), free_port()
    cert, key = make_certificate(tmp / "certificates")
    portal = portal_config(user, public, tunnel)
    portal["server"] = {"workers": 2, "pidFile": str(tmp / "portal.pid"),
                        "stateFile": str(tmp / "portal.state")}
    portal["inbounds"].append({
        "tag": "tls-in", "listen": "127.0.0.1", "port": tls, "protocol": "dokodemo-door",
        "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"},
        "streamSettings": {"security": "tls", "tlsSettings": {"certificates": [
            {"certificateFile": str(cert), "keyFile": str(key)}]}}})
    portal["routing"]["rules"].append(
        {"type": "field", "inboundTag": ["tls-in"], "outboundTag": "portal"})
    bridge = bridge_config(user, backend.port, tunnel)
    bridge["reverse"]["bridges"][0].update({"minTunnels": 1, "maxTunnels": 1})
    bridge["server"] = {"workers": 1, "stateFile": str(tmp / "bridge.state")}
    results: dict[str, float] = {}
    try:
        children = []
        for role, config in (("portal", portal), ("bridge", bridge)):
            path = tmp / f"{role}.json"
            path.write_text(json.dumps(config))
            children.append(Child(role, [sys.executable, "-m", "revproxy", "run", "-c",
                                         str(path)], log=tmp / f"{role}.log",
                                  stop_signal=signal.SIGINT))
            if role == "portal":
                _until(lambda: len([w for w in _status(tmp / "portal.pid").get("workers", [])
                                    if w["state"] == "running"]) == 2, "2 portal workers")
        report = _until(lambda: (r := _status(tmp / "portal.pid")) and r["tunnels"] and r,
                        "the tunnel")
        holder = report["tunnels"][0]["worker_pid"]
        other = next(w["pid"] for w in report["workers"] if w["pid"] != holder)
        for label, stopped in (("local", other), ("carried", holder)):
            os.kill(stopped, signal.SIGSTOP)  # the connection goes to the other worker
            try:
                conn = _Keepalive(tls)
            finally:
                os.kill(stopped, signal.SIGCONT)
            try:
                conn.get(SMALL)
                start = time.perf_counter()
                for _ in range(requests):
                    conn.get(SMALL)
                results[f"e2e 1 KiB GET {label} µs"] = \
                    (time.perf_counter() - start) / requests * 1e6
                start = time.perf_counter()
                conn.get(BIG)
                results[f"e2e download {label} MB/s"] = size / (time.perf_counter() - start) / 1e6
            finally:
                conn.close()
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--e2e", action="store_true", help="end to end, through processes")
    args = parser.parse_args(argv)
    count, rounds, total = (500, 2000, 64 << 20) if args.quick else (3000, 10000, 512 << 20)
    if args.e2e:
        results = bench_e2e(args.quick)
    else:
        results = bench_setup(count)
        for carried in (False, True):
            label = "carried" if carried else "direct"
            results[f"rtt {label} µs"] = min(bench_rtt(rounds, carried) for _ in range(3))
            results[f"bulk {label} MB/s"] = max(bench_bulk(total, carried) for _ in range(3))
    for name, value in results.items():
        print(f"{name:30} {value:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
