"""Where V2Ray 4.34 is lenient, revproxy's loader is too, with a warning: found in the corpus
of real configurations (tests/configs/real/), each case here next to what stays refused."""

from __future__ import annotations

from typing import Any

from revproxy.config import parse_config
from tests.unit.test_config import BRIDGE, UUID, edited, problems_of


def warnings_of(data: Any) -> list[str]:
    return list(parse_config(data, "t.json").warnings)


def _client(address: Any) -> dict[str, Any]:
    return {"outbounds": [{"protocol": "vmess", "settings": {"vnext": [
        {"address": address, "port": 443, "users": [{"id": UUID}]}]}}]}


def test_a_server_address_that_is_no_host_name_is_a_domain_name_with_a_warning() -> None:
    for placeholder in ("{{ host }}", ""):
        assert problems_of(_client(placeholder)) == []
        assert warnings_of(_client(placeholder)) == [
            f't.json: outbounds[0].settings.vnext[0].address: warning: "{placeholder}" is not '
            "a host name or IP address: V2Ray takes it for a domain name all the same, and "
            "so does revproxy (connections to this server fail)"]
    assert problems_of(_client(443)) == [
        "t.json: outbounds[0].settings.vnext[0].address: expected a string, got 443"]


def test_send_through_any_address_is_what_revproxy_does() -> None:
    base = {"outbounds": [{"protocol": "freedom"}]}
    for value in ("0.0.0.0", "::", ""):
        assert problems_of(edited(base, "outbounds.0.sendThrough", value)) == []
    assert problems_of(edited(base, "outbounds.0.sendThrough", "192.0.2.1")) == [
        "t.json: outbounds[0].sendThrough: not supported by revproxy"]


def test_a_vmess_inbound_without_clients_loads_with_a_warning() -> None:
    data = {"inbounds": [{"port": 1080, "protocol": "vmess", "settings": {}}]}
    assert problems_of(data) == []
    assert warnings_of(data) == [
        't.json: inbounds[0].settings: warning: no "clients": this inbound refuses every '
        "connection (as in V2Ray, unless a dynamic port's detour, which revproxy does not "
        "have, gives it users)"]


def test_routing_alone_may_name_outbounds_of_other_files() -> None:
    data = {"routing": {"rules": [{"type": "field", "network": "tcp", "outboundTag": "proxy"}]}}
    assert problems_of(data) == []
    assert warnings_of(data) == [
        't.json: routing.rules[0].outboundTag: warning: no outbound or portal is tagged '
        '"proxy", nor any other, and nothing sends traffic here: V2Ray accepts such a file, '
        "and so does revproxy"]
    # A bridge with no outbound at all still cannot dial its portal: refused.
    bridge = edited(BRIDGE, "outbounds", [])
    assert problems_of(bridge) != []
