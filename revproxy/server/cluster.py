"""A worker's view of its siblings through the state table: it publishes its own tunnels and
reads theirs, and hands visitors to the sibling that owns the chosen tunnel."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from revproxy.server import handoff
from revproxy.server.statetable import (
    ROLE_BRIDGE,
    ROLE_PORTAL,
    TUNNEL_ACTIVE,
    TUNNEL_DRAINING,
    TUNNELS_PER_WORKER,
    WORKER_RETIRING,
    WORKER_RUNNING,
    StateTable,
    TunnelRow,
    TunnelSlotWriter,
)

SIBLING_SILENCE = 10.0  # a sibling whose heartbeat is older is ignored
REMOTE_TTL = 0.01  # seconds a read of the siblings' tunnels is reused


class PublishedTunnel(Protocol):
    tunnel_id: int
    tag: str
    peer: str
    draining: bool
    throughput: float
    opened: float

    @property
    def active_sessions(self) -> int: ...

    @property
    def total_sessions(self) -> int: ...

    @property
    def bytes_up(self) -> int: ...

    @property
    def bytes_down(self) -> int: ...

    @property
    def last_heard(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RemoteTunnel:
    """A sibling's portal tunnel, as the table shows it."""

    pid: int
    tunnel_id: int
    active_sessions: int
    throughput: float
    draining: bool
    closed: bool = False
    leaving: bool = False  # not in the table: a sibling's draining tunnel is a last resort


class Cluster:
    def __init__(self, table: StateTable, slot: int, generation: int,
                 endpoint: socket.socket, send_lock: AbstractContextManager,
                 sleep: Callable[[float], None]) -> None:
        self.table = table
        self.slot = slot
        self.pid = os.getpid()
        self.generation = generation
        self.endpoint = endpoint
        self._send_lock = send_lock
        self._sleep = sleep
        # row index -> (its writer, the tunnel it shows)
        self._rows: dict[int, tuple[TunnelSlotWriter, PublishedTunnel]] = {}
        self._remote: dict[str, tuple[float, list[RemoteTunnel]]] = {}  # tag -> (read at, rows)

    # -- publishing this worker's tunnels
    def add_tunnel(self, role: int, tunnel: PublishedTunnel) -> int | None:
        for index in range(TUNNELS_PER_WORKER):
            if index not in self._rows:
                writer = self.table.tunnel_writer(self.slot, index, TunnelRow(
                    owner_pid=self.pid, slot=self.slot, tunnel_id=tunnel.tunnel_id, role=role,
                    tag=tunnel.tag, peer=tunnel.peer, opened=tunnel.opened,
                    heartbeat=tunnel.last_heard, generation=self.generation))
                self._rows[index] = (writer, tunnel)
                return index
        return None  # the table is full: the tunnel works, it is just not shared

    def publish(self, index: int | None) -> None:
        """Refresh one row: called on every session opened or closed, so it only re-packs
        the changing fields (no row object built)."""
        entry = self._rows.get(index) if index is not None else None
        if entry is None:
            return
        writer, tunnel = entry
        writer.update(TUNNEL_DRAINING if tunnel.draining else TUNNEL_ACTIVE,
                      tunnel.active_sessions, tunnel.total_sessions, tunnel.bytes_up,
                      tunnel.bytes_down, tunnel.throughput, tunnel.last_heard)

    def publish_all(self) -> None:
        for index in self._rows:
            self.publish(index)

    def remove_tunnel(self, index: int | None) -> None:
        entry = self._rows.pop(index, None) if index is not None else None
        if entry is not None:
            entry[0].free()

    # -- siblings
    def siblings(self, retiring_too: bool = False) -> dict[int, int]:
        """slot -> pid of the running (and, if asked, retiring) siblings whose heartbeat is
        fresh."""
        states = (WORKER_RUNNING, WORKER_RETIRING) if retiring_too else (WORKER_RUNNING,)
        now = time.time()
        return {slot: row.pid for slot, row in self.table.workers()
                if slot != self.slot and row.state in states
                and now - row.heartbeat < SIBLING_SILENCE}

    def _sibling_tunnels(self, siblings: dict[int, int]) -> Iterable[TunnelRow]:
        """The tunnel rows that live siblings own (rows of dead owners are skipped)."""
        if not siblings:
            return ()
        return [row for slot, _index, row in self.table.tunnels(siblings)
                if siblings.get(slot) == row.owner_pid]

    def replaced(self, role: int, tag: str) -> bool:
        """Does a running sibling hold an active tunnel of ``role`` and ``tag``? (A retiring
        worker keeps its own tunnels until then, so visitors always find one.)"""
        return any(row.role == role and row.tag == tag and row.state == TUNNEL_ACTIVE
                   for row in self._sibling_tunnels(self.siblings()))

    def portal_tunnel_counts(self) -> dict[int, int]:
        """pid -> active portal tunnels, for every running sibling (zero included)."""
        siblings = self.siblings()
        counts = dict.fromkeys(siblings.values(), 0)
        for row in self._sibling_tunnels(siblings):
            if row.role == ROLE_PORTAL and row.state == TUNNEL_ACTIVE:
                counts[row.owner_pid] += 1
        return counts

    def bridge_pools(self, tag: str) -> list[tuple[int, int]]:
        """(active tunnels, their sessions) of ``tag`` for every running sibling (zeros
        included): the bridge pool seen across workers."""
        siblings = self.siblings()
        pools = {pid: [0, 0] for pid in siblings.values()}
        for row in self._sibling_tunnels(siblings):
            if row.role == ROLE_BRIDGE and row.tag == tag and row.state == TUNNEL_ACTIVE:
                pool = pools[row.owner_pid]
                pool[0] += 1
                pool[1] += row.active_sessions
        return [(tunnels, sessions) for tunnels, sessions in pools.values()]

    def remote_portal_tunnels(self, tag: str) -> Iterable[RemoteTunnel]:
        """The siblings' portal tunnels for ``tag``, read at most every ``REMOTE_TTL`` s: at
        thousands of visitors a second, reading the table for each costs more than the
        few milliseconds of staleness (a vanished sibling only makes a hand-off fail over)."""
        now = time.monotonic()
        cached = self._remote.get(tag)
        if cached is not None and now - cached[0] < REMOTE_TTL:
            return cached[1]
        found = [RemoteTunnel(row.owner_pid, row.tunnel_id, row.active_sessions, row.throughput,
                              row.state == TUNNEL_DRAINING)
                 for row in self._sibling_tunnels(self.siblings(retiring_too=True))
                 if row.role == ROLE_PORTAL and row.tag == tag]
        self._remote[tag] = (now, found)
        return found

    def hand_off(self, target: RemoteTunnel, meta: handoff.Handoff,
                 visitor: socket.socket) -> bool:
        # One sender at a time: a cooperative socket allows a single waiting writer.
        with self._send_lock:
            try:
                handoff.send(self.endpoint, target.pid, meta, visitor, self._sleep)
            except OSError:
                return False
        return True
