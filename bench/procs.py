"""Child processes of the harness: each runs in its own process group, dies with the harness,
and is stopped (its stop signal, then KILL) by :func:`stop_all` however the harness exits."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: cleanup relies on stop_all() alone
    _prctl = None

_LIVE: list[Child] = []


def _in_child() -> None:
    """Runs in the forked child before exec: TERM it if the harness dies without cleaning up."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A process (and its group) started by the harness; output goes to ``log`` or a pipe."""

    def __init__(self, name: str, argv: list[str], log: Path | None = None,
                 cwd: Path | None = None, stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.stop_signal = stop_signal
        out = open(log, "wb") if log is not None else subprocess.PIPE
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                preexec_fn=_in_child,  # single-threaded harness: safe
            )
        finally:
            if log is not None:
                out.close()
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def communicate(self, timeout: float) -> str:
        """Wait for the end (killing the group after ``timeout`` s); returns its piped output."""
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        finally:
            self._forget()
        return (out or b"").decode(errors="replace")

    def tail(self, chars: int = 2000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def memory(self) -> dict[str, int]:
        """Resident memory of the process and all its descendants: summed ``rss`` (shared
        pages counted in every process), ``pss`` (shared pages split between their users),
        ``uss`` (pages private to one process) in bytes, and the number of ``processes``."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
        total = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = proc.memory_full_info()
                total["rss"] += info.rss
                total["pss"] += info.pss
                total["uss"] += info.uss
                total["processes"] += 1
        return total

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def stop(self, grace: float = 5.0) -> None:
        """Send the leader its stop signal (it stops and reaps its own children), KILL the
        whole group after ``grace`` s or once the leader is gone, reap the leader."""
        if self.alive():
            self._signal_group(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # stragglers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._forget()

    def _forget(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)


def stop_all() -> None:
    """Stop every child still running, newest first."""
    for child in reversed(list(_LIVE)):
        child.stop(grace=3.0)


def run_tool(name: str, argv: list[str], timeout: float) -> str:
    """Run a short-lived tool (wrk, curl) to completion under the same cleanup rules."""
    return Child(name, argv).communicate(timeout)


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_served(port: int, path: str, size: int, children: list[Child],
                timeout: float = 30.0) -> float:
    """Poll until ``GET path`` on ``port`` returns 200 with ``size`` bytes; seconds waited."""
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < timeout:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
        try:
            status, body = http_get(port, path)
            if status == 200 and len(body) == size:
                return time.monotonic() - start
            last = RuntimeError(f"HTTP {status}, {len(body)} bytes")
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    logs = "\n".join(f"--- {c.name}\n{c.tail()}" for c in children)
    raise RuntimeError(f"port {port} not serving {path} within {timeout} s ({last!r})\n{logs}")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a live process tree, including descendants it has already reaped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuMeter:
    """Tells how much CPU the rest of the machine used while the bench measured: the busy time
    of all CPUs (user+nice+system) minus the harness's own and its children's, in cores."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.nice + cpu.system
        steal = getattr(cpu, "steal", 0.0)
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        ours += sum(_tree_cpu(child.pid) for child in list(_LIVE))
        return time.monotonic(), busy, ours, steal

    def read(self) -> dict[str, float]:
        """Cores used since creation: by the bench (``bench``), by everything else
        (``other``), stolen by the hypervisor (``steal``)."""
        t0, busy0, ours0, steal0 = self._start
        t1, busy1, ours1, steal1 = self._sample()
        span = max(t1 - t0, 1e-6)
        return {"bench": round((ours1 - ours0) / span, 2),
                "other": round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / span, 2),
                "steal": round((steal1 - steal0) / span, 2)}
