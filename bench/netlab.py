"""Hosts on network namespaces, for the high-availability tests (tests/ha/) and benchmarks
(``scripts/bench --ha``): each host is a namespace joined to the root namespace by a veth
pair, on a /24 of its own (10.N.i.2 in the host, 10.N.i.1 on the root side, which is also the
host's default route), so the root namespace reaches every host and every host reaches the
root. A host *vanishes* when its end of the link goes down: packets to it are dropped and
nobody sends a reset, as when a machine loses power or its cable.

Also here: the site each hidden host serves (bench/hasite.py), the configurations of the
scenarios, and ``LoadLoop``, a fixed-rate loop of GETs whose outcomes tell how long visitors
were failed or held up around an event.

Needs root (``ip netns``); ``unavailable()`` says why it cannot run. Everything a ``Lab``
creates is removed by ``close`` (also at interpreter exit); its processes are stopped first.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Child

ROOT = Path(__file__).resolve().parents[1]
USER_ID = "27848739-7e62-4138-9fd3-098a63964b6b"
DOMAIN = "ha.reverse.internal"
SITE_PORT = 8080  # the site's port inside each bridge host (each has its own loopback)
TUNNEL_PORT = 8443  # a portal's VMess port
PUBLIC_PORT = 8000  # a portal's public port
IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists(IP):
        return "the ip command (iproute2) is not installed"
    name = f"rpcheck{os.getpid()}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode:
            return f"ip netns add failed: {made.stderr.strip()}"
        link = _ip("-n", name, "link", "set", "lo", "up", check=False)
        if link.returncode:
            return f"cannot configure a namespace: {link.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One namespace: ``address`` is its own, ``gateway`` the root side of its link."""

    name: str
    netns: str
    link: str  # the interface inside the namespace
    address: str
    gateway: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host."""
        return [IP, "netns", "exec", self.netns, *argv]


class Lab:
    """Namespaces, links and processes, all removed by ``close`` (or at exit)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tag = f"rp{os.getpid() % 10000:04d}{random.randrange(36 ** 2):02x}"[:8]
        self.net = self._free_net()
        self.hosts: list[Host] = []
        self._root_links: list[str] = []
        self.children: list[Child] = []
        self._closed = False
        atexit.register(self.close)

    @staticmethod
    def _free_net() -> int:
        """A second octet N whose 10.N.0.0/16 no interface uses."""
        used = _ip("-o", "-4", "addr", "show").stdout
        candidates = [n for n in range(100, 250) if f" 10.{n}." not in used]
        return random.choice(candidates)

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns = f"{self.tag}-{name}"
        outside, inside = f"{self.tag}r{index}", f"{self.tag}h{index}"
        net = f"10.{self.net}.{index}"
        _ip("netns", "add", netns)
        self.hosts.append(host := Host(name, netns, inside, f"{net}.2", f"{net}.1"))
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", netns)
        self._root_links.append(outside)
        _ip("addr", "add", f"{net}.1/24", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", netns, "addr", "add", f"{net}.2/24", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "route", "add", "default", "via", f"{net}.1")
        return host

    def vanish(self, host: Host) -> None:
        """Cut ``host`` off without a word: its link goes down, nothing is reset."""
        _ip("-n", host.netns, "link", "set", host.link, "down")

    def start(self, name: str, argv: Sequence[str], host: Host | None = None) -> Child:
        """A process in ``host`` (None: the root namespace), logging to the lab's directory."""
        child = Child(name, host.argv(argv) if host is not None else list(argv),
                      log=self.directory / f"{name}.log", cwd=ROOT)
        self.children.append(child)
        return child

    def start_site(self, name: str, host: Host | None, port: int = SITE_PORT) -> int:
        """The site of a hidden host (bench/hasite.py) on its 127.0.0.1:``port`` (0: any);
        returns the port."""
        argv = [sys.executable, "-m", "bench.hasite", name, str(port)]
        child = Child(f"site-{name}", host.argv(argv) if host is not None else argv, cwd=ROOT)
        self.children.append(child)
        assert child.popen.stdout is not None
        line = child.popen.stdout.readline()  # the port, once listening
        if not line.strip().isdigit():
            raise RuntimeError(f"site {name} did not start: {line!r}")
        return int(line)

    def start_end(self, kind: str, name: str, config: dict, host: Host | None = None) -> Child:
        """A revproxy or v2ray process with ``config``."""
        path = self.directory / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        if kind == "v2ray":
            argv = [shutil.which("v2ray") or "/usr/bin/v2ray", "-config", str(path)]
        else:
            argv = [sys.executable, "-m", "revproxy", "run", "-c", str(path)]
        return self.start(name, argv, host)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(grace=3.0)
        for host in self.hosts:
            _ip("netns", "del", host.netns, check=False)
        for link in self._root_links:  # gone with their namespace's end, normally
            _ip("link", "del", link, check=False)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- configurations (the V2Ray document's, with addresses for hosts)
def portal_config(public: tuple[str, int], tunnel: tuple[str, int], loglevel: str = "warning",
                  workers: int | None = None) -> dict:
    config = {
        "log": {"loglevel": loglevel},
        "reverse": {"portals": [{"tag": "portal", "domain": DOMAIN}]},
        "inbounds": [
            {"tag": "external", "listen": public[0], "port": public[1],
             "protocol": "dokodemo-door",
             "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"}},
            {"tag": "interconn", "listen": tunnel[0], "port": tunnel[1],
             "protocol": "vmess", "settings": {"clients": [{"id": USER_ID}]}},
        ],
        "routing": {"rules": [
            {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
            {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"},
        ]},
    }
    if workers is not None:
        config["server"] = {"workers": workers}
    return config


def bridge_config(site_port: int, portals: Iterable[tuple[str, int]],
                  loglevel: str = "warning", separate: bool = False) -> dict:
    """A bridge of ``site_port`` on its host to ``portals``: one outbound listing them all
    (``vnext``), or with ``separate`` one ``bridges`` entry and outbound per portal."""
    portals = list(portals)
    user = {"id": USER_ID, "security": "auto"}
    outbounds: list[dict] = [{"tag": "out", "protocol": "freedom",
                              "settings": {"redirect": f"127.0.0.1:{site_port}"}}]
    rules: list[dict] = []
    if separate:
        bridges = []
        for i, (address, port) in enumerate(portals):
            bridges.append({"tag": f"bridge{i}", "domain": DOMAIN})
            outbounds.append({"tag": f"interconn{i}", "protocol": "vmess", "settings": {
                "vnext": [{"address": address, "port": port, "users": [user]}]}})
            rules.append({"type": "field", "inboundTag": [f"bridge{i}"],
                          "domain": [f"full:{DOMAIN}"], "outboundTag": f"interconn{i}"})
        rules.append({"type": "field", "inboundTag": [b["tag"] for b in bridges],
                      "outboundTag": "out"})
    else:
        bridges = [{"tag": "bridge", "domain": DOMAIN}]
        outbounds.append({"tag": "interconn", "protocol": "vmess", "settings": {
            "vnext": [{"address": a, "port": p, "users": [user]} for a, p in portals]}})
        rules += [{"type": "field", "inboundTag": ["bridge"], "domain": [f"full:{DOMAIN}"],
                   "outboundTag": "interconn"},
                  {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}]
    return {"log": {"loglevel": loglevel}, "reverse": {"bridges": bridges},
            "outbounds": outbounds, "routing": {"rules": rules}}


# -- visitors
def get(address: str, port: int, path: str = "/", timeout: float = 10.0) -> str:
    """One GET on a new connection; the body (a site's name) or raises OSError/ValueError."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: ha\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise ValueError(f"answer {head[:40]!r}" if head else "closed without an answer")
    return body.decode(errors="replace").strip()


def wait_serving(address: str, port: int, names: Iterable[str], children: Sequence[Child],
                 timeout: float = 30.0, any_name: bool = False) -> None:
    """Poll until every one of ``names`` has answered a GET (the load spreads over them), or
    with ``any_name`` until anyone has."""
    missing = set(names)
    deadline = time.monotonic() + timeout
    last: object = None
    waiting = True
    while waiting and time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
        try:
            missing.discard(get(address, port, timeout=3.0))
            waiting = bool(missing)
        except (OSError, ValueError) as exc:
            last = exc
            time.sleep(0.1)
    if waiting:
        logs = "\n".join(f"--- {c.name}\n{c.tail()}" for c in children)
        raise RuntimeError(f"{address}:{port}: never served by {sorted(missing)} ({last!r})"
                           f"\n{logs}")


@dataclass(frozen=True)
class Outcome:
    start: float  # monotonic
    end: float
    answer: str  # the site's name, or the error
    ok: bool


class LoadLoop:
    """GETs started at ``rate`` per second, each on a new connection with ``timeout``, each
    in a thread of its own (a stuck one holds nobody up); ``stop`` waits for them."""

    def __init__(self, address: str, port: int, rate: float = 10.0,
                 timeout: float = 20.0) -> None:
        self.address = address
        self.port = port
        self.rate = rate
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runner = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LoadLoop:
        self._runner.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _one(self) -> None:
        start = time.monotonic()
        try:
            answer, ok = get(self.address, self.port, timeout=self.timeout), True
        except (OSError, ValueError) as exc:
            answer, ok = f"{type(exc).__name__}: {exc}", False
        with self._lock:
            self.outcomes.append(Outcome(start, time.monotonic(), answer, ok))

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._runner.join(5.0)
        deadline = time.monotonic() + self.timeout + 5.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.start)


def disruption(outcomes: Sequence[Outcome], event: float, slow: float = 1.0) -> dict:
    """What visitors saw around ``event`` (monotonic): how many requests failed, when the
    failed ones started (s after the event), until when requests failed or took ``slow`` s
    longer than usual (the median before the event), the longest wait, and who answered
    before and after."""
    usual = statistics.median([o.end - o.start for o in outcomes if o.end < event] or [0.0])
    slow += usual
    failed = [o for o in outcomes if not o.ok]
    hurt = [o for o in outcomes if o.end >= event and (not o.ok or o.end - o.start > slow)]
    after = [o for o in outcomes if o.ok and o.start >= event
             and (not hurt or o.start > max(h.start for h in hurt))]
    return {
        "requests": len(outcomes),
        "failed": len(failed),
        "failed_started": ([round(min(o.start for o in failed) - event, 2),
                            round(max(o.start for o in failed) - event, 2)] if failed else None),
        "errors": dict(Counter(o.answer.split(":")[0] for o in failed)),
        "disrupted_until": round(max(h.end for h in hurt) - event, 2) if hurt else 0.0,
        "slowest": round(max((o.end - o.start for o in outcomes if o.end >= event),
                             default=0.0), 2),
        "usual": round(usual, 3),
        "served_before": dict(Counter(o.answer for o in outcomes if o.ok and o.end < event)),
        "served_after": dict(Counter(o.answer for o in after)),
    }


def stop_children(children: Iterable[Child]) -> None:
    for child in children:
        with contextlib.suppress(Exception):
            child.stop(grace=3.0)


def kill9(child: Child) -> None:
    """kill -9 the process group of ``child`` (a crash, or a power cut of the process)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
