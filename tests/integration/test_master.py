"""The master's promises about its workers, with a real ``revproxy run``: they die with it
(kill -9 included, and the ports are free again at once), and many workers start, reload on
HUP and stop."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from tests.integration.conftest import free_port, start_end
from tests.integration.test_server import portal_with, status, wait_for

TIMEOUT = 60


def gone(pid: int) -> bool:
    """Not running any more: no such process, or a zombie not reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def running_workers(pidfile, generation: int | None = None) -> list[dict]:
    if not pidfile.exists():
        return []
    return [w for w in status(pidfile)["workers"] if w["state"] == "running"
            and (generation is None or w["generation"] == generation)]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("when", ["running", "booting"])
def test_workers_exit_when_the_master_is_killed(tmp_path, when):
    """Killed while its workers boot, the master dies before they could note its pid: only
    the kernel's parent-death signal (or the check right after the fork) ends them."""
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_with(tmp_path, public, tunnel, 4), tmp_path)
    try:
        master = psutil.Process(portal.pid)
        if when == "running":
            wait_for(lambda: len(running_workers(tmp_path / "portal.pid")) == 4, "4 workers")
        else:
            wait_for(lambda: len(master.children()) == 4, "4 forked workers")
        workers = [child.pid for child in master.children()]
        assert len(workers) == 4
        os.kill(portal.pid, signal.SIGKILL)
        assert portal.popen.wait(TIMEOUT) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(gone(pid) for pid in workers):
            time.sleep(0.05)
        assert [pid for pid in workers if not gone(pid)] == []
        assert port_is_free(public) and port_is_free(tunnel)  # a restart can bind them
    finally:
        portal.stop()


@pytest.mark.parametrize("workers", [24])
def test_many_workers_start_reload_and_stop(tmp_path, workers):
    """A bounded stand-in for "128 workers on 2 cores" (tests/unit/test_supervisor.py checks
    that the table has room for two generations of the most workers a config allows)."""
    public, tunnel = free_port(), free_port()
    config = portal_with(tmp_path, public, tunnel, workers)
    config["log"]["loglevel"] = "warning"
    portal = start_end("revproxy", "portal", config, tmp_path)
    pidfile = tmp_path / "portal.pid"
    try:
        wait_for(lambda: len(running_workers(pidfile)) == workers, f"{workers} workers",
                 timeout=120)
        first = {w["pid"] for w in running_workers(pidfile)}
        portal.signal(signal.SIGHUP)
        wait_for(lambda: len(running_workers(pidfile, 2)) == workers
                 and not any(w["generation"] == 1 for w in status(pidfile)["workers"]),
                 "the second generation alone", timeout=120)
        report = status(pidfile)
        assert report["generation"] == 2
        assert {w["pid"] for w in report["workers"]}.isdisjoint(first)
        assert len({w["slot"] for w in report["workers"]}) == workers
        assert sorted(w["index"] for w in report["workers"]) == list(range(1, workers + 1))
        assert all(gone(pid) for pid in first)
        portal.signal(signal.SIGTERM)
        assert portal.popen.wait(TIMEOUT) == 0
        assert "Traceback" not in portal.output()
    finally:
        portal.stop()
