"""A real DNS server for the tests: Debian's dnsmasq on 127.0.0.1, on an ephemeral port,
answering only the names it is given (``--address=/name/ip``), asking nobody else."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq"
                                      if Path("/usr/sbin/dnsmasq").exists() else None)


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    """Whether the server answers a query yet (any answer will do)."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(query, ("127.0.0.1", port))
            return sock.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


@contextmanager
def dnsmasq(addresses: Sequence[tuple[str, str]], log: Path,
            extra: Sequence[str] = ()) -> Iterator[int]:
    """Run dnsmasq answering each (name, ip) of ``addresses`` (a name and its subdomains);
    gives its port. Skips the test (outside CI) when dnsmasq is not installed."""
    if DNSMASQ is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("dnsmasq is not installed (scripts/test installs it)")
        pytest.skip("dnsmasq is not installed")
    for _ in range(5):
        port = _udp_port()
        argv = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--conf-file=/dev/null", "--pid-file=", "--bind-interfaces",
                "--listen-address=127.0.0.1", f"--port={port}", "--log-queries",
                "--log-facility=-", "--user=root", "--group=root", "--local-ttl=60",
                *(f"--address=/{name}/{ip}" for name, ip in addresses), *extra]
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _answers(port):
            time.sleep(0.05)
        if proc.poll() is None and _answers(port):
            break
        proc.kill()
        proc.wait(5)
    else:
        pytest.fail(f"dnsmasq did not start: {log.read_text(errors='replace')[-2000:]}")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def queries(log: Path) -> list[str]:
    """The names dnsmasq was asked about, from its log ("query[A] name from ...")."""
    names = []
    for line in log.read_text(errors="replace").splitlines():
        if "query[" in line:
            names.append(line.split("] ", 1)[1].split(" ", 1)[0])
    return names
