"""Portal tunnel picker: which registered tunnel carries the next visitor.

As V2Ray: the non-draining open tunnel with the fewest active sessions; if every tunnel is
draining, the least busy open one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Pickable(Protocol):
    draining: bool

    @property
    def closed(self) -> bool: ...

    @property
    def active_sessions(self) -> int: ...


T = TypeVar("T", bound="Pickable")


def pick_tunnel(tunnels: Iterable[T]) -> T | None:
    best: T | None = None
    fallback: T | None = None
    for tunnel in tunnels:
        if tunnel.closed:
            continue
        if tunnel.draining:
            if fallback is None or tunnel.active_sessions < fallback.active_sessions:
                fallback = tunnel
        elif best is None or tunnel.active_sessions < best.active_sessions:
            best = tunnel
    return best if best is not None else fallback
