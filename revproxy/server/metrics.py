"""Prometheus metrics of the whole server, served at ``/metrics`` by a small child process of
the master (``server.metrics: "host:port"``).

Everything comes from the state table, so any scrape sees the master and every worker: the
traffic of each inbound, outbound and user key (summed over the workers, those gone
included, so the counters never go back), each tunnel, each worker's counters, and what
``psutil`` says of each process (CPU, memory, descriptors). The families are built by a
custom collector on each scrape (``prometheus_client``'s text format, nothing formatted by
hand).

Why a child process: the HTTP server and ``prometheus_client`` must not live in the master,
which forks workers and must never run a thread while it does (a thread holding a lock at
the fork deadlocks the child), and whose memory every worker inherits. The child never forks.
It serves one request at a time, each with a deadline, on a listening socket the master
bound (so a bad address fails at start, and a port below 1024 works after privileges are
dropped).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from revproxy import __version__
from revproxy.reverse.balance import host_of
from revproxy.server.statetable import (
    EVENTS,
    KIND_INBOUND,
    KIND_OUTBOUND,
    KIND_USER,
    ROLE_BRIDGE,
    TUNNEL_DRAINING,
    VALUES_PER_KEY,
    WORKER_BOOTING,
    WORKER_RETIRING,
    WORKER_RUNNING,
    StateTable,
)

REQUEST_TIMEOUT = 5.0  # a client that sends no request in time is dropped
_KINDS = {KIND_INBOUND: "inbound", KIND_OUTBOUND: "outbound", KIND_USER: "user"}
_LABEL = {KIND_INBOUND: "tag", KIND_OUTBOUND: "tag", KIND_USER: "user"}
_STATES = {WORKER_BOOTING: "booting", WORKER_RUNNING: "running",
           WORKER_RETIRING: "retiring"}
_EVENT_HELP = {
    "handshake_failures": "VMess handshakes that failed (bad or unknown requests)",
    "replays_refused": "VMess requests refused as replays",
    "handoffs_sent": "visitors handed to a sibling worker that owns the chosen tunnel",
    "handoffs_received": "visitors a sibling worker handed over",
}


def _process(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds, resident bytes, open descriptors) of ``pid``, or None if it is gone
    or not ours to look at."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            return cpu.user + cpu.system, proc.memory_info().rss, proc.num_fds()
    except psutil.Error:
        return None


class TableCollector:
    """A ``prometheus_client`` collector over one state table."""

    def __init__(self, table: StateTable, master_pid: int) -> None:
        self.table = table
        self.master_pid = master_pid

    def describe(self) -> list[Metric]:
        return []  # families depend on the table: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        table = self.table
        now = time.time()
        yield from self._server(table)
        workers = table.workers()
        yield from self._workers(table, workers, now)
        yield from self._traffic(table, [slot for slot, _ in workers])
        yield from self._tunnels(table, now)

    def _server(self, table: StateTable) -> Iterator[Metric]:
        info = GaugeMetricFamily("revproxy_build_info", "revproxy's version",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("revproxy_generation",
                                "the configuration generation now served (1, then one more "
                                "per accepted reload)", value=table.generation)
        counters = table.server_counters()
        yield CounterMetricFamily("revproxy_reloads", "reloads accepted (SIGHUP)",
                                  value=counters.reloads)
        yield CounterMetricFamily("revproxy_reloads_refused",
                                  "reloads refused (the new configuration was invalid or "
                                  "could not listen)", value=counters.reloads_refused)
        yield CounterMetricFamily("revproxy_worker_respawns",
                                  "workers that died unexpectedly and were replaced",
                                  value=counters.respawns)
        master = _process(self.master_pid)
        if master is not None:
            cpu, rss, fds = master
            yield CounterMetricFamily("revproxy_master_cpu_seconds",
                                      "CPU time of the master (user + system)", value=cpu)
            yield GaugeMetricFamily("revproxy_master_resident_memory_bytes",
                                    "resident memory of the master", value=rss)
            yield GaugeMetricFamily("revproxy_master_open_fds",
                                    "open descriptors of the master", value=fds)

    def _workers(self, table: StateTable, workers: list, now: float) -> Iterator[Metric]:
        labels = ["worker", "pid", "generation"]
        states = GaugeMetricFamily("revproxy_workers", "worker processes by state",
                                   labels=["state"])
        counts = dict.fromkeys(_STATES.values(), 0)
        cpu = CounterMetricFamily("revproxy_worker_cpu_seconds",
                                  "CPU time of each worker (user + system)", labels=labels)
        rss = GaugeMetricFamily("revproxy_worker_resident_memory_bytes",
                                "resident memory of each worker", labels=labels)
        fds = GaugeMetricFamily("revproxy_worker_open_fds", "open descriptors of each worker",
                                labels=labels)
        active = GaugeMetricFamily("revproxy_worker_connections",
                                   "sessions each worker serves now", labels=labels)
        total = CounterMetricFamily("revproxy_worker_sessions",
                                    "sessions each worker served", labels=labels)
        generation = GaugeMetricFamily("revproxy_worker_generation",
                                       "the configuration generation of each worker",
                                       labels=labels)
        started = GaugeMetricFamily("revproxy_worker_start_time_seconds",
                                    "when each worker started (unix time)", labels=labels)
        heartbeat = GaugeMetricFamily("revproxy_worker_heartbeat_age_seconds",
                                      "seconds since each worker's last heartbeat",
                                      labels=labels)
        events = {name: CounterMetricFamily(f"revproxy_worker_{name}", _EVENT_HELP[name],
                                            labels=labels) for name in EVENTS}
        for slot, row in workers:
            state = _STATES.get(row.state, str(row.state))
            counts[state] = counts.get(state, 0) + 1
            values = [str(row.index), str(row.pid), str(row.generation)]
            active.add_metric(values, row.connections)
            total.add_metric(values, row.total_connections)
            generation.add_metric(values, row.generation)
            started.add_metric(values, row.started)
            heartbeat.add_metric(values, max(0.0, now - row.heartbeat))
            mine = table.read_counters(slot)[0]
            for name, value in zip(EVENTS, mine, strict=True):
                events[name].add_metric(values, value)
            seen = _process(row.pid)
            if seen is not None:
                cpu.add_metric(values, seen[0])
                rss.add_metric(values, seen[1])
                fds.add_metric(values, seen[2])
        for state, count in counts.items():
            states.add_metric([state], count)
        yield from (states, cpu, rss, fds, active, total, generation, started, heartbeat)
        yield from events.values()

    def _traffic(self, table: StateTable, slots: list[int]) -> Iterator[Metric]:
        event_totals, values = table.totals(slots)
        for name, value in zip(EVENTS, event_totals, strict=True):
            yield CounterMetricFamily(f"revproxy_{name}",
                                      _EVENT_HELP[name] + ", all workers (gone ones included)",
                                      value=value)
        families: dict[int, tuple[CounterMetricFamily, CounterMetricFamily]] = {}
        for kind, what in _KINDS.items():
            label = _LABEL[kind]
            families[kind] = (
                CounterMetricFamily(f"revproxy_{what}_bytes",
                                    f"bytes each {what} moved, by direction (up: from the "
                                    "client towards the destination)",
                                    labels=[label, "direction"]),
                CounterMetricFamily(f"revproxy_{what}_sessions",
                                    f"sessions each {what} served", labels=[label]))
        for index, (kind, name) in enumerate(table.counter_keys()):
            if kind not in families:
                continue
            up, down, sessions = values[VALUES_PER_KEY * index:VALUES_PER_KEY * (index + 1)]
            bytes_family, sessions_family = families[kind]
            bytes_family.add_metric([name, "up"], up)
            bytes_family.add_metric([name, "down"], down)
            sessions_family.add_metric([name], sessions)
        for pair in families.values():
            yield from pair

    def _tunnels(self, table: StateTable, now: float) -> Iterator[Metric]:
        labels = ["tag", "role", "pid", "id", "peer"]
        count = GaugeMetricFamily("revproxy_tunnels", "open tunnels by tag, role and state",
                                  labels=["tag", "role", "state"])
        active = GaugeMetricFamily("revproxy_tunnel_active_sessions",
                                   "sessions each tunnel carries now", labels=labels)
        total = CounterMetricFamily("revproxy_tunnel_sessions",
                                    "sessions each tunnel opened (mod 2**32)", labels=labels)
        moved = CounterMetricFamily("revproxy_tunnel_bytes",
                                    "bytes each tunnel moved, by direction (up: sent by this "
                                    "end)", labels=[*labels, "direction"])
        rate = GaugeMetricFamily("revproxy_tunnel_throughput_bytes_per_second",
                                 "recent throughput of each tunnel, both directions",
                                 labels=labels)
        draining = GaugeMetricFamily("revproxy_tunnel_draining",
                                     "1 if the tunnel is draining (no new sessions)",
                                     labels=labels)
        age = GaugeMetricFamily("revproxy_tunnel_age_seconds", "how long each tunnel is open",
                                labels=labels)
        heard = GaugeMetricFamily("revproxy_tunnel_last_heard_seconds",
                                  "seconds since each tunnel last received bytes",
                                  labels=labels)
        # Grouped by peer host: how a portal's visitors spread over its bridge hosts, and a
        # bridge's pool to each portal.
        by_host = GaugeMetricFamily("revproxy_peer_host_tunnels",
                                    "open tunnels by peer host (a portal's bridge hosts, a "
                                    "bridge's portals), tag, role and state",
                                    labels=["tag", "role", "host", "state"])
        host_sessions = GaugeMetricFamily("revproxy_peer_host_active_sessions",
                                          "sessions the tunnels of each peer host carry now",
                                          labels=["tag", "role", "host"])
        counts: dict[tuple[str, str, str], int] = {}
        hosts: dict[tuple[str, str, str, str], int] = {}
        sessions: dict[tuple[str, str, str], int] = {}
        for _slot, _index, row in table.tunnels():
            role = "bridge" if row.role == ROLE_BRIDGE else "portal"
            state = "draining" if row.state == TUNNEL_DRAINING else "active"
            counts[row.tag, role, state] = counts.get((row.tag, role, state), 0) + 1
            host = host_of(row.peer)
            hosts[row.tag, role, host, state] = hosts.get((row.tag, role, host, state), 0) + 1
            sessions[row.tag, role, host] = (sessions.get((row.tag, role, host), 0)
                                             + row.active_sessions)
            values = [row.tag, role, str(row.owner_pid), str(row.tunnel_id), row.peer]
            active.add_metric(values, row.active_sessions)
            total.add_metric(values, row.total_sessions)
            moved.add_metric([*values, "up"], row.bytes_up)
            moved.add_metric([*values, "down"], row.bytes_down)
            rate.add_metric(values, row.throughput)
            draining.add_metric(values, 1 if state == "draining" else 0)
            age.add_metric(values, max(0.0, now - row.opened))
            heard.add_metric(values, max(0.0, now - row.heartbeat))
        for (tag, role, state), number in sorted(counts.items()):
            count.add_metric([tag, role, state], number)
        for key, number in sorted(hosts.items()):
            by_host.add_metric(list(key), number)
        for group, number in sorted(sessions.items()):
            host_sessions.add_metric(list(group), number)
        yield from (count, active, total, moved, rate, draining, age, heard, by_host,
                    host_sessions)


def registry_for(table: StateTable, master_pid: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TableCollector(table, master_pid))
    return registry


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (and / for a pointer to it); nothing else."""

    registry: CollectorRegistry  # set on the subclass made per server
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.0"  # one request per connection: nobody holds the server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = generate_latest(self.registry)
            except Exception as exc:  # a scrape must not kill the process
                self._reply(500, f"collecting failed: {exc}\n".encode(), "text/plain")
                return
            self._reply(200, body, CONTENT_TYPE_LATEST)
        elif path == "/":
            self._reply(200, b'<a href="/metrics">/metrics</a>\n', "text/html")
        else:
            self._reply(404, b"not found\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Scrapes are not logged (one every few seconds)."""


class _Server(HTTPServer):
    def __init__(self, listener: socket.socket, handler: type[_Handler]) -> None:
        # Adopt the master's listening socket instead of binding one.
        super().__init__(listener.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.address_family = listener.family

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        conn.settimeout(REQUEST_TIMEOUT)  # every read and write of a request has a deadline
        return conn, address


def make_server(listener: socket.socket, table: StateTable, master_pid: int) -> HTTPServer:
    """The HTTP server on ``listener``; each ``handle_request()`` serves one request."""
    listener.setblocking(True)
    handler = type("Handler", (_Handler,), {"registry": registry_for(table, master_pid)})
    return _Server(listener, handler)


def serve(listener: socket.socket, table: StateTable, master_pid: int) -> int:
    """The metrics child's life: serve until SIGTERM (or the master's death)."""
    server = make_server(listener, table, master_pid)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and os.getppid() == master_pid:
        if _readable(listener, 1.0):
            server.handle_request()
    server.server_close()
    return 0


def _readable(sock: socket.socket, timeout: float) -> bool:
    import select

    try:
        ready, _, _ = select.select([sock], [], [], timeout)
    except InterruptedError:
        return False
    return bool(ready)
