"""``followRedirect`` on a dokodemo-door that also takes UDP: revproxy follows redirects for
TCP only, so a UDP inbound without "address", or with V2Ray's TPROXY UDP redirect, is
refused with one line naming the file and path (instead of a warning per datagram)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_config import problems_of


def doc(settings: dict[str, Any], stream: dict[str, Any] | None = None) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": 1, "protocol": "dokodemo-door", "settings": settings}
    if stream is not None:
        inbound["streamSettings"] = stream
    return {"inbounds": [inbound], "outbounds": [{"protocol": "freedom"}]}


@pytest.mark.parametrize("network", ["udp", "tcp,udp", ["tcp", "udp"]])
def test_udp_without_address_is_refused(network: Any) -> None:
    assert problems_of(doc({"followRedirect": True, "network": network})) == [
        't.json: inbounds[0].settings.followRedirect: applies to TCP only: "network" has '
        '"udp", which needs "address" (the destination of every datagram; V2Ray\'s UDP '
        "redirect needs TPROXY)"]


def test_udp_under_tproxy_is_refused() -> None:
    data = doc({"followRedirect": True, "address": "127.0.0.1", "port": 53,
                "network": "tcp,udp"}, {"sockopt": {"tproxy": "tproxy"}})
    assert problems_of(data) == [
        't.json: inbounds[0].settings.followRedirect: not for UDP with sockopt.tproxy '
        '"tproxy": revproxy sends UDP to "address", not to each datagram\'s original '
        "destination as V2Ray's TPROXY does"]


@pytest.mark.parametrize("settings, stream", [
    ({"followRedirect": True}, None),  # TCP only
    ({"followRedirect": True, "network": "tcp"}, {"sockopt": {"tproxy": "tproxy"}}),
    # UDP to "address", as V2Ray without TPROXY (it has no original destination to follow)
    ({"followRedirect": True, "address": "127.0.0.1", "port": 53, "network": "tcp,udp"},
     {"sockopt": {"tproxy": "redirect"}}),
])
def test_tcp_redirects_and_udp_to_address_load(settings: dict[str, Any],
                                               stream: dict[str, Any] | None) -> None:
    assert problems_of(doc(settings, stream)) == []
