"""Portal tunnel picker: which tunnel carries the next visitor.

Load counts active sessions *and* recent traffic, so a tunnel busy with a bulk download is
not picked over an idle one: every ``BYTES_PER_SESSION`` bytes/s weigh like one more active
session. A sibling worker's tunnel costs a hand-off, which weighs like ``HANDOFF_COST``
sessions, so a worker prefers its own tunnels when loads are close. As in V2Ray, a worker uses
its draining tunnels only when it has no other open; across workers, a worker with only
draining tunnels keeps using them unless a sibling's tunnel is clearly less loaded (under
new-connection load the 256-session rule drains tunnels every few seconds: handing off every
visitor meanwhile cost more than it balanced). A sibling's draining tunnel is the last resort,
and so is a *suspect* tunnel (its peer stopped acknowledging: the host may have vanished).

Several bridge hosts may serve one portal (tunnels from different peer addresses, same
domain): they form one pool, balanced by host first. Each host offers its best tunnel by the
rules above; the host whose tunnels carry the least load in total wins, so two hosts share
the visitors evenly whatever number of tunnels each keeps. A hand-off to reach a host costs
only ``HOST_HANDOFF_COST`` there, less than the tie: the hosts' backends carry the load, and
a worker that holds tunnels of one host only must still send its share to the others.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

# Busy short sessions make traffic too, and the rate is a smoothed sample up to 2 s old: at
# 1 MB/s per session a keep-alive tunnel's past rate outweighed its session count.
BYTES_PER_SESSION = 8_000_000.0
HANDOFF_COST = 8.0
HOST_HANDOFF_COST = 0.25
HOST_TIE = 0.5  # hosts whose loads differ by less are equally loaded


class Pickable(Protocol):
    draining: bool
    leaving: bool  # drained because its bridge is going away, not by the 256-session rule
    suspect: bool  # its peer's TCP stopped acknowledging
    throughput: float
    peer: str  # the bridge's address, "host:port"

    @property
    def closed(self) -> bool: ...

    @property
    def active_sessions(self) -> int: ...


T = TypeVar("T", bound=Pickable)


@functools.lru_cache(maxsize=1024)  # (asked for every tunnel at every pick)
def host_of(peer: str) -> str:
    """The host part of a ``host:port`` peer address (IPv6 with or without brackets)."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def load(tunnel: Pickable) -> float:
    return tunnel.active_sessions + tunnel.throughput / BYTES_PER_SESSION


def _least_loaded(tunnels: Iterable[T], draining: bool) -> tuple[T | None, float]:
    best: T | None = None
    best_load = 0.0
    for tunnel in tunnels:
        if tunnel.closed or tunnel.suspect or tunnel.draining != draining:
            continue
        weight = load(tunnel)
        if best is None or weight < best_load:
            best, best_load = tunnel, weight
    return best, best_load


def _last_resort(tunnels: Iterable[T]) -> T | None:
    """Any open tunnel, the least loaded: draining ones before suspect ones."""
    open_ = [t for t in tunnels if not t.closed]
    return min(open_, key=lambda t: (t.suspect, load(t)), default=None)


def _pick_in_host(tunnels: Sequence[T], remote: Sequence[T]) -> T | None:
    """The rules of the module docstring among one host's tunnels."""
    local, local_load = _least_loaded(tunnels, draining=False)
    if local is None:
        # Only draining tunnels here: one of them still beats paying for a hand-off, as
        # long as a sibling's tunnel is not clearly less loaded (a worker that holds no
        # active tunnel is the first to accept the bridge's replacement).
        # A tunnel its bridge is leaving is not one of them: it closes once idle.
        local, local_load = _least_loaded([t for t in tunnels if not t.leaving], draining=True)
    other, other_load = _least_loaded(remote, draining=False)
    if other is not None and (local is None or other_load + HANDOFF_COST < local_load):
        return other
    if local is not None:
        return local
    # Last resort, as in V2Ray: any draining (then suspect) tunnel, this worker's first.
    return _last_resort(tunnels) or _last_resort(remote)


def _visitors(tunnel: Pickable) -> float:
    """``load`` without the control session, which a tunnel has while it is not draining:
    a host is not busier for keeping more tunnels open."""
    return max(0.0, load(tunnel) - (not tunnel.draining))


def _rank(tunnel: Pickable) -> int:
    """0: in service; 1: draining; 2: its bridge leaves; 3: suspect (the host may be gone)."""
    if tunnel.suspect:
        return 3
    if tunnel.leaving:
        return 2
    return 1 if tunnel.draining else 0


def pick_tunnel(tunnels: Sequence[T], remote: Sequence[T] = (), turn: int = 0) -> T | None:
    """The least loaded of this worker's ``tunnels`` and its siblings' ``remote`` ones, on the
    least loaded bridge host. Hosts within ``HOST_TIE`` of the least load take turns
    (``turn``: a counter the caller advances), so that light load, where every host carries
    nothing at the moment of the pick, still spreads over them."""
    # One host (the usual case): its pick, without grouping (this runs for every visitor).
    first: str | None = None
    for group in (tunnels, remote):
        for tunnel in group:
            if not tunnel.closed:
                host = host_of(tunnel.peer)
                if first is None:
                    first = host
                elif host != first:
                    break
        else:
            continue
        break
    else:
        return _pick_in_host(tunnels, remote)
    hosts: dict[str, tuple[list[T], list[T]]] = {}
    for index, group in enumerate((tunnels, remote)):
        for tunnel in group:
            if not tunnel.closed:
                hosts.setdefault(host_of(tunnel.peer), ([], []))[index].append(tunnel)
    if len(hosts) <= 1:
        return _pick_in_host(tunnels, remote)
    offers: list[tuple[int, float, T]] = []
    for local, siblings in hosts.values():
        choice = _pick_in_host(local, siblings)
        if choice is None:
            continue
        host_load = sum(_visitors(t) for t in local) + sum(_visitors(t) for t in siblings)
        if not any(choice is t for t in local):
            host_load += HOST_HANDOFF_COST
        offers.append((_rank(choice), host_load, choice))
    if not offers:
        return None
    rank, least = min((r, c) for r, c, _ in offers)
    ties = [t for r, c, t in offers if r == rank and c <= least + HOST_TIE]
    return ties[turn % len(ties)]
