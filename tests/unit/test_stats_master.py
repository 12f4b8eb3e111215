"""The master's side of operations, on the fake process table of test_supervisor: the
systemd notification sequence (to a real datagram socket), the helper processes (metrics,
API) started, restarted with a back-off, restarted on a reload and stopped with the server,
and the reloads and respawns counted in the state table."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from revproxy.server.notify import Notifier
from revproxy.server.runfiles import default_pid_path
from revproxy.server.supervisor import FIRST_HELPER_DELAY
from tests.unit.test_supervisor import Master, keep_logging  # noqa: F401 - a fixture


@pytest.fixture
def systemd() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0revproxy-master-test-{os.getpid()}-{time.monotonic_ns()}")
    sock.settimeout(0)
    yield sock
    sock.close()


def said(sock: socket.socket) -> list[str]:
    """The first line of each datagram received so far."""
    lines = []
    while True:
        try:
            lines.append(sock.recv(4096).decode().split("\n")[0])
        except BlockingIOError:
            return lines


def with_api(master: Master, workers: int = 2, **server: object) -> None:
    master.config_path.write_text(json.dumps({
        "server": {"workers": workers, **server},
        "api": {"tag": "api", "services": ["StatsService"]}, "stats": {}}))


def test_ready_reloading_ready_stopping(tmp_path: Path, systemd: socket.socket) -> None:
    master = Master(tmp_path, workers=2)
    master.sup.notifier = Notifier("@" + systemd.getsockname()[1:].decode())
    master.step()
    assert said(systemd) == []  # forked, not serving yet
    master.step(0.5, beating=master.of(1))
    assert said(systemd) == ["READY=1"]
    master.step(1, beating=master.of(1))
    assert said(systemd) == []  # once
    master.signal(signal.SIGHUP)
    assert said(systemd) == ["RELOADING=1"]
    master.step(0.5, beating=master.of(1) + master.of(2))
    assert said(systemd) == ["READY=1"]  # the new generation runs, the old one retires
    master.config_path.write_text("{broken")
    master.signal(signal.SIGHUP)
    assert said(systemd) == ["RELOADING=1", "READY=1"]  # refused: still serving
    counters = master.table.server_counters()
    assert (counters.reloads, counters.reloads_refused) == (1, 1)
    master.signal(signal.SIGTERM)
    assert said(systemd) == ["STOPPING=1"]
    master.table.close()


def test_the_api_process_is_kept_and_restarted(tmp_path: Path) -> None:
    master = Master(tmp_path, workers=2)
    with_api(master)
    master.signal(signal.SIGHUP)  # now with an api
    master.step(0.1, beating=master.of(2))
    helper = master.sup.helpers["api"]
    first = helper.pid
    assert first in master.fake.alive and first not in master.sup.workers
    # it dies young: restarted after FIRST_HELPER_DELAY, then twice that
    for delay in (FIRST_HELPER_DELAY, 2 * FIRST_HELPER_DELAY):
        dead = helper.pid
        master.fake.exit(dead, code=1)
        master.step()
        assert helper.pid == 0
        master.step(delay - 0.05)
        assert helper.pid == 0
        master.step(0.1)
        assert helper.pid not in (0, dead)
    # a reload restarts it at once, to serve the new configuration
    running = helper.pid
    master.signal(signal.SIGHUP)
    assert (running, signal.SIGTERM) in master.fake.sent
    master.fake.exit(running)
    master.step()
    master.step()
    assert helper.pid not in (0, running)
    # a configuration without api: it goes and stays gone
    master.write_config(2)
    master.signal(signal.SIGHUP)
    master.fake.exit(helper.pid)
    master.step()
    master.step(60)
    assert helper.pid == 0
    master.table.close()


def test_stop_waits_for_the_helpers_too(tmp_path: Path) -> None:
    master = Master(tmp_path, workers=1)
    with_api(master, workers=1)
    master.signal(signal.SIGHUP)
    master.step(0.1, beating=master.of(2))
    helper = master.sup.helpers["api"].pid
    master.signal(signal.SIGTERM)
    assert (helper, signal.SIGTERM) in master.fake.sent
    for child in list(master.sup.workers):
        master.fake.exit(child)
    master.step()
    assert not master.sup.finished  # the API process is still there
    master.fake.exit(helper)
    master.step()
    assert master.sup.finished
    master.table.close()


def test_a_metrics_socket_is_bound_and_moved_on_reload(tmp_path: Path) -> None:
    master = Master(tmp_path, workers=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with_api(master, workers=1, metrics=f"127.0.0.1:{port}")
    master.signal(signal.SIGHUP)
    assert master.sup.metrics_address == ("127.0.0.1", port)
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it listens
    master.step()
    assert master.sup.helpers["metrics"].pid in master.fake.alive
    master.write_config(1)  # no metrics any more
    master.signal(signal.SIGHUP)
    assert master.sup.metrics_socket is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    master.table.close()


def test_respawns_are_counted(tmp_path: Path) -> None:
    master = Master(tmp_path, workers=1)
    master.step()
    master.fake.exit(master.of(1)[0].pid, signum=signal.SIGKILL)
    master.step()
    assert master.table.server_counters().respawns == 1
    master.table.close()


def test_the_default_pid_file_is_named_after_the_config(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from revproxy.config.merge import ConfigSource

    monkeypatch.chdir(tmp_path)
    one = default_pid_path(ConfigSource.of(["a.yaml"]))
    assert one == default_pid_path(ConfigSource.of([str(tmp_path / "a.yaml")]))
    assert one != default_pid_path(ConfigSource.of(["b.yaml"]))
    assert one != default_pid_path(ConfigSource.of(["a.yaml"], ["conf.d"]))
    assert os.path.basename(one).startswith("revproxy-") and one.endswith(".pid")
