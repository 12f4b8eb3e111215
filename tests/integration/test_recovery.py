"""Recovery: the bridge finds its way back when the portal restarts or freezes."""

from __future__ import annotations

import signal
import time

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.conftest import USER_ID, free_port, needs_v2ray, start_end, wait_served

PORTALS = ["revproxy", pytest.param("v2ray", marks=needs_v2ray)]


@pytest.mark.parametrize("portal_kind", PORTALS)
def test_portal_killed_and_restarted(portal_kind, backend, tmp_path):
    public, tunnel = free_port(), free_port()
    config = portal_config(USER_ID, public, tunnel)
    portal = start_end(portal_kind, "portal", config, tmp_path)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp_path)
    try:
        wait_served(public, procs=(portal, bridge))
        portal.signal_all(signal.SIGKILL)
        portal.stop()
        time.sleep(1.0)
        portal = start_end(portal_kind, "portal2", config, tmp_path)
        waited = wait_served(public, timeout=30, procs=(portal, bridge))
        assert waited < 5.0, f"served again only after {waited:.1f} s"
    finally:
        bridge.stop()
        portal.stop()


def test_portal_frozen_then_resumed(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_config(USER_ID, public, tunnel), tmp_path)
    bridge = start_end("revproxy", "bridge",
                       bridge_config(USER_ID, backend, tunnel, loglevel="info"), tmp_path)
    try:
        wait_served(public, procs=(portal, bridge))
        portal.signal_all(signal.SIGSTOP)
        time.sleep(15)
        log = bridge.output()
        assert "silent for" in log, log[-2000:]
        portal.signal_all(signal.SIGCONT)
        waited = wait_served(public, timeout=30, procs=(portal, bridge))
        assert waited < 5.0, f"served again only after {waited:.1f} s"
    finally:
        bridge.stop()
        portal.stop()
