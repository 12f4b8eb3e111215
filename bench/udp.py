"""The ``udp`` workload of ``scripts/bench``: request/response datagrams through a
dokodemo-door UDP inbound on each portal, across the tunnel as mux UDP sessions, out of the
bridge's freedom to a UDP echo server; or straight to the echo server ("direct").

Three processes besides the ends: the harness, the echo server (``python -m bench.udp echo``)
and the load client (``python -m bench.udp client``), so that neither shares a Python
interpreter with the harness. The client is closed-loop: each of ``--sources`` sockets (one
source address each, hence one session each through a tunnel) keeps one request in flight;
a request is ``size`` bytes starting with its sequence number, and its answer is the echo of
it. A request unanswered after ``--timeout`` seconds is counted as lost and the source sends
the next one. It prints one JSON object: answers/s, latency p50/p99 (ms) and loss (%)
over the measured seconds (after ``--warmup``).

``CASES`` are the (sources, size) pairs measured by one run of the workload; each gives four
figures (``FIGURES``)."""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

from bench.procs import Child
from bench.systems import Ends

HOST = "127.0.0.1"
CASES = ((1, 64), (20, 64), (1, 1200), (20, 1200))
MIN_WARMUP = 0.5  # seconds: the sessions open (a mux New frame, the bridge's socket) first
LOSS_TIMEOUT = 1.0  # seconds before an unanswered request counts as lost
_SEQ = struct.Struct("!Q")


def key(sources: int, size: int) -> str:
    return f"udp_{sources}x{size}"


def figures() -> list:
    """The workload's rows in the report (``bench.report.Figure``)."""
    from bench.report import Figure

    rows = []
    for sources, size in CASES:
        k = key(sources, size)
        what = f"UDP {size} B, {sources} source{'s' if sources > 1 else ''}"
        rows += [Figure(f"{k}_rate", f"{what}, answers", "dgram/s", True, "udp"),
                 Figure(f"{k}_p50", f"{what}, latency p50", "ms", False, "udp"),
                 Figure(f"{k}_p99", f"{what}, latency p99", "ms", False, "udp"),
                 Figure(f"{k}_loss", f"{what}, lost", "%", False, "udp")]
    return rows


def free_udp_port() -> int:
    """A UDP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- the echo server (its own process) --------------------------------------------------------

def echo(port: int) -> None:
    """Answer every datagram with itself, forever (blocking: one recv, one send each)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    sock.bind((HOST, port))
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, source = recvfrom(65535)
        try:
            sendto(data, source)
        except OSError:
            pass


class EchoServer:
    """``python -m bench.udp echo`` on a free port, as a child of the harness."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_udp_port()
        self.child = Child("udp-echo", [sys.executable, "-m", "bench.udp", "echo",
                                        "--port", str(self.port)], log=tmp / "udp-echo.log")
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.1)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.child.alive():
                    raise RuntimeError(f"udp echo server exited:\n{self.child.tail()}")
                sock.sendto(b"ping", (HOST, self.port))
                try:
                    if sock.recv(16) == b"ping":
                        return
                except OSError:
                    pass
        raise RuntimeError("udp echo server does not answer")

    def stop(self) -> None:
        self.child.stop()


class UdpEnds(Ends):
    """A portal + bridge pair with one more way in: a dokodemo-door UDP inbound on the portal
    (``udp_port``) to the echo server, routed through the tunnel, where the bridge hands
    UDP sessions to a freedom without redirect (the TCP workloads' freedom redirects)."""

    def __init__(self, kind: str, tmp: Path, backend_port: int, echo_port: int,
                 **options) -> None:
        super().__init__(kind, tmp, backend_port, **options)
        self.echo_port = echo_port
        self.udp_port = 0

    def _configs(self) -> tuple[dict, dict]:
        portal, bridge = super()._configs()
        self.udp_port = free_udp_port()
        portal["inbounds"].append(
            {"tag": "udp-in", "listen": HOST, "port": self.udp_port,
             "protocol": "dokodemo-door",
             "settings": {"address": HOST, "port": self.echo_port, "network": "udp"}})
        portal["routing"]["rules"].append(
            {"type": "field", "inboundTag": ["udp-in"], "outboundTag": "portal"})
        bridge["outbounds"].append({"tag": "udp-out", "protocol": "freedom", "settings": {}})
        bridge["routing"]["rules"].insert(
            1, {"type": "field", "inboundTag": ["bridge"], "network": "udp",
                "outboundTag": "udp-out"})
        return portal, bridge


# --- the load client (its own process) --------------------------------------------------------

def load(port: int, sources: int, size: int, duration: float, warmup: float,
         timeout: float = LOSS_TIMEOUT) -> dict:
    """Closed loop, one request in flight per source (see the module docstring)."""
    pad = b"x" * max(0, size - _SEQ.size)
    socks = []
    poller = select.epoll()
    for _ in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((HOST, port))
        socks.append(sock)
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    seq = [0] * sources  # the sequence number in flight, per source
    sent_at = [0] * sources  # its send time (ns)
    clock = time.perf_counter_ns
    start = clock()
    measure_from = start + int(warmup * 1e9)
    end = measure_from + int(duration * 1e9)
    limit = int(timeout * 1e9)
    latencies: list[int] = []
    sent = lost = stray = 0
    next_check = start

    def send(i: int, now: int) -> None:
        nonlocal sent
        seq[i] += 1
        sent_at[i] = now
        try:
            socks[i].send(_SEQ.pack(seq[i]) + pad)
        except OSError:
            pass  # lost: the timeout counts it
        if now >= measure_from:
            sent += 1

    for i in range(sources):
        send(i, clock())
    now = clock()
    while now < end:
        for fd, _ in poller.poll(0.01):
            i = by_fd[fd]
            sock = socks[i]
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # an ICMP error (nothing listens yet): lost, resent later
                    break
                now = clock()
                if len(data) != size or _SEQ.unpack_from(data)[0] != seq[i]:
                    stray += 1  # a late answer to a request already counted as lost
                    continue
                if sent_at[i] >= measure_from:
                    latencies.append(now - sent_at[i])
                send(i, now)
        now = clock()
        if now >= next_check:
            next_check = now + 10_000_000
            for i in range(sources):
                if now - sent_at[i] > limit:
                    if sent_at[i] >= measure_from:
                        lost += 1
                    send(i, now)
    for sock in socks:
        sock.close()
    answered = len(latencies)
    result: dict = {"answers": answered, "sent": sent, "lost": lost, "stray": stray,
                    "seconds": duration}
    if not answered:
        return {**result, "rate": None, "p50": None, "p99": None, "loss": None}
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(answered - 1, int(q * answered))] / 1e6

    # Requests still in flight at the end are neither answered nor lost.
    return {**result, "rate": answered / duration, "p50": pct(0.50), "p99": pct(0.99),
            "p999": pct(0.999), "max": latencies[-1] / 1e6,
            "loss": 100.0 * lost / max(1, answered + lost)}


def measure(port: int, duration: float, warmup: float,
            ends: list[Child] | None = None) -> tuple[dict, dict, str | None]:
    """Every case against ``port``, one client process each: (values, extra, error).
    ``extra`` keeps each client's output and, given the portal and bridge (``ends``), the
    CPU time of their process trees per answer (``cpu_us_per_answer``, warm-up included:
    a figure less sensitive to other load than the rates)."""
    from bench.procs import _tree_cpu, run_tool

    warmup = max(warmup, MIN_WARMUP)
    values: dict[str, float | None] = {}
    extra: dict = {}
    errors = []
    for sources, size in CASES:
        k = key(sources, size)
        argv = [sys.executable, "-m", "bench.udp", "client", "--port", str(port),
                "--sources", str(sources), "--size", str(size), "--duration", str(duration),
                "--warmup", str(warmup)]
        cpu = sum(_tree_cpu(c.pid) for c in ends or ())
        out = run_tool("udp-client", argv, timeout=duration + warmup + 30)
        cpu = sum(_tree_cpu(c.pid) for c in ends or ()) - cpu
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            errors.append(f"{k}: client said {out.strip()[-200:]!r}")
            result = {}
        for name in ("rate", "p50", "p99", "loss"):
            values[f"{k}_{name}"] = result.get(name)
        if ends and result.get("answers"):
            result["cpu_us_per_answer"] = round(cpu / result["answers"] * 1e6, 1)
        extra[k] = result
        if result and result.get("rate") is None:
            errors.append(f"{k}: no answer")
    return values, extra, "; ".join(errors) or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.udp",
                                description="UDP echo server and load client of the bench")
    sub = p.add_subparsers(dest="role", required=True)
    e = sub.add_parser("echo", help="answer every datagram with itself")
    e.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client", help="closed-loop request/response load; prints JSON")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--sources", type=int, default=1)
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--duration", type=float, default=2.0)
    c.add_argument("--warmup", type=float, default=MIN_WARMUP)
    c.add_argument("--timeout", type=float, default=LOSS_TIMEOUT)
    args = p.parse_args(argv)
    if args.role == "echo":
        try:
            echo(args.port)
        except KeyboardInterrupt:
            pass
        return 0
    if args.size < _SEQ.size:
        p.error(f"--size must be at least {_SEQ.size}")
    result = load(args.port, args.sources, args.size, args.duration, args.warmup,
                  args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
