"""``scripts/bench --faults``: what one faulty party costs everyone else, V2Ray beside revproxy.

Both systems get the same nginx backend and the same scenarios, interleaved (for scenario →
for repetition → for system), each on a freshly started portal + bridge pair:

- ``baseline``: 20 other visitors' small GETs at a fixed rate, nothing stalled;
- ``stalled`` / ``stalled10``: the same while 1 (10) visitors sit on a 200 MB download with
  a 4 KiB receive buffer and never read;
- ``slow``: while one visitor reads that download at a steady ``--slow-rate`` (1.5 MB/s);
- ``backend``: while one visitor uploads 200 MB to a backend path that never reads it (nginx
  proxies ``/stall`` to a listening socket nobody accepts on).

The faulty visitor arrives ``--lead`` s into the others' window and stays until the window
ends or the server ends it (with ``--replace`` it then comes back at once, so a fault is
present throughout).

Per run: the others' p50/p99 and failures (bench/clients.py ``latency``: open loop, from
dispatch to last byte), the peak RSS growth of the portal and the bridge trees over their
level just before the fault, and how often the server ended the faulty visitor. Then
``emfile``: the portal's accepting process gets an RLIMIT_NOFILE just above what it uses
(``prlimit``, in place), 120 connections are held open and visitors keep knocking; the
portal's CPU seconds over a fixed window, then how long it takes to serve again once the held
connections go and the limit is restored.

revproxy runs with one worker per end and one tunnel (``--workers``, ``--tunnels``), as the
fault tests do, so the 20 others share the faulty visitor's tunnel; V2Ray opens what it opens.
Writes bench/results-faults.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench import clients, report
from bench.procs import Child, CpuMeter, http_get, stop_all
from bench.systems import BIG, NGINX_CONF, ROOT, SMALL, SMALL_SIZE, Backend, Ends

MIB = 2**20
SIZE = 200_000_000
SCENARIOS = ("baseline", "stalled", "stalled10", "slow", "backend")
STALLED = {"stalled": 1, "stalled10": 10}
TITLES = {"baseline": "nothing stalled", "stalled": "1 stalled visitor",
          "stalled10": "10 stalled visitors", "slow": "1 slow visitor",
          "backend": "stalled backend (upload)"}
SYSTEMS = ("v2ray", "revproxy")
TCP_ESTABLISHED = 1
STALL_LOCATION = """\
        location /stall {{
            proxy_pass http://127.0.0.1:%d;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            client_max_body_size 0;
            proxy_send_timeout 600s;
            proxy_read_timeout 600s;
        }}
"""


class StallingBackend(Backend):
    """The bench's nginx plus ``POST /stall``, proxied to a socket that listens and never
    accepts: the upload fills the kernel's buffers, then nginx stops reading it."""

    def __init__(self, tmp: Path, size: int) -> None:
        super().__init__(tmp, size)
        self.sink = socket.socket()
        self.sink.bind(("127.0.0.1", 0))
        self.sink.listen(1024)
        anchor = "        location / {{ }}\n"
        assert anchor in NGINX_CONF
        self.template = NGINX_CONF.replace(
            anchor, anchor + STALL_LOCATION % self.sink.getsockname()[1])

    def stop(self) -> None:
        super().stop()
        self.sink.close()


class FaultEnds(Ends):
    """A portal + bridge pair; revproxy's bridge keeps exactly ``tunnels`` tunnels (0: its
    default pool)."""

    def __init__(self, kind: str, tmp: Path, backend_port: int, workers: int | None,
                 tunnels: int) -> None:
        super().__init__(kind, tmp, backend_port, workers=workers)
        self.tunnels = tunnels

    def _configs(self) -> tuple[dict, dict]:
        portal, bridge = super()._configs()
        if self.kind == "revproxy" and self.tunnels:
            entry = bridge["reverse"]["bridges"][0]
            entry["minTunnels"] = entry["maxTunnels"] = self.tunnels
        return portal, bridge


def tcp_state(sock: socket.socket) -> int:
    """The connection's TCP state, read without consuming anything (tcp_info's first byte)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return 0


def _request(method: str, path: str, length: int | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


class Fault(threading.Thread):
    """A faulty visitor (or several), arriving ``delay`` s after the thread starts and gone at
    :meth:`finish`, or when the server ends it (then replaced at once if ``replace``).
    ``ended`` counts the server's ends, ``first_end`` is the seconds from arrival to the
    first."""

    def __init__(self, port: int, delay: float, replace: bool) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.delay = delay
        self.replace = replace
        self.stop_flag = threading.Event()
        self.started = time.monotonic() + delay
        self.ended = 0
        self.first_end: float | None = None
        self.errors: list[str] = []

    def run(self) -> None:
        if self.stop_flag.wait(self.delay):
            return
        try:
            self.act()
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def act(self) -> None:
        raise NotImplementedError

    def _ended(self) -> None:
        self.ended += 1
        if self.first_end is None:
            self.first_end = round(time.monotonic() - self.started, 2)

    def _connect(self, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        sock.connect((clients.HOST, self.port))
        return sock

    def finish(self) -> dict:
        self.stop_flag.set()
        self.join(10)
        return {"ended_by_server": self.ended, "first_end_s": self.first_end,
                "errors": self.errors[:5]}


class StalledVisitors(Fault):
    """``count`` visitors that ask for the big file with a 4 KiB receive buffer and never
    read."""

    def __init__(self, port: int, delay: float, replace: bool, count: int) -> None:
        super().__init__(port, delay, replace)
        self.count = count

    def _open(self) -> socket.socket:
        sock = self._connect(rcvbuf=4096)
        sock.sendall(_request("GET", BIG))
        return sock

    def act(self) -> None:
        socks: list[socket.socket | None] = []
        try:
            for _ in range(self.count):
                socks.append(self._open())
            while not self.stop_flag.wait(0.1):
                for i, sock in enumerate(socks):
                    if sock is not None and tcp_state(sock) != TCP_ESTABLISHED:
                        self._ended()  # reset or ended by the server
                        sock.close()
                        socks[i] = self._open() if self.replace else None
        finally:
            for sock in socks:
                if sock is not None:
                    sock.close()


class SlowVisitor(Fault):
    """One visitor reading the big file at ``rate`` bytes/s (128 KiB receive buffer)."""

    def __init__(self, port: int, delay: float, replace: bool, rate: float) -> None:
        super().__init__(port, delay, replace)
        self.rate = rate
        self.received = 0

    def act(self) -> None:
        tick = 0.02
        sock: socket.socket | None = None
        try:
            while not self.stop_flag.is_set():
                if sock is None:
                    sock = self._connect(rcvbuf=128 * 1024)
                    sock.sendall(_request("GET", BIG))
                    sock.settimeout(tick)
                    due = time.monotonic()
                    allowance = 0.0
                now = time.monotonic()
                allowance = min(allowance + (now - due) * self.rate, self.rate * 0.1)
                due = now
                try:
                    while allowance >= 1:
                        data = sock.recv(int(min(allowance, 65536)))
                        if not data:
                            raise ConnectionResetError("ended")
                        allowance -= len(data)
                        self.received += len(data)
                except TimeoutError:
                    pass
                except ConnectionError:
                    self._ended()
                    sock.close()
                    sock = None
                    if not self.replace:
                        return
                    continue
                self.stop_flag.wait(tick)
        finally:
            if sock is not None:
                sock.close()

    def finish(self) -> dict:
        out = super().finish()
        out["read_mb"] = round(self.received / 1e6, 1)
        out["read_mb_per_s"] = round(self.received / (time.monotonic() - self.started) / 1e6, 2)
        return out


class StalledUpload(Fault):
    """One visitor uploading 200 MB to ``/stall``, which the backend never reads."""

    def __init__(self, port: int, delay: float, replace: bool) -> None:
        super().__init__(port, delay, replace)
        self.sent = 0

    def act(self) -> None:
        chunk = b"u" * 65536
        sock: socket.socket | None = None
        try:
            while not self.stop_flag.is_set():
                if sock is None:
                    sock = self._connect()
                    sock.sendall(_request("POST", "/stall", SIZE))
                    sock.settimeout(0.2)
                try:
                    self.sent += sock.send(chunk)
                except TimeoutError:
                    continue  # not taken: still stalled
                except ConnectionError:
                    self._ended()
                    sock.close()
                    sock = None
                    if not self.replace:
                        return
        finally:
            if sock is not None:
                sock.close()


class PeakMemory(threading.Thread):
    """Samples the RSS of each child's process tree every 0.1 s; ``growth()`` is the largest
    rise over the first sample, per tree, in bytes."""

    def __init__(self, children: list[Child]) -> None:
        super().__init__(daemon=True)
        self.children = children
        self.first = [c.memory()["rss"] for c in children]
        self.peak = list(self.first)
        self.stop_flag = threading.Event()
        self.start()

    @staticmethod
    def _rss(child: Child) -> int:
        try:
            root = psutil.Process(child.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stop_flag.wait(0.1):
            now = [self._rss(c) for c in self.children]
            self.peak = [max(p, n) for p, n in zip(self.peak, now, strict=True)]

    def growth(self) -> list[int]:
        self.stop_flag.set()
        self.join(5)
        return [peak - first for peak, first in zip(self.peak, self.first, strict=True)]


def _fault(scenario: str, port: int, args: argparse.Namespace) -> Fault | None:
    if scenario in STALLED:
        return StalledVisitors(port, args.lead, args.replace, STALLED[scenario])
    if scenario == "slow":
        return SlowVisitor(port, args.lead, args.replace, args.slow_rate * 1e6)
    if scenario == "backend":
        return StalledUpload(port, args.lead, args.replace)
    return None


def measure(scenario: str, ends: FaultEnds, args: argparse.Namespace) -> dict:
    """One scenario on a fresh pair: the others' latency while the fault is present."""
    assert ends.portal is not None and ends.bridge is not None
    memory = PeakMemory([ends.portal, ends.bridge])
    fault = _fault(scenario, ends.public_port, args)
    if fault is not None:
        fault.start()  # it arrives --lead s into the others' window
    m = clients.latency(ends.public_port, args.rate, args.duration, 0.0, args.visitors)
    outcome = fault.finish() if fault is not None else {}
    portal_growth, bridge_growth = memory.growth()
    failures = m.extra.get("errors", 0) if m.values["p50"] is not None else None
    return {"p50": m.values["p50"], "p99": m.values["p99"],
            "failures": failures if failures is not None else int(args.rate * args.duration),
            "portal_rss_growth_mib": round(portal_growth / MIB, 2),
            "bridge_rss_growth_mib": round(bridge_growth / MIB, 2),
            "fault": outcome, "latency": m.extra, "error": m.error}


# --- EMFILE ----------------------------------------------------------------------------------

def _acceptor(ends: FaultEnds) -> psutil.Process:
    """The portal process that accepts visitors: V2Ray's only one, revproxy's (first)
    worker."""
    assert ends.portal is not None
    root = psutil.Process(ends.portal.pid)
    kids = root.children()
    return kids[0] if ends.kind == "revproxy" and kids else root


def _tree_cpu(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


class Knocker(threading.Thread):
    """A visitor that keeps trying: connect, GET, wait up to 1 s for the answer, close."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok = self.failed = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.wait(0.05):
            try:
                status, body = http_get(self.port, SMALL, timeout=1.0)
                if status == 200 and len(body) == SMALL_SIZE:
                    self.ok += 1
                    continue
            except (OSError, http.client.HTTPException):
                pass
            self.failed += 1


def emfile(ends: FaultEnds, args: argparse.Namespace) -> dict:
    """CPU of the portal over ``--emfile-window`` s while its acceptor is at its fd limit."""
    assert ends.portal is not None
    proc = _acceptor(ends)
    soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
    in_use = proc.num_fds()
    held: list[socket.socket] = []
    knockers = [Knocker(ends.public_port) for _ in range(args.knockers)]
    out: dict = {"fds_before": in_use, "limit": in_use + 40}
    try:
        proc.rlimit(psutil.RLIMIT_NOFILE, (in_use + 40, hard))
        for _ in range(120):  # many more than it can take
            sock = socket.create_connection((clients.HOST, ends.public_port), timeout=5)
            sock.sendall(_request("GET", SMALL))
            held.append(sock)
        for k in knockers:
            k.start()
        time.sleep(1.0)
        out["fds_at_limit"] = proc.num_fds()
        cpu0, t0 = _tree_cpu(ends.portal.pid), time.monotonic()
        time.sleep(args.emfile_window)
        cpu1, t1 = _tree_cpu(ends.portal.pid), time.monotonic()
        out["cpu_seconds"] = round(cpu1 - cpu0, 3)
        out["window_s"] = round(t1 - t0, 2)
    finally:
        for k in knockers:
            k.stop_flag.set()
        for k in knockers:
            k.join(5)
        for sock in held:
            sock.close()
        with contextlib.suppress(psutil.Error):
            proc.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    out["knocks_ok"] = sum(k.ok for k in knockers)
    out["knocks_failed"] = sum(k.failed for k in knockers)
    start = time.monotonic()
    out["recovered_s"] = None
    while time.monotonic() - start < 30:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = http_get(ends.public_port, SMALL, timeout=1.0)
            if status == 200 and len(body) == SMALL_SIZE:
                out["recovered_s"] = round(time.monotonic() - start, 2)
                break
        time.sleep(0.1)
    out["portal_alive"] = ends.portal.alive()
    return out


# --- the run ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench --faults",
        description="Faulty visitors and backends, V2Ray beside revproxy: the others' latency, "
                    "peak memory, CPU at the fd limit (see bench/faults.py).")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --duration 3 --repeat 1 --emfile-window 3 (about 2 minutes)")
    p.add_argument("--duration", type=float, help="seconds of the others' load per run "
                                                  "(default 6)")
    p.add_argument("--repeat", type=int, help="repetitions of every scenario (default 2)")
    p.add_argument("--only", default=",".join(SCENARIOS + ("emfile",)),
                   help="comma-separated: " + ",".join(SCENARIOS + ("emfile",)))
    p.add_argument("--visitors", type=int, default=20, help="the other visitors' keep-alive "
                                                            "connections (default 20)")
    p.add_argument("--rate", type=float, default=200.0,
                   help="their requests/s, all together (default 200)")
    p.add_argument("--slow-rate", type=float, default=1.5,
                   help="MB/s the slow visitor reads (default 1.5)")
    p.add_argument("--lead", type=float, default=1.0,
                   help="seconds into the others' window when the fault arrives (default 1)")
    p.add_argument("--replace", action="store_true",
                   help="a faulty visitor the server ends comes back at once (default: gone)")
    p.add_argument("--emfile-window", type=float, help="seconds of CPU accounting at the fd "
                                                       "limit (default 5)")
    p.add_argument("--knockers", type=int, default=4,
                   help="visitors knocking at the fd-limited portal (default 4)")
    p.add_argument("--workers", type=int, default=1,
                   help="revproxy server.workers per end (default 1; 0: its default)")
    p.add_argument("--tunnels", type=int, default=1,
                   help="revproxy bridge min/maxTunnels (default 1; 0: its default pool)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="comma-separated: v2ray,revproxy (default both)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results-faults.json")
    return p


def _defaults(args: argparse.Namespace) -> None:
    quick = {"duration": 3.0, "repeat": 1, "emfile_window": 3.0}
    full = {"duration": 6.0, "repeat": 2, "emfile_window": 5.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SCENARIOS) - {"emfile"}
    if unknown:
        raise SystemExit(f"scripts/bench --faults: unknown scenario(s) {sorted(unknown)}")
    args.scenarios = [s for s in SCENARIOS if s in names]
    if args.scenarios and "baseline" not in args.scenarios:
        args.scenarios.insert(0, "baseline")  # the ratios need it
    args.emfile = "emfile" in names
    args.systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    if not args.systems:
        raise SystemExit("scripts/bench --faults: --systems takes v2ray, revproxy or both")


def _fresh(ends: FaultEnds) -> None:
    """Every run on newly started ends: nothing left over from the run before."""
    ends.stop()
    ends.start()
    time.sleep(0.5)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="revproxy-bench-faults-"))
    runs: list[dict] = []
    started = time.monotonic()
    try:
        backend = StallingBackend(tmp, SIZE)
        backend.start()
        log(f"nginx backend on 127.0.0.1:{backend.port} ({SIZE / 1e6:g} MB file, POST /stall "
            "never read)")
        pairs = [FaultEnds(kind, tmp, backend.port,
                           workers=(args.workers or None) if kind == "revproxy" else None,
                           tunnels=args.tunnels)
                 for kind in args.systems]
        for scenario in args.scenarios:
            for rep in range(1, args.repeat + 1):
                for ends in pairs:
                    _fresh(ends)
                    meter = CpuMeter()
                    t = time.monotonic()
                    try:
                        r = measure(scenario, ends, args)
                    except (OSError, RuntimeError, ValueError) as exc:
                        r = {"p50": None, "p99": None, "failures": None,
                             "error": f"{type(exc).__name__}: {exc}"}
                    cpu = meter.read()
                    r.update({"scenario": scenario, "rep": rep, "system": ends.name,
                              "cpu_cores": cpu, "seconds": round(time.monotonic() - t, 1),
                              "alive": all(c.alive() for c in ends.children())})
                    runs.append(r)
                    log(_line(r, args.repeat))
        if args.emfile:
            for rep in range(1, args.repeat + 1):
                for ends in pairs:
                    _fresh(ends)
                    meter = CpuMeter()
                    try:
                        r = emfile(ends, args)
                    except (OSError, RuntimeError, psutil.Error) as exc:
                        r = {"error": f"{type(exc).__name__}: {exc}"}
                    r.update({"scenario": "emfile", "rep": rep, "system": ends.name,
                              "cpu_cores": meter.read()})
                    runs.append(r)
                    log(f"[emfile {rep}/{args.repeat}] {report.TITLES[ends.name]:>8}: "
                        f"{r.get('cpu_seconds')} CPU s in {r.get('window_s')} s at "
                        f"{r.get('fds_at_limit')}/{r.get('limit')} fds, knocks ok "
                        f"{r.get('knocks_ok')} failed {r.get('knocks_failed')}, serving "
                        f"again after {r.get('recovered_s')} s"
                        + (f" ({r['error']})" if r.get("error") else ""))
        for ends in pairs:
            ends.stop()
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    other = [r["cpu_cores"]["other"] for r in runs]
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"machine": report.machine_info(ROOT), "params": params,
            "elapsed_seconds": round(time.monotonic() - started, 1),
            "other_load_cores": {"mean": round(sum(other) / len(other), 2) if other else None,
                                 "max": max(other, default=None)},
            "summary": summarize(runs), "runs": runs}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _line(r: dict, repeat: int) -> str:
    fault = r.get("fault") or {}
    notes = []
    if fault.get("ended_by_server"):
        notes.append(f"faulty visitor ended by the server {fault['ended_by_server']}× "
                     f"(first after {fault['first_end_s']} s)")
    if "read_mb_per_s" in fault:
        notes.append(f"slow visitor read {fault['read_mb_per_s']} MB/s")
    if r.get("error"):
        notes.append(r["error"])
    if not r.get("alive", True):
        notes.append("an end died")
    if r["cpu_cores"]["other"] >= 0.2:
        notes.append(f"other load {r['cpu_cores']['other']:.1f} cores")
    return (f"[{r['scenario']} {r['rep']}/{repeat}] {report.TITLES[r['system']]:>8}: "
            f"p50 {_ms(r['p50'])} ms, p99 {_ms(r['p99'])} ms, {r['failures']} failed; "
            f"RSS +{r.get('portal_rss_growth_mib', 0):.1f} portal "
            f"+{r.get('bridge_rss_growth_mib', 0):.1f} bridge MiB"
            + (f"  ({'; '.join(notes)})" if notes else ""))


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    """Per scenario and system: median p50/p99, summed failures, p99 over the baseline's,
    median RSS growth (and per stalled session); per system: the emfile figures."""
    out: dict = {}
    for scenario in SCENARIOS:
        for system in SYSTEMS:
            rs = [r for r in runs if r["scenario"] == scenario and r["system"] == system]
            if not rs:
                continue
            fails = [r["failures"] for r in rs]
            entry = {"p50": _median([r["p50"] for r in rs]),
                     "p99": _median([r["p99"] for r in rs]),
                     "failures": None if None in fails else sum(fails),
                     "portal_rss_growth_mib": _median([r.get("portal_rss_growth_mib")
                                                       for r in rs]),
                     "bridge_rss_growth_mib": _median([r.get("bridge_rss_growth_mib")
                                                       for r in rs]),
                     "ended_by_server": sum((r.get("fault") or {}).get("ended_by_server", 0)
                                            for r in rs)}
            base = out.get(("baseline", system), {}).get("p99")
            entry["p99_ratio"] = entry["p99"] / base if entry["p99"] and base else None
            entry["within_2x"] = (entry["p99_ratio"] is not None and entry["p99_ratio"] <= 2
                                  and entry["failures"] == 0)
            if scenario in STALLED:
                n = STALLED[scenario]
                entry["per_session_mib"] = {
                    end: round(entry[f"{end}_rss_growth_mib"] / n, 2)
                    for end in ("portal", "bridge")
                    if entry[f"{end}_rss_growth_mib"] is not None}
            out[(scenario, system)] = entry
    result: dict = {f"{s}/{sy}": v for (s, sy), v in out.items()}
    for system in SYSTEMS:
        rs = [r for r in runs if r["scenario"] == "emfile" and r["system"] == system]
        if rs:
            result[f"emfile/{system}"] = {
                "cpu_seconds": _median([r.get("cpu_seconds") for r in rs]),
                "window_s": _median([r.get("window_s") for r in rs]),
                "recovered_s": _median([r.get("recovered_s") for r in rs]),
                "knocks_ok": sum(r.get("knocks_ok", 0) for r in rs),
                "knocks_failed": sum(r.get("knocks_failed", 0) for r in rs)}
    return result


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def table(summary: dict) -> str:
    """Markdown tables: latency of the others per scenario, memory, the fd limit."""
    head = ["others' small GETs", "V2Ray p50", "p99", "failed", "p99/base",
            "revproxy p50", "p99", "failed", "p99/base"]
    rows = [head, ["---"] + ["---:"] * (len(head) - 1)]
    for scenario in SCENARIOS:
        if not any(f"{scenario}/{s}" in summary for s in SYSTEMS):
            continue
        row = [TITLES[scenario] + (" (ms)" if scenario == "baseline" else "")]
        for system in SYSTEMS:
            e = summary.get(f"{scenario}/{system}")
            if e is None:
                row += ["—"] * 4
                continue
            ratio = "" if scenario == "baseline" else (
                _cell(e["p99_ratio"], "{:.2f}×") + (" ✓" if e["within_2x"] else " ✗"))
            row += [_cell(e["p50"]), _cell(e["p99"]),
                    "—" if e["failures"] is None else str(e["failures"]), ratio]
        rows.append(row)
    out = [_render(rows)]
    mem = [["peak RSS growth (MiB)", "V2Ray portal", "bridge", "per session",
            "revproxy portal", "bridge", "per session"], ["---"] + ["---:"] * 6]
    for scenario in ("baseline", *STALLED, "slow", "backend"):
        if not any(f"{scenario}/{s}" in summary for s in SYSTEMS):
            continue
        row = [TITLES[scenario]]
        for system in SYSTEMS:
            e = summary.get(f"{scenario}/{system}", {})
            per = e.get("per_session_mib")
            row += [_cell(e.get("portal_rss_growth_mib"), "{:.1f}"),
                    _cell(e.get("bridge_rss_growth_mib"), "{:.1f}"),
                    f"{per['portal'] + per['bridge']:.1f}" if per else ""]
        mem.append(row)
    out.append(_render(mem))
    ended = [f"{TITLES[s]}: " + ", ".join(
        f"{report.TITLES[sy]} {summary[f'{s}/{sy}']['ended_by_server']}"
        for sy in SYSTEMS if f"{s}/{sy}" in summary)
        for s in SCENARIOS[1:] if any(f"{s}/{sy}" in summary for sy in SYSTEMS)]
    if ended:
        out.append("faulty sessions ended by the server (all runs): " + "; ".join(ended))
    if any(f"emfile/{s}" in summary for s in SYSTEMS):
        fd = [["at the fd limit", "CPU s", "window s", "knocks ok/failed",
               "serving again after s"], ["---"] + ["---:"] * 4]
        for system in SYSTEMS:
            e = summary.get(f"emfile/{system}")
            if e:
                fd.append([f"{report.TITLES[system]} portal", _cell(e["cpu_seconds"]),
                           _cell(e["window_s"], "{:.1f}"),
                           f"{e['knocks_ok']}/{e['knocks_failed']}",
                           _cell(e["recovered_s"])])
        out.append(_render(fd))
    return "\n\n".join(out)


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     + " |" for row in rows)


def _on_signal(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _defaults(args)
    from bench.run import _raise_nofile

    _raise_nofile()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        results = run(args, log)
    except KeyboardInterrupt:
        print("interrupted; every process the bench started is stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(results["summary"]))
    m = results["machine"]
    print(f"\n{m['cpu_model']}, {m['cores_logical']} cores, Python {m['python']}, "
          f"{m['v2ray']}; revproxy {m['revproxy']}, workers {args.workers or 'default'}, "
          f"tunnels {args.tunnels or 'default'}; {results['elapsed_seconds']:.0f} s")
    other = results["other_load_cores"]
    if other["mean"] is not None:
        print(f"CPU used by other processes during the measurements: mean {other['mean']:.2f} "
              f"cores, max {other['max']:.2f}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
