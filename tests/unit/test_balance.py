"""The portal's tunnel picker: sessions, recent traffic, draining fallback, hand-off cost."""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.reverse.balance import (
    BYTES_PER_SESSION,
    HANDOFF_COST,
    HOST_HANDOFF_COST,
    HOST_TIE,
    host_of,
    pick_tunnel,
)


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


# -- several bridge hosts
def on(host: str, name: str, visitors: int, **state: object) -> FakeTunnel:
    """A tunnel of ``host`` carrying ``visitors``, and its control session unless draining."""
    sessions = visitors + (not state.get("draining", False))
    return FakeTunnel(name, sessions, peer=f"{host}:{40000 + len(name)}", **state)  # type: ignore[arg-type]


def test_hosts_share_the_visitors_whatever_their_number_of_tunnels():
    many = [on("10.0.0.1", f"a{i}", 2) for i in range(3)]  # host A: 6 sessions
    one = on("10.0.0.2", "b", 4)  # host B: 4, on its only tunnel
    assert pick_tunnel([*many, one]) is one
    assert pick_tunnel([*many, on("10.0.0.2", "b", 7)]).name == "a0"


def test_equally_loaded_hosts_take_turns():
    a, b = on("10.0.0.1", "a", 0), on("10.0.0.2", "b", 0, throughput=1000.0)
    assert {pick_tunnel([a, b], turn=n).name for n in range(4)} == {"a", "b"}
    assert pick_tunnel([a, on("10.0.0.2", "busy", 1)], turn=1) is a  # a whole session more


def test_a_host_reached_by_a_hand_off_costs_a_little_more():
    local = on("10.0.0.1", "local", 2)
    assert pick_tunnel([local], [on("10.0.0.2", "remote", 3)]) is local
    assert pick_tunnel([local], [on("10.0.0.2", "idle", 1)]).name == "idle"
    # Equally loaded: turns, even when one is a hand-off away (a worker may hold tunnels of
    # one host only, and must still spread its visitors).
    assert {pick_tunnel([local], [on("10.0.0.2", "r", 2)], turn=n).name
            for n in range(2)} == {"local", "r"}
    assert 0 < HOST_HANDOFF_COST < HOST_TIE < HANDOFF_COST


def test_a_suspect_tunnel_is_picked_only_when_nothing_else_is_open():
    suspect = on("10.0.0.1", "suspect", 0, suspect=True)
    busy = on("10.0.0.2", "busy", 50)
    assert pick_tunnel([suspect, busy]) is busy
    assert pick_tunnel([suspect], [on("10.0.0.2", "sibling", 50)]).name == "sibling"
    assert pick_tunnel([suspect]) is suspect
    # Among last resorts, a draining tunnel before a suspect one.
    draining = on("10.0.0.2", "draining", 9, draining=True, leaving=True)
    assert pick_tunnel([suspect, draining]) is draining


def test_a_host_in_service_beats_one_that_only_drains():
    draining = on("10.0.0.1", "draining", 0, draining=True)
    assert pick_tunnel([draining, on("10.0.0.2", "busy", 30)]).name == "busy"


def test_host_of():
    assert host_of("10.0.0.1:5") == "10.0.0.1"
    assert host_of("[2001:db8::1]:443") == "2001:db8::1"
    assert host_of("2001:db8::1:443") == "2001:db8::1"  # as sessions write it
    assert host_of("portal") == "portal"


def test_status_groups_tunnels_by_peer_host():
    from revproxy.server.status import peer_hosts

    def row(peer: str, sessions: int, state: str = "active") -> dict:
        return {"worker_pid": 7, "slot": 0, "row": 0, "id": 1, "role": "portal",
                "tag": "portal", "peer": peer, "host": host_of(peer), "state": state,
                "active_sessions": sessions, "total_sessions": sessions, "bytes_up": 0,
                "bytes_down": 0, "throughput": 10.0, "age": 1.0, "heard_ago": 0.0,
                "generation": 1}

    tunnels = [row("10.0.0.1:1", 2), row("10.0.0.1:2", 3, "draining"), row("10.0.0.2:1", 1)]
    hosts = peer_hosts(tunnels)
    assert [(h["host"], h["tunnels"], h["active_tunnels"], h["active_sessions"])
            for h in hosts] == [("10.0.0.1", 2, 1, 5), ("10.0.0.2", 1, 1, 1)]
