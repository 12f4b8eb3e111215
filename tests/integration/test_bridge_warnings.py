"""A revproxy bridge pointed at a revproxy portal with the wrong id: the portal closes each
tunnel without a word, and the bridge's warning gives the reasons that fit the protocol the
tunnel uses (no clock for VLESS, which has none), not VMess's for every protocol."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.conftest import free_port, start_end
from tests.integration.test_protocols import bridge, portal

VMESS_WRONG_ID = "a wrong id, a clock off by minutes, or no VMess server there?"
VLESS_WRONG_ID = "a wrong id, or no VLESS server there?"


def vmess_tunnel(config: dict, server: bool) -> None:
    """Turn the VLESS tunnel in/outbound of a test_protocols config into a VMess one."""
    if server:
        tunnel = config["inbounds"][0]
        tunnel["protocol"] = "vmess"
        tunnel["settings"] = {"clients": [{"id": tunnel["settings"]["clients"][0]["id"]}]}
    else:
        tunnel = config["outbounds"][1]
        tunnel["protocol"] = "vmess"
        for server_entry in tunnel["settings"]["vnext"]:
            for user in server_entry["users"]:
                user.pop("encryption", None)


@pytest.mark.parametrize(("protocol", "expected"), [("vless", VLESS_WRONG_ID),
                                                    ("vmess", VMESS_WRONG_ID)])
def test_the_warning_names_the_reasons_of_the_tunnels_protocol(tmp_path, protocol, expected):
    tunnel_port = free_port()
    portal_config = portal("vless", tunnel_port, free_port(), free_port())
    bridge_config = bridge("vless", tunnel_port)
    for user in bridge_config["outbounds"][1]["settings"]["vnext"][0]["users"]:
        user["id"] = str(uuid.uuid4())  # not the portal's
    if protocol == "vmess":
        vmess_tunnel(portal_config, server=True)
        vmess_tunnel(bridge_config, server=False)
    portal_proc = start_end("revproxy", "portal", portal_config, tmp_path)
    bridge_proc = start_end("revproxy", "bridge", bridge_config, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "without a word" not in bridge_proc.output():
            assert portal_proc.alive() and bridge_proc.alive()
            assert time.monotonic() < deadline, bridge_proc.output()[-3000:]
            time.sleep(0.2)
        line = next(line for line in bridge_proc.output().splitlines()
                    if "without a word" in line)
        assert f"the portal closed it without a word ({expected})" in line, line
        assert ("VMess" in line) == (protocol == "vmess")
    finally:
        bridge_proc.stop()
        portal_proc.stop()
