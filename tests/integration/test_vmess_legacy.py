"""VMess users with alterId > 0, with the real v2ray binary: a V2Ray 4.34 bridge whose user has
alter ids sends legacy requests, which a revproxy portal accepts; a revproxy bridge with such a
user speaks AEAD, which a V2Ray portal accepts; disableInsecureEncryption refuses "none"."""

from __future__ import annotations

import hashlib
import http.client
import time

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.backend import PAGE, blob_sha256
from tests.integration.conftest import (
    USER_ID,
    free_port,
    needs_v2ray,
    request,
    start_end,
    wait_served,
)

pytestmark = needs_v2ray
ALTER_ID = 64


def with_alter_id(config: dict, alter_id: int = ALTER_ID) -> dict:
    """The document's config with ``alterId`` on every VMess user (inbound and outbound)."""
    for inbound in config.get("inbounds", ()):
        for client in inbound.get("settings", {}).get("clients", ()):
            client["alterId"] = alter_id
    for outbound in config.get("outbounds", ()):
        for server in outbound.get("settings", {}).get("vnext", ()):
            for user in server["users"]:
                user["alterId"] = alter_id
    return config


@pytest.mark.parametrize("bridge_kind,portal_kind", [("v2ray", "revproxy"),
                                                      ("revproxy", "v2ray"),
                                                      ("revproxy", "revproxy")])
def test_alter_id_users_are_served(bridge_kind, portal_kind, backend, tmp_path):
    public, tunnel = free_port(), free_port()
    portal = start_end(portal_kind, "portal",
                       with_alter_id(portal_config(USER_ID, public, tunnel)), tmp_path)
    bridge = start_end(bridge_kind, "bridge",
                       with_alter_id(bridge_config(USER_ID, backend, tunnel)), tmp_path)
    try:
        wait_served(public, procs=(portal, bridge))
        assert request(public) == (200, PAGE)
        size = 8 * 2**20
        conn = http.client.HTTPConnection("127.0.0.1", public, timeout=60)
        conn.request("GET", f"/blob/{size}")
        body = conn.getresponse().read()
        conn.close()
        assert len(body) == size and hashlib.sha256(body).hexdigest() == blob_sha256(size)
        if bridge_kind == "revproxy":
            assert "speaks VMess AEAD" in bridge.output()
    finally:
        bridge.stop()
        portal.stop()


def test_disable_insecure_encryption_refuses_none(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    config = with_alter_id(portal_config(USER_ID, public, tunnel))
    config["log"]["loglevel"] = "info"
    config["inbounds"][1]["settings"]["disableInsecureEncryption"] = True
    portal = start_end("revproxy", "portal", config, tmp_path)
    bridge = start_end("v2ray", "bridge",
                       with_alter_id(bridge_config(USER_ID, backend, tunnel, security="none")),
                       tmp_path)
    try:
        with pytest.raises(pytest.fail.Exception):
            wait_served(public, timeout=8, procs=(portal, bridge))
        assert "insecure encryption" in portal.output()
        assert portal.alive()
    finally:
        bridge.stop()
        portal.stop()


def test_the_environment_can_force_aead(backend, tmp_path, monkeypatch):
    """V2Ray's switch: with it, the legacy requests of a V2Ray 4.34 bridge are refused."""
    monkeypatch.setenv("V2RAY_VMESS_AEAD_FORCED", "true")  # the children inherit it
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal",
                       with_alter_id(portal_config(USER_ID, public, tunnel)), tmp_path)
    bridge = start_end("v2ray", "bridge", with_alter_id(bridge_config(USER_ID, backend, tunnel)),
                       tmp_path)
    try:
        with pytest.raises(pytest.fail.Exception):
            wait_served(public, timeout=8, procs=(portal, bridge))
        assert "AEAD is forced by the environment" in portal.output()
    finally:
        bridge.stop()
        portal.stop()


def test_tunnels_are_rotated_before_their_nonces_run_out(backend, tmp_path, monkeypatch):
    """With a small forced threshold, tunnels are drained and replaced again and again during
    a download and a stream of small requests: no visitor sees an error."""
    monkeypatch.setenv("REVPROXY_ROTATE_CHUNKS", "40")  # the children inherit it
    public, tunnel = free_port(), free_port()
    portal_cfg = portal_config(USER_ID, public, tunnel)
    portal_cfg["log"]["loglevel"] = "info"
    bridge_cfg = bridge_config(USER_ID, backend, tunnel)
    bridge_cfg["log"]["loglevel"] = "info"
    portal = start_end("revproxy", "portal", portal_cfg, tmp_path)
    bridge = start_end("revproxy", "bridge", bridge_cfg, tmp_path)
    try:
        wait_served(public, procs=(portal, bridge))
        size = 16 * 2**20
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", public, timeout=60)
            conn.request("GET", f"/blob/{size}")
            body = conn.getresponse().read()
            conn.close()
            assert hashlib.sha256(body).hexdigest() == blob_sha256(size)
            for _ in range(20):
                assert request(public) == (200, PAGE)
        deadline = time.monotonic() + 20  # the monitors look every 2 s
        while time.monotonic() < deadline:
            logs = portal.output() + bridge.output()
            # Whichever end looks first rotates it (the bridge steers a revproxy portal away).
            if "nears its nonce limit" in logs or "is worn" in logs:
                break
            assert request(public) == (200, PAGE)
            time.sleep(0.2)
        else:
            pytest.fail("no tunnel was rotated:\n" + logs[-3000:])
        for _ in range(20):  # served by the replacements
            assert request(public) == (200, PAGE)
    finally:
        bridge.stop()
        portal.stop()
