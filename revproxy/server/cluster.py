"""A worker's view of its siblings through the state table: the tunnel directory of
``revproxy.reverse.directory`` for this worker's portals and bridges. It lists this worker's
tunnels in the table and reads the siblings', tells the hand-off receiver which pids are
siblings, and hands visitors to the sibling that owns the chosen tunnel."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence

from revproxy.log import log
from revproxy.net.session import Session
from revproxy.reverse.directory import ListedTunnel, Role, SiblingTunnel
from revproxy.server import handoff
from revproxy.server.statetable import (
    PEER_SIZE,
    ROLE_BRIDGE,
    ROLE_PORTAL,
    TAG_SIZE,
    TUNNEL_ACTIVE,
    TUNNEL_DRAINING,
    TUNNELS_PER_WORKER,
    WORKER_RETIRING,
    WORKER_RUNNING,
    StateTable,
    TunnelRow,
    TunnelSlotWriter,
    fit_text,
)

SIBLING_SILENCE = 10.0  # a sibling whose heartbeat is older is ignored
REMOTE_TTL = 0.01  # seconds a read of the siblings' tunnels is reused
SIBLING_PIDS_TTL = 1.0  # seconds the pids of the siblings are trusted without a new read
BUSY_PAUSE = 1.0  # seconds a sibling that took no hand-off in time is not offered any
_TABLE_ROLES = {Role.PORTAL: ROLE_PORTAL, Role.BRIDGE: ROLE_BRIDGE}


def _listed(tag: str, size: int = TAG_SIZE) -> str:
    """``tag`` (or a peer, with its ``size``) as a table row shows it (cut to the field)."""
    return fit_text(tag, size).decode("utf-8", "replace")


class TableListing:
    """One of this worker's tunnels in its row of the table."""

    __slots__ = ("_cluster", "_index", "_writer", "_tunnel")

    def __init__(self, cluster: Cluster, index: int, writer: TunnelSlotWriter,
                 tunnel: ListedTunnel) -> None:
        self._cluster = cluster
        self._index = index
        self._writer = writer
        self._tunnel = tunnel

    def refresh(self) -> None:
        """Called on every session opened or closed, so it only re-packs the changing
        fields (no row object built)."""
        tunnel = self._tunnel
        # A suspect tunnel (its peer stopped acknowledging) is shown as draining: siblings
        # then use it only as a last resort, as its owner does.
        self._writer.update(TUNNEL_DRAINING if tunnel.draining or tunnel.suspect
                            else TUNNEL_ACTIVE,
                            tunnel.active_sessions, tunnel.total_sessions, tunnel.bytes_up,
                            tunnel.bytes_down, tunnel.throughput, tunnel.last_heard)

    def withdraw(self) -> None:
        if self._cluster._listings.pop(self._index, None) is self:
            self._writer.free()


class Cluster:
    """Implements ``revproxy.reverse.directory.TunnelDirectory``."""

    def __init__(self, table: StateTable, slot: int, generation: int,
                 sender: handoff.Sender) -> None:
        self.table = table
        self.slot = slot
        self.pid = os.getpid()
        self.generation = generation
        self.sender = sender  # this worker's sending side of the hand-off channel
        self._listings: dict[int, TableListing] = {}  # by tunnel row index
        self._remote: dict[str, tuple[float, list[SiblingTunnel]]] = {}  # tag -> (read at, rows)
        self._busy_until: dict[int, float] = {}  # pid -> monotonic time
        self._sibling_pids: frozenset[int] = frozenset()
        self._sibling_pids_read = 0.0
        self.handoffs_sent = 0  # visitors a sibling took (for the metrics)

    # -- listing this worker's tunnels
    def list_tunnel(self, role: Role, tunnel: ListedTunnel) -> TableListing | None:
        for index in range(TUNNELS_PER_WORKER):
            if index not in self._listings:
                writer = self.table.tunnel_writer(self.slot, index, TunnelRow(
                    owner_pid=self.pid, slot=self.slot, tunnel_id=tunnel.tunnel_id,
                    role=_TABLE_ROLES[role], tag=tunnel.tag, peer=tunnel.peer,
                    opened=tunnel.opened, heartbeat=tunnel.last_heard,
                    generation=self.generation))
                listing = self._listings[index] = TableListing(self, index, writer, tunnel)
                listing.refresh()
                return listing
        return None  # the table is full: the tunnel works, it is just not shared

    def refresh_all(self) -> None:
        for listing in list(self._listings.values()):
            listing.refresh()

    # -- siblings
    def siblings(self, retiring_too: bool = False) -> dict[int, int]:
        """slot -> pid of the running (and, if asked, retiring) siblings whose heartbeat is
        fresh."""
        states = (WORKER_RUNNING, WORKER_RETIRING) if retiring_too else (WORKER_RUNNING,)
        now = time.time()
        return {slot: row.pid for slot, row in self.table.workers()
                if slot != self.slot and row.state in states
                and now - row.heartbeat < SIBLING_SILENCE}

    def is_sibling(self, pid: int) -> bool:
        """Whether ``pid`` is another worker of this master, in any state (the hand-off
        receiver's check of a sender). The table is read again for a pid not seen there
        lately, and at least every ``SIBLING_PIDS_TTL`` s (a dead worker's pid may be reused)."""
        if pid == self.pid:
            return False
        now = time.monotonic()
        if pid in self._sibling_pids and now - self._sibling_pids_read < SIBLING_PIDS_TTL:
            return True
        self._sibling_pids = frozenset(row.pid for slot, row in self.table.workers()
                                       if slot != self.slot)
        self._sibling_pids_read = now
        return pid in self._sibling_pids

    def _sibling_tunnels(self, siblings: dict[int, int]) -> Iterable[TunnelRow]:
        """The tunnel rows that live siblings own (rows of dead owners are skipped)."""
        if not siblings:
            return ()
        return [row for slot, _index, row in self.table.tunnels(siblings)
                if siblings.get(slot) == row.owner_pid]

    def siblings_hold(self, role: Role, tag: str, peer: str | None = None) -> bool:
        """Does a running sibling hold an active tunnel of ``role`` and ``tag`` (and
        ``peer``, if given)? (A worker that stops keeps its own tunnels until then, so
        visitors always find one.)"""
        table_role, listed = _TABLE_ROLES[role], _listed(tag)
        to = None if peer is None else _listed(peer, PEER_SIZE)
        return any(row.role == table_role and row.tag == listed and row.state == TUNNEL_ACTIVE
                   and (to is None or row.peer == to)
                   for row in self._sibling_tunnels(self.siblings()))

    def portal_tunnel_counts(self) -> dict[int, int]:
        """pid -> active portal tunnels, for every running sibling (zero included)."""
        siblings = self.siblings()
        counts = dict.fromkeys(siblings.values(), 0)
        for row in self._sibling_tunnels(siblings):
            if row.role == ROLE_PORTAL and row.state == TUNNEL_ACTIVE:
                counts[row.owner_pid] += 1
        return counts

    def bridge_pools(self, tag: str, peer: str | None = None) -> list[tuple[int, int]]:
        """(active tunnels, their sessions) of ``tag`` (to portal server ``peer``, if given)
        for every running sibling (zeros included): the bridge pool seen across workers."""
        siblings, listed = self.siblings(), _listed(tag)
        to = None if peer is None else _listed(peer, PEER_SIZE)
        pools = {pid: [0, 0] for pid in siblings.values()}
        for row in self._sibling_tunnels(siblings):
            if row.role == ROLE_BRIDGE and row.tag == listed and row.state == TUNNEL_ACTIVE \
                    and (to is None or row.peer == to):
                pool = pools[row.owner_pid]
                pool[0] += 1
                pool[1] += row.active_sessions
        return [(tunnels, sessions) for tunnels, sessions in pools.values()]

    def sibling_portal_tunnels(self, tag: str) -> Sequence[SiblingTunnel]:
        """The siblings' portal tunnels for ``tag``, read at most every ``REMOTE_TTL`` s: at
        thousands of visitors a second, reading the table for each costs more than the
        few milliseconds of staleness (a vanished sibling only makes a hand-off fail over).
        Siblings that lately took no hand-off in time are left out for a while."""
        now = time.monotonic()
        cached = self._remote.get(tag)
        if cached is not None and now - cached[0] < REMOTE_TTL:
            return cached[1]
        busy = self._busy_until
        if busy:
            for pid in [pid for pid, until in busy.items() if until <= now]:
                del busy[pid]
        listed = _listed(tag)
        found = [SiblingTunnel(row.owner_pid, row.tunnel_id, tag, row.active_sessions,
                               row.throughput, row.state == TUNNEL_DRAINING, peer=row.peer)
                 for row in self._sibling_tunnels(self.siblings(retiring_too=True))
                 if row.role == ROLE_PORTAL and row.tag == listed and row.owner_pid not in busy]
        self._remote[tag] = (now, found)
        return found

    # -- hand-off
    def hand_off(self, tunnel: SiblingTunnel, session: Session, visitor: socket.socket) -> bool:
        if self._busy_until.get(tunnel.pid, 0.0) > time.monotonic():
            return False
        try:
            message = handoff.Handoff.of_session(session, tunnel.tag, tunnel.tunnel_id)
            self.sender.send(tunnel.pid, message, visitor)
        except handoff.HandoffError as exc:
            log.warning("worker %d: cannot hand %s over: %s", self.pid, session.describe(), exc)
            return False
        except TimeoutError as exc:
            log.warning("worker %d: %s; offering it none for %.0f s", self.pid, exc, BUSY_PAUSE)
            self._busy_until[tunnel.pid] = time.monotonic() + BUSY_PAUSE
            self._remote.clear()
            return False
        except OSError:
            return False  # that sibling just went away
        self.handoffs_sent += 1
        return True
