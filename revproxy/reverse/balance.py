"""Portal tunnel picker: which tunnel carries the next visitor.

Load counts active sessions *and* recent traffic, so a tunnel busy with a bulk download is
not picked over an idle one: every ``BYTES_PER_SESSION`` bytes/s weigh like one more active
session. A sibling worker's tunnel costs a hand-off, which weighs like ``HANDOFF_COST``
sessions, so a worker prefers its own tunnels when loads are close. As in V2Ray, draining
tunnels are used only when no other tunnel is open.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Protocol, TypeVar

# Busy short sessions make traffic too, and the rate is a smoothed sample up to 2 s old: at
# 1 MB/s per session a keep-alive tunnel's past rate outweighed its session count.
BYTES_PER_SESSION = 8_000_000.0
HANDOFF_COST = 4.0


class Pickable(Protocol):
    draining: bool
    throughput: float

    @property
    def closed(self) -> bool: ...

    @property
    def active_sessions(self) -> int: ...


T = TypeVar("T", bound=Pickable)


def load(tunnel: Pickable) -> float:
    return tunnel.active_sessions + tunnel.throughput / BYTES_PER_SESSION


def pick_tunnel(tunnels: Iterable[T], remote: Iterable[T] = ()) -> T | None:
    """The least loaded of this worker's ``tunnels`` and its siblings' ``remote`` ones."""
    best: T | None = None
    best_load = 0.0
    fallback: T | None = None
    fallback_load = 0.0
    for tunnel, extra in itertools.chain(zip(tunnels, itertools.repeat(0.0)),
                                         zip(remote, itertools.repeat(HANDOFF_COST))):
        if tunnel.closed:
            continue
        weight = load(tunnel) + extra
        if tunnel.draining:
            if fallback is None or weight < fallback_load:
                fallback, fallback_load = tunnel, weight
        elif best is None or weight < best_load:
            best, best_load = tunnel, weight
    return best if best is not None else fallback
