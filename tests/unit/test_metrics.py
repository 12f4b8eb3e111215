"""The Prometheus side: the collector's families over a state table (parsed back with
prometheus_client's own parser), the metrics process's HTTP server, and the systemd
notifications sent to a real Unix datagram socket."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from revproxy.server import metrics
from revproxy.server.notify import Notifier
from revproxy.server.statetable import (
    EVENTS,
    KIND_INBOUND,
    KIND_OUTBOUND,
    KIND_USER,
    ROLE_PORTAL,
    WORKER_RUNNING,
    StateTable,
    TunnelRow,
    WorkerRow,
)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[StateTable]:
    with StateTable.create(str(tmp_path / "t.state"), os.getpid()) as table:
        yield table


def samples(table: StateTable) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry_for(table, os.getpid())).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_every_family_from_the_table(table: StateTable) -> None:
    table.register_counter(KIND_INBOUND, "external")
    table.register_counter(KIND_USER, "a@b")
    pid = os.getpid()
    table.worker_writer(4, WorkerRow(pid=pid, generation=1, index=1, state=WORKER_RUNNING,
                                     started=time.time(), heartbeat=time.time(),
                                     connections=3, total_connections=10))
    counters = table.counter_writer(4)
    counters.values[0:3] = [100, 2000, 10]
    counters.values[3:6] = [1, 2, 3]
    counters.events[EVENTS.index("replays_refused")] = 2
    counters.publish()
    table.tunnel_writer(4, 0, TunnelRow(owner_pid=pid, slot=4, tunnel_id=7, role=ROLE_PORTAL,
                                        tag="portal", peer="127.0.0.1:5", active_sessions=2,
                                        total_sessions=9, bytes_up=11, bytes_down=22,
                                        throughput=5.0, opened=time.time(),
                                        heartbeat=time.time(), generation=1))
    table.count_server_event(reloads=2, respawns=1)
    found = samples(table)
    worker = (("generation", "1"), ("pid", str(pid)), ("worker", "1"))
    tunnel = (("id", "7"), ("peer", "127.0.0.1:5"), ("pid", str(pid)), ("role", "portal"),
              ("tag", "portal"))
    assert found["revproxy_inbound_bytes_total", (("direction", "down"), ("tag", "external"))] \
        == 2000
    assert found["revproxy_inbound_sessions_total", (("tag", "external"),)] == 10
    assert found["revproxy_user_bytes_total", (("direction", "up"), ("user", "a@b"))] == 1
    assert found["revproxy_worker_connections", worker] == 3
    assert found["revproxy_worker_sessions_total", worker] == 10
    assert found["revproxy_worker_replays_refused_total", worker] == 2
    assert found["revproxy_replays_refused_total", ()] == 2
    assert found["revproxy_worker_resident_memory_bytes", worker] > 0
    assert found["revproxy_worker_cpu_seconds_total", worker] > 0
    assert found["revproxy_worker_open_fds", worker] > 0
    assert found["revproxy_tunnel_bytes_total", (("direction", "down"), *tunnel)] == 22
    assert found["revproxy_tunnel_active_sessions", tunnel] == 2
    assert found["revproxy_tunnels", (("role", "portal"), ("state", "active"),
                                      ("tag", "portal"))] == 1
    assert found["revproxy_reloads_total", ()] == 2
    assert found["revproxy_worker_respawns_total", ()] == 1
    assert found["revproxy_workers", (("state", "running"),)] == 1
    assert found["revproxy_master_resident_memory_bytes", ()] > 0
    # the worker is reaped: its traffic stays in the totals, its own series go
    table.clear_worker(4)
    found = samples(table)
    assert found["revproxy_inbound_bytes_total", (("direction", "down"), ("tag", "external"))] \
        == 2000
    assert ("revproxy_worker_connections", worker) not in found


def test_the_metrics_process_serves_http(table: StateTable) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = metrics.make_server(listener, table, os.getpid())
    server.timeout = 0.2  # handle_request() returns when idle, so the loop sees stop
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.handle_request()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            assert b"revproxy_generation 0.0" in answer.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert missing.value.code == 404
        # a client that sends nothing holds the server at most REQUEST_TIMEOUT
        silent = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            assert answer.status == 200
        assert time.monotonic() - started < metrics.REQUEST_TIMEOUT + 5
        silent.close()
        stop.set()
        thread.join(10)
    finally:
        server.server_close()


def receiver() -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@revproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind("\0" + name[1:])
    sock.settimeout(5)
    return sock, name


def test_notify_sends_datagrams_to_an_abstract_socket() -> None:
    sock, name = receiver()
    with sock:
        notifier = Notifier(name)
        assert notifier.enabled
        assert notifier.ready("2 workers")
        message = sock.recv(4096).decode()
        assert message.splitlines()[:2] == ["READY=1", "STATUS=2 workers"]
        assert f"MAINPID={os.getpid()}" in message
        assert notifier.reloading()
        assert sock.recv(4096).decode().startswith("RELOADING=1\nSTATUS=reloading\n"
                                                   "MONOTONIC_USEC=")
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_notify_to_a_path_and_without_a_socket(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert Notifier().send(READY=1)
        assert sock.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled and not Notifier().ready("x")
    assert not Notifier("relative/path").send(READY=1)
    assert not Notifier(str(tmp_path / "gone")).send(READY=1)  # nobody listens: no error


def test_the_grafana_dashboard_uses_only_metrics_that_exist(table: StateTable) -> None:
    import json
    import re

    table.register_counter(KIND_INBOUND, "x")
    table.register_counter(KIND_USER, "u")
    table.register_counter(KIND_OUTBOUND, "o")
    pid = os.getpid()
    table.worker_writer(0, WorkerRow(pid=pid, state=WORKER_RUNNING))
    table.tunnel_writer(0, 0, TunnelRow(owner_pid=pid, tag="t"))
    exposed = {name for name, _ in samples(table)}
    dashboard = json.loads((Path(__file__).parents[2] / "packaging" / "grafana"
                            / "revproxy.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"revproxy_[a-z_]+", target["expr"])}
    assert used and used <= exposed, used - exposed
