"""When a bridge worker dials another tunnel: its minimum, V2Ray's 16-sessions rule counted
over all workers (the worker with the fewest tunnels dials), traffic, its maximum; a pool per
portal server the outbound lists, each counting its own portal's tunnels only."""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.reverse.bridge import GROW_THROUGHPUT, SESSIONS_PER_TUNNEL, Bridge, TunnelPool


@dataclass
class FakeTunnel:
    active_sessions: int
    throughput: float = 0.0
    closed: bool = False


class FakeDirectory:
    def __init__(self, pools: list[tuple[int, int]]) -> None:
        self.pools = pools
        self.asked: list[str | None] = []

    def bridge_pools(self, tag: str, peer: str | None = None) -> list[tuple[int, int]]:
        assert tag == "bridge"
        self.asked.append(peer)
        return self.pools


def bridge(sessions: list[int], siblings: list[tuple[int, int]] | None = None,
           min_tunnels: int = 1, max_tunnels: int | None = None) -> TunnelPool:
    directory = FakeDirectory(siblings) if siblings is not None else None
    made = Bridge("bridge", "reverse.example", dispatcher=None, min_tunnels=min_tunnels,
                  max_tunnels=max_tunnels, directory=directory)
    pool = TunnelPool(made, None, "203.0.113.1:443")
    made.pools = [pool]
    pool.tunnels = [FakeTunnel(count) for count in sessions]
    return pool


BUSY = SESSIONS_PER_TUNNEL + 2


def test_minimum_first_and_the_v2ray_rule_alone():
    assert bridge([])._wants_tunnel()
    assert bridge([5], min_tunnels=2)._wants_tunnel()
    assert not bridge([SESSIONS_PER_TUNNEL])._wants_tunnel()
    assert bridge([BUSY])._wants_tunnel()


def test_the_worker_with_the_fewest_tunnels_grows():
    # Two busy tunnels here, one busy tunnel at the sibling: the sibling dials, not us.
    assert not bridge([BUSY, BUSY], siblings=[(1, BUSY)])._wants_tunnel()
    assert bridge([BUSY], siblings=[(2, 2 * BUSY)])._wants_tunnel()
    # Equal shares: both may grow.
    assert bridge([BUSY], siblings=[(1, BUSY)])._wants_tunnel()


def test_sessions_are_counted_over_all_workers():
    # Idle here, but the sibling's tunnels are crowded: the average says grow, and we have
    # no more tunnels than the sibling.
    assert bridge([1], siblings=[(1, 3 * SESSIONS_PER_TUNNEL)])._wants_tunnel()
    # Crowded here, idle there: on average there is room.
    assert not bridge([BUSY], siblings=[(1, 1)])._wants_tunnel()


def test_traffic_and_the_maximum():
    assert bridge([2], min_tunnels=1)._wants_tunnel() is False
    fast = bridge([2])
    fast.tunnels[0].throughput = GROW_THROUGHPUT + 1
    assert fast._wants_tunnel()
    assert not bridge([BUSY, BUSY], max_tunnels=2)._wants_tunnel()


def test_siblings_are_counted_per_portal():
    pool = bridge([BUSY], siblings=[(2, 2 * BUSY)])
    pool._wants_tunnel()
    assert pool.bridge.directory.asked == ["203.0.113.1:443"]


class Routed:
    """A dispatcher whose routing picks ``outbound`` for everything."""

    def __init__(self, outbound: object) -> None:
        self.outbound = outbound

    def route(self, session: object) -> object:
        return self.outbound


def test_a_pool_per_server_of_the_outbound():
    from revproxy.proxy.vmess.crypto import User
    from revproxy.proxy.vmess.outbound import VMessOutbound, VMessServer

    user = User("27848739-7e62-4138-9fd3-098a63964b6b")
    outbound = VMessOutbound("out", [VMessServer("198.51.100.1", 443, user, 3),
                                     VMessServer("2001:db8::1", 8443, user, 3)])
    made = Bridge("bridge", "reverse.example", dispatcher=Routed(outbound))  # type: ignore[arg-type]
    assert made.portals() == [(outbound.servers[0], "198.51.100.1:443"),
                              (outbound.servers[1], "[2001:db8::1]:8443")]
    # An outbound without a server list (or no route): one pool, the outbound's choice.
    assert Bridge("bridge", "reverse.example",
                  dispatcher=Routed(object())).portals() == [(None, "portal")]  # type: ignore[arg-type]
