"""When a bridge worker dials another tunnel: its minimum, V2Ray's 16-sessions rule counted
over all workers (the worker with the fewest tunnels dials), traffic, its maximum."""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.reverse.bridge import GROW_THROUGHPUT, SESSIONS_PER_TUNNEL, Bridge


@dataclass
class FakeTunnel:
    active_sessions: int
    throughput: float = 0.0
    closed: bool = False


class FakeDirectory:
    def __init__(self, pools: list[tuple[int, int]]) -> None:
        self.pools = pools

    def bridge_pools(self, tag: str) -> list[tuple[int, int]]:
        assert tag == "bridge"
        return self.pools


def bridge(sessions: list[int], siblings: list[tuple[int, int]] | None = None,
           min_tunnels: int = 1, max_tunnels: int | None = None) -> Bridge:
    directory = FakeDirectory(siblings) if siblings is not None else None
    made = Bridge("bridge", "reverse.example", dispatcher=None, min_tunnels=min_tunnels,
                  max_tunnels=max_tunnels, directory=directory)
    made.tunnels = [FakeTunnel(count) for count in sessions]
    return made


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
