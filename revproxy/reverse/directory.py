"""The tunnel directory: what a portal or bridge needs from the sibling workers around it.

In a multi-worker server each worker lists its tunnels where the siblings see them, reads the
siblings' tunnels (a portal, to pick one for a visitor; a bridge, to size its pool over all
workers) and hands a visitor to the sibling that owns the tunnel picked for it. The reverse
proxy knows only this protocol; ``revproxy.server.cluster.Cluster`` implements it over the
shared state table and the hand-off channel. Without a directory a portal or bridge serves
alone.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from revproxy.net.session import Session


class Role(enum.Enum):
    """Which end of the reverse proxy a tunnel belongs to."""

    PORTAL = "portal"
    BRIDGE = "bridge"


class ListedTunnel(Protocol):
    """What a listing shows of a tunnel (``reverse.tunnel.Tunnel`` has all of it)."""

    tunnel_id: int
    tag: str
    peer: str  # the other end's address: a portal's bridge host, a bridge's portal server
    draining: bool
    suspect: bool  # the peer stopped acknowledging: listed as draining
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


class Listing(Protocol):
    """One tunnel's entry in the directory, kept by the tunnel's owner."""

    def refresh(self) -> None:
        """Show the tunnel's current state (sessions, bytes, draining) to the siblings."""

    def withdraw(self) -> None:
        """The tunnel is gone: remove its entry."""


@dataclass(slots=True)
class SiblingTunnel:
    """A portal tunnel that a sibling worker owns, as the directory showed it (a snapshot;
    not frozen, so that it has the picker's ``Pickable`` shape)."""

    pid: int  # the owner
    tunnel_id: int
    tag: str
    active_sessions: int
    throughput: float
    draining: bool
    closed: bool = False  # (for the picker: a listed tunnel is open)
    leaving: bool = False  # (for the picker: a sibling's draining tunnel is a last resort)
    peer: str = ""  # the bridge host's address, "host:port"
    suspect: bool = False  # (a sibling lists a suspect tunnel as draining)


class TunnelDirectory(Protocol):
    """The siblings' side of the reverse proxy (see the module docstring)."""

    def list_tunnel(self, role: Role, tunnel: ListedTunnel) -> Listing | None:
        """List ``tunnel`` for the siblings; None when there is no room (the tunnel still
        works, it is just not shared)."""

    def sibling_portal_tunnels(self, tag: str) -> Sequence[SiblingTunnel]:
        """The siblings' portal tunnels of portal ``tag`` (may be a few milliseconds old)."""

    def hand_off(self, tunnel: SiblingTunnel, session: Session, visitor: socket.socket) -> bool:
        """Pass ``visitor`` (with ``session``: its target, origin and ``first_payload``) to
        the sibling that owns ``tunnel``; False if that sibling cannot take it, in which case
        the caller still owns the visitor."""

    def bridge_pools(self, tag: str, peer: str | None = None) -> list[tuple[int, int]]:
        """(active tunnels, their sessions) of bridge ``tag`` for every running sibling;
        with ``peer``, only its tunnels to that portal server (a pool per portal)."""

    def portal_tunnel_counts(self) -> dict[int, int]:
        """pid -> active portal tunnels, for every running sibling (zero included)."""

    def siblings_hold(self, role: Role, tag: str, peer: str | None = None) -> bool:
        """Whether a running sibling holds an active tunnel of ``role`` and ``tag`` (and,
        if given, ``peer``)."""
