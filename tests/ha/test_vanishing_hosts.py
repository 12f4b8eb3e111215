"""Hosts that vanish, on network namespaces (bench/netlab.py: each host in a namespace of its
own, joined by a veth pair; a host vanishes when its link goes down, so nobody sends a
reset). The scenarios are those of ``scripts/bench --ha`` (bench/ha.py), which measures
them against V2Ray; here only generous bounds are asserted, and what was seen is printed
(``pytest -s``): how many GETs failed, when, and the longest wait."""

from __future__ import annotations

import json

import pytest

from bench import netlab
from bench.ha import vanishing_bridge_host, vanishing_portal
from tests.integration.conftest import needs_v2ray

_WHY = netlab.unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"no network namespaces: {_WHY}")

# A vanished bridge host's tunnels close within about 8 s (reverse/tunnel.py); visitors may
# fail for at most ~10 s, and everything after that must be served.
FAILING_AT_MOST = 12.0
AFTER = 15.0  # seconds of load after the host vanished


def show(what: str, result: dict) -> None:
    print(f"\n{what}: " + json.dumps({k: v for k, v in result.items() if k != "outcomes"}))


@pytest.mark.parametrize("bridge_kind", ["revproxy", pytest.param("v2ray", marks=needs_v2ray)])
def test_visitors_move_to_the_bridge_host_that_is_left(bridge_kind, tmp_path):
    result = vanishing_bridge_host(tmp_path, "revproxy", bridge_kind, rate=10.0, after=AFTER)
    show(f"bridge host vanished ({bridge_kind} bridges)", result)
    assert result["portal_alive"]
    outcomes = result["outcomes"]  # (start, end, answer, ok), times relative to the vanish
    late_failures = [o for o in outcomes if not o[3] and o[0] > FAILING_AT_MOST]
    assert not late_failures, late_failures
    after = [o for o in outcomes if o[0] > FAILING_AT_MOST]
    assert len(after) >= 10 and {o[2] for o in after} == {"b2"}, after[:5]
    # Visitors are held up (their tunnel had to be found dead) for about as long at most.
    assert result["disrupted_until"] < FAILING_AT_MOST + 4.0, result


def test_a_vanished_portal_does_not_touch_the_others_visitors(tmp_path):
    result = vanishing_portal(tmp_path, separate=False, rate=10.0, after=12.0)
    show("one of two portals vanished", result)
    assert result["bridge_alive"]
    assert result["failed"] == 0, result
    assert result["slowest"] < 3.0, result
    assert result["served_after"].get("hidden", 0) >= 50, result
