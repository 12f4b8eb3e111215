"""``revproxy status``: the master and its workers as psutil sees them, plus the tunnel table
from shared memory, grouped by peer host (a portal's bridge hosts, a bridge's portals); as a
table for people or one JSON object for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from revproxy.reverse.balance import host_of
from revproxy.server.statetable import (
    TUNNEL_DRAINING,
    WORKER_BOOTING,
    WORKER_RETIRING,
    WORKER_RUNNING,
    StateTable,
    StateTableError,
)

_WORKER_STATES = {WORKER_BOOTING: "booting", WORKER_RUNNING: "running",
                  WORKER_RETIRING: "retiring"}
_ROLES = {1: "portal", 2: "bridge"}
CPU_SAMPLE = 0.2


class StatusError(Exception):
    """Nothing to report on: no such master, or no state table."""


def find_state_file(master: psutil.Process) -> str:
    """The master keeps its state table open; find it among its open files."""
    for opened in master.open_files():
        if opened.path.endswith(".state"):
            return opened.path
    raise StatusError(f"process {master.pid} has no revproxy state table open")


def _process_view(proc: psutil.Process) -> dict:
    with proc.oneshot():
        try:
            connections = len(proc.connections(kind="inet"))
        except (psutil.AccessDenied, AttributeError):
            connections = None
        return {
            "pid": proc.pid,
            "title": " ".join(proc.cmdline()),
            "uptime": round(time.time() - proc.create_time(), 1),
            "cpu_percent": proc.cpu_percent(None),
            "rss": proc.memory_info().rss,
            "fds": proc.num_fds(),
            "connections": connections,
        }


def collect(master_pid: int, state_path: str | None = None) -> dict:
    try:
        master = psutil.Process(master_pid)
    except psutil.NoSuchProcess:
        raise StatusError(f"no process {master_pid}: is revproxy running?") from None
    path = state_path or find_state_file(master)
    try:
        table = StateTable.open(path)
    except (OSError, StateTableError) as exc:
        raise StatusError(f"{path}: {exc}") from None
    try:
        children = {child.pid: child for child in master.children()}
        procs = [master, *children.values()]
        for proc in procs:  # first sample; the second, CPU_SAMPLE later, gives the percentage
            try:
                proc.cpu_percent(None)
            except psutil.Error:
                pass
        time.sleep(CPU_SAMPLE)
        workers: list[dict[str, object]] = []
        tunnels: list[dict[str, object]] = []
        counters = table.server_counters()
        report = {"master": _process_view(master), "state_file": path,
                  "generation": table.generation, "workers": workers, "tunnels": tunnels,
                  "reloads": counters.reloads, "reloads_refused": counters.reloads_refused,
                  "respawns": counters.respawns, "helpers": _helpers(children, table)}
        now = time.time()
        for slot, row in table.workers():
            entry = {"slot": slot, "pid": row.pid, "index": row.index,
                     "generation": row.generation,
                     "state": _WORKER_STATES.get(row.state, str(row.state)),
                     "heartbeat_age": round(now - row.heartbeat, 1),
                     "sessions": row.connections, "total_sessions": row.total_connections,
                     "bytes_in": row.bytes_in, "bytes_out": row.bytes_out}
            child = children.get(row.pid)
            if child is not None:
                try:
                    entry.update({k: v for k, v in _process_view(child).items() if k != "pid"})
                except psutil.Error:
                    pass
            workers.append(entry)
        for slot, index, tunnel in table.tunnels():
            tunnels.append({
                "worker_pid": tunnel.owner_pid, "slot": slot, "row": index,
                "id": tunnel.tunnel_id, "role": _ROLES.get(tunnel.role, str(tunnel.role)),
                "tag": tunnel.tag, "peer": tunnel.peer, "host": host_of(tunnel.peer),
                "state": "draining" if tunnel.state == TUNNEL_DRAINING else "active",
                "active_sessions": tunnel.active_sessions,
                "total_sessions": tunnel.total_sessions,
                "bytes_up": tunnel.bytes_up, "bytes_down": tunnel.bytes_down,
                "throughput": round(tunnel.throughput, 1), "age": round(now - tunnel.opened, 1),
                "heard_ago": round(now - tunnel.heartbeat, 1),
                "generation": tunnel.generation})
        tunnels.sort(key=lambda t: (t["role"], t["tag"], t["host"], t["worker_pid"], t["id"]))
        report["hosts"] = peer_hosts(tunnels)
        return report
    finally:
        table.close()


def peer_hosts(tunnels: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tunnels summed by (role, tag, peer host): how a portal's load spreads over its
    bridge hosts, and a bridge's pool to each portal."""
    hosts: dict[tuple[str, str, str], dict[str, Any]] = {}
    for t in tunnels:
        entry = hosts.setdefault((t["role"], t["tag"], t["host"]), {
            "role": t["role"], "tag": t["tag"], "host": t["host"], "tunnels": 0,
            "active_tunnels": 0, "active_sessions": 0, "throughput": 0.0})
        entry["tunnels"] += 1
        entry["active_tunnels"] += t["state"] == "active"
        entry["active_sessions"] += t["active_sessions"]
        entry["throughput"] = round(entry["throughput"] + t["throughput"], 1)
    return list(hosts.values())


def _helpers(children: dict[int, psutil.Process], table: StateTable) -> list[dict]:
    """The master's children that are not workers: its metrics and API processes."""
    workers = {row.pid for _, row in table.workers()}
    found = []
    for pid, child in sorted(children.items()):
        if pid in workers:
            continue
        try:
            title = " ".join(child.cmdline()).strip()  # setproctitle pads it
        except psutil.Error:
            continue
        if title.startswith("revproxy: "):
            found.append({"pid": pid, "title": title})
    return found


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(report: dict) -> str:
    master = report["master"]
    lines = [f"master  pid {master['pid']}  up {master['uptime']:.0f}s  "
             f"generation {report['generation']}  rss {_size(master['rss'])}  "
             f"state {report['state_file']}",
             f"reloads {report['reloads']} (refused {report['reloads_refused']})  "
             f"respawns {report['respawns']}"
             + "".join(f"  {h['title'].removeprefix('revproxy: ').split(' ')[0]} pid "
                       f"{h['pid']}" for h in report["helpers"]), "",
             f"{'PID':>7} {'WORKER':>6} {'GEN':>3} {'STATE':8} {'UP':>7} {'CPU%':>5} "
             f"{'RSS':>10} {'FDS':>4} {'CONNS':>5} {'SESS':>5}"]
    for w in report["workers"]:
        lines.append(f"{w['pid']:>7} {w['index']:>6} {w['generation']:>3} {w['state']:8} "
                     f"{w.get('uptime', 0):>6.0f}s {w.get('cpu_percent', 0):>5.1f} "
                     f"{_size(w.get('rss', 0)):>10} {w.get('fds', 0):>4} "
                     f"{w.get('connections') or 0:>5} {w['sessions']:>5}")
    if report.get("hosts"):
        lines += ["", f"{'PEER HOST':24} {'ROLE':6} {'TAG':14} {'TUNNELS':>7} {'ACTIVE':>6} "
                      f"{'SESS':>6} {'RATE/s':>10}"]
        for h in report["hosts"]:
            lines.append(f"{h['host']:24} {h['role']:6} {h['tag']:14} {h['tunnels']:>7} "
                         f"{h['active_tunnels']:>6} {h['active_sessions']:>6} "
                         f"{_size(h['throughput']):>10}")
    lines += ["", f"{'TUNNEL':14} {'ROLE':6} {'WORKER':>7} {'STATE':8} {'ACTIVE':>6} "
                  f"{'TOTAL':>6} {'UP':>10} {'DOWN':>10} {'RATE/s':>10}  PEER"]
    for t in report["tunnels"]:
        lines.append(f"{t['tag'] + '#' + str(t['id']):14} {t['role']:6} {t['worker_pid']:>7} "
                     f"{t['state']:8} {t['active_sessions']:>6} {t['total_sessions']:>6} "
                     f"{_size(t['bytes_up']):>10} {_size(t['bytes_down']):>10} "
                     f"{_size(t['throughput']):>10}  {t['peer']}")
    if not report["tunnels"]:
        lines.append("(no tunnels)")
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, sort_keys=True)
