"""The portal's tunnel picker: sessions, recent traffic, draining fallback, hand-off cost."""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.reverse.balance import BYTES_PER_SESSION, HANDOFF_COST, pick_tunnel


@dataclass
class FakeTunnel:
    name: str
    active_sessions: int = 1
    throughput: float = 0.0
    draining: bool = False
    closed: bool = False
    leaving: bool = False
    suspect: bool = False
    peer: str = "192.0.2.1:40000"


def test_fewest_active_sessions_wins():
    a, b = FakeTunnel("a", 5), FakeTunnel("b", 2)
    assert pick_tunnel([a, b]) is b


def test_a_busy_tunnel_loses_to_an_idle_one_with_more_sessions():
    bulk = FakeTunnel("bulk", active_sessions=2, throughput=50 * BYTES_PER_SESSION)
    idle = FakeTunnel("idle", active_sessions=4)
    assert pick_tunnel([bulk, idle]) is idle


def test_draining_tunnels_only_as_fallback():
    draining = FakeTunnel("d", 0, draining=True)
    busy = FakeTunnel("busy", 100)
    assert pick_tunnel([draining, busy]) is busy
    assert pick_tunnel([draining, FakeTunnel("x", closed=True)]) is draining


def test_closed_and_empty():
    assert pick_tunnel([FakeTunnel("c", closed=True)]) is None
    assert pick_tunnel([]) is None


def test_a_sibling_tunnel_needs_a_clear_advantage():
    local = FakeTunnel("local", 20)
    close_remote = FakeTunnel("remote", 20 - int(HANDOFF_COST) + 1)
    far_better_remote = FakeTunnel("remote2", 20 - int(HANDOFF_COST) - 1)
    assert pick_tunnel([local], [close_remote]) is local
    assert pick_tunnel([local], [far_better_remote]) is far_better_remote


def test_own_draining_tunnel_before_a_hand_off_unless_the_sibling_is_clearly_better():
    draining = FakeTunnel("draining", 20, draining=True)
    near = FakeTunnel("near", 20 - int(HANDOFF_COST) + 1)
    far_less_loaded = FakeTunnel("far", 20 - int(HANDOFF_COST) - 1)
    assert pick_tunnel([draining], [near]) is draining
    assert pick_tunnel([draining], [far_less_loaded]) is far_less_loaded


def test_a_siblings_draining_tunnel_is_the_last_resort():
    theirs = FakeTunnel("theirs", 0, draining=True)
    assert pick_tunnel([FakeTunnel("mine", 50, draining=True)], [theirs]).name == "mine"
    assert pick_tunnel([], [theirs]) is theirs
    assert pick_tunnel([FakeTunnel("closed", closed=True)], [theirs]) is theirs


def test_a_tunnel_its_bridge_leaves_is_not_kept_over_a_hand_off():
    leaving = FakeTunnel("leaving", 0, draining=True, leaving=True)
    busy_sibling = FakeTunnel("sibling", 30)
    assert pick_tunnel([leaving], [busy_sibling]) is busy_sibling
    assert pick_tunnel([leaving]) is leaving  # nothing else open: the last resort
