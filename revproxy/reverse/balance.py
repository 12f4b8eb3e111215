"""Portal tunnel picker: which tunnel carries the next visitor.

Load counts active sessions *and* recent traffic, so a tunnel busy with a bulk download is
not picked over an idle one: every ``BYTES_PER_SESSION`` bytes/s weigh like one more active
session. As in V2Ray, draining tunnels are used only when no other tunnel is open.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

BYTES_PER_SESSION = 1_000_000.0


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


def pick_tunnel(tunnels: Iterable[T]) -> T | None:
    best: T | None = None
    best_load = 0.0
    fallback: T | None = None
    fallback_load = 0.0
    for tunnel in tunnels:
        if tunnel.closed:
            continue
        weight = load(tunnel)
        if tunnel.draining:
            if fallback is None or weight < fallback_load:
                fallback, fallback_load = tunnel, weight
        elif best is None or weight < best_load:
            best, best_load = tunnel, weight
    return best if best is not None else fallback
