"""Configuration loading: V2Ray's documented configs load unchanged, YAML is equivalent, every
kind of mistake gives its one-line message, and no input gives anything but ConfigError."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.config import (
    BlackholeSettings,
    BridgeConfig,
    Config,
    ConfigError,
    DokodemoSettings,
    FreedomSettings,
    InboundConfig,
    LogConfig,
    MuxConfig,
    OutboundConfig,
    PortalConfig,
    ReverseConfig,
    RoutingRule,
    ServerConfig,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessServerConfig,
    VMessUserConfig,
    load_config,
    parse_config,
)
from revproxy.config.checks import MUX_WARNING
from revproxy.config.reader import parse_bytes, parse_text

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FIXTURES = Path(__file__).resolve().parent / "configs"
UUID = "5b0d4c1e-2f8a-4b7e-9c3d-6a1e8f2b7d40"  # not a published example id (known_ids.py)
DOC_UUID = "27848739-7e62-4138-9fd3-098a63964b6b"  # the id of V2Ray's reverse document
USER = VMessUserConfig(id=UUID)
DOC_USER = VMessUserConfig(id=DOC_UUID)
PLACEHOLDER_USER = VMessUserConfig(id="11111111-2222-4333-8444-555555555555")
PUBLISHED_ID_WARNING = (
    f"v2ray-portal.json: inbounds[1].settings.clients[0].id: warning: {DOC_UUID} is a published "
    'example id, and this inbound listens on 0.0.0.0: anyone could use it (make a new one with '
    '"revproxy uuid")')

PORTAL: dict[str, Any] = {
    "reverse": {"portals": [{"tag": "portal", "domain": "test.v2fly.org"}]},
    "inbounds": [
        {"tag": "external", "port": 80, "protocol": "dokodemo-door",
         "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"}},
        {"port": 1024, "tag": "interconn", "protocol": "vmess",
         "settings": {"clients": [{"id": UUID}]}},
    ],
    "routing": {"rules": [
        {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
        {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"},
    ]},
}

BRIDGE: dict[str, Any] = {
    "reverse": {"bridges": [{"tag": "bridge", "domain": "test.v2fly.org"}]},
    "outbounds": [
        {"tag": "out", "protocol": "freedom", "settings": {"redirect": "127.0.0.1:80"}},
        {"protocol": "vmess", "tag": "interconn", "settings": {"vnext": [
            {"address": "127.0.0.1", "port": 1024, "users": [{"id": UUID}]}]}},
    ],
    "routing": {"rules": [
        {"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"],
         "outboundTag": "interconn"},
        {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"},
    ]},
}


def problems_of(data: Any) -> list[str]:
    try:
        parse_config(data, "t.json")
    except ConfigError as exc:
        return exc.problems
    return []


def edited(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the value at dotted ``path`` (list indices as numbers)
    replaced; a value of ``DELETE`` removes the key."""
    data = copy.deepcopy(base)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = data
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return data


DELETE = object()


# --- the documented configurations ---------------------------------------------------------

def test_document_portal_json_loads_as_written() -> None:
    text = (CONF / "v2ray-portal.json").read_text()
    assert "// Must match bridge configuration" in text
    assert "// Open port 80 for external HTTP access" in text
    assert "// For receiving bridge connections" in text
    config = load_config(CONF / "v2ray-portal.json")
    # The document's own user id, on every address: one warning (known_ids.py).
    assert config.warnings == (PUBLISHED_ID_WARNING,)
    assert config == Config(
        source="",
        log=LogConfig(),
        inbounds=(
            InboundConfig("external", "0.0.0.0", 80, "dokodemo-door",
                          DokodemoSettings(address="127.0.0.1", port=80)),
            InboundConfig("interconn", "0.0.0.0", 1024, "vmess",
                          VMessInboundSettings((DOC_USER,))),
        ),
        outbounds=(),
        routing=(RoutingRule("portal", inbound_tags=("external",)),
                 RoutingRule("portal", inbound_tags=("interconn",))),
        reverse=ReverseConfig(portals=(PortalConfig("portal", "test.v2fly.org"),)),
        server=ServerConfig(),
    )
    assert config.source == str(CONF / "v2ray-portal.json")


def test_document_bridge_json_loads_as_written() -> None:
    text = (CONF / "v2ray-bridge.json").read_text()
    assert '"redirect": "127.0.0.1:80" // Forward all traffic to web server' in text
    config = load_config(CONF / "v2ray-bridge.json")
    assert config == Config(
        source="",
        log=LogConfig(),
        inbounds=(),
        outbounds=(
            OutboundConfig("out", "freedom", FreedomSettings(redirect=("127.0.0.1", 80))),
            OutboundConfig("interconn", "vmess", VMessOutboundSettings(
                (VMessServerConfig("127.0.0.1", 1024, (DOC_USER,)),))),
        ),
        routing=(
            RoutingRule("interconn", inbound_tags=("bridge",), domains=("full:test.v2fly.org",)),
            RoutingRule("out", inbound_tags=("bridge",)),
        ),
        reverse=ReverseConfig(bridges=(BridgeConfig("bridge", "test.v2fly.org"),)),
        server=ServerConfig(),
    )


def outcome(load: Any, *args: Any) -> Config | list[str]:
    """The Config, or the problems without the file names."""
    try:
        return load(*args)
    except ConfigError as exc:
        return [problem.partition(": ")[2] for problem in exc.problems]


@pytest.mark.parametrize("name", ["v2ray-portal", "v2ray-bridge"])
def test_yaml_equivalent_gives_an_equal_config(name: str) -> None:
    assert outcome(load_config, FIXTURES / f"{name}.yaml") == outcome(
        load_config, CONF / f"{name}.json")


@pytest.mark.parametrize(("name", "data"), [("v2ray-portal", PORTAL), ("v2ray-bridge", BRIDGE)])
def test_parsed_mapping_gives_the_same_config(name: str, data: dict[str, Any]) -> None:
    document = json.loads(json.dumps(data).replace(UUID, DOC_UUID))
    assert outcome(parse_config, document, "x") == outcome(load_config,
                                                           CONF / f"{name}.json")


def test_revproxy_yaml_pair() -> None:
    portal = load_config(CONF / "portal.yaml")
    bridge = load_config(CONF / "bridge.yaml")
    assert [(i.tag, i.listen, i.port) for i in portal.inbounds] == [
        ("external", "127.0.0.1", 8080), ("interconn", "127.0.0.1", 10240)]
    assert portal.inbounds[0].settings == DokodemoSettings(address="127.0.0.1", port=80)
    assert portal.inbounds[1].settings == VMessInboundSettings((PLACEHOLDER_USER,))
    assert portal.reverse.portals == (PortalConfig("portal", "test.v2fly.org"),)
    assert bridge.outbounds[0].settings == FreedomSettings(redirect=("127.0.0.1", 8000))
    assert bridge.outbounds[1].settings == VMessOutboundSettings(
        (VMessServerConfig("127.0.0.1", 10240, (PLACEHOLDER_USER,)),))
    assert bridge.reverse.bridges[0].domain == portal.reverse.portals[0].domain
    assert bridge.routing == load_config(CONF / "v2ray-bridge.json").routing


# --- accepted V2Ray forms -------------------------------------------------------------------

def test_optional_sections_and_ignored_keys() -> None:
    data = edited(PORTAL, "inbounds.1.sniffing", {"enabled": False, "destOverride": ["http"]})
    data["stats"] = {}
    data["dns"] = {}  # empty: harmless
    data["routing"]["domainStrategy"] = "IPIfNonMatch"
    data["routing"]["domainMatcher"] = "mph"
    data["inbounds"][1]["streamSettings"] = {"network": "tcp", "security": "none",
                                             "tcpSettings": {"header": {"type": "none"}},
                                             "wsSettings": {"path": "/unused"}}
    data["log"] = {"loglevel": "Debug", "access": "/var/log/a.log", "error": ""}
    config = parse_config(data, "x")
    assert config.log == LogConfig(level="debug", access="/var/log/a.log", error=None)
    assert config.warnings == (
        'x: routing.domainMatcher: warning: V2Ray 4.34 does not know it (it came in 4.36) and '
        "ignores it; rules match the same either way",)
    assert config.stats


def test_keys_match_case_insensitively_like_go() -> None:
    data = edited(BRIDGE, "outbounds.1.settings.vnext.0.users.0", {"ID": UUID, "alterID": 0})
    data["outbounds"][0] = {"TAG": "out", "Protocol": "freedom"}
    assert parse_config(data, "x") == parse_config(edited(BRIDGE, "outbounds.0.settings",
                                                          DELETE), "x")


def test_null_means_absent() -> None:
    data = edited(PORTAL, "inbounds.0.streamSettings", None)
    data["outbounds"] = None
    assert parse_config(data, "x") == parse_config(PORTAL, "x")


def test_value_forms() -> None:
    data = edited(PORTAL, "inbounds.1.port", "1024")
    data["inbounds"][0]["settings"]["network"] = "tcp,udp"
    data["inbounds"][1]["settings"]["clients"][0] = {
        "id": UUID.replace("-", "").upper(), "alterId": 0, "security": "CHACHA20-POLY1305",
        "email": "a@b", "level": 1}
    data["routing"]["rules"].append({"type": "field", "ip": "10.0.0.0/8,::1",
                                     "port": "80,443, 1000-2000", "network": "tcp,udp",
                                     "domains": "domain:a.com,keyword:b", "outboundTag": "portal"})
    data["server"] = {"workers": 4, "pidFile": "/run/r.pid", "stateFile": "/run/r.state",
                      "user": "nobody", "group": "nogroup", "gracefulTimeout": 2.5}
    config = parse_config(data, "x")
    assert config.inbounds[1].port == 1024
    assert config.inbounds[0].settings.network == ("tcp", "udp")
    assert config.inbounds[1].settings.clients[0] == VMessUserConfig(
        UUID, security="chacha20-poly1305", email="a@b", level=1)
    assert config.routing[2] == RoutingRule(
        "portal", ips=("10.0.0.0/8", "::1"), ports=((80, 80), (443, 443), (1000, 2000)),
        networks=("tcp", "udp"), domains=("domain:a.com", "keyword:b"))
    assert config.server == ServerConfig(4, "/run/r.pid", "/run/r.state", "nobody", "nogroup",
                                         2.5)
    assert parse_config(edited(data, "server.workers", "auto"), "x").server.workers is None


def test_env_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVPROXY_TEST_PORT", "2048")
    config = parse_config(edited(PORTAL, "inbounds.1.port", "env:REVPROXY_TEST_PORT"), "x")
    assert config.inbounds[1].port == 2048


@pytest.mark.parametrize(("redirect", "expected"), [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:8080", ("::1", 8080)),
    ("example.com:0", ("example.com", 0)),
    (":8000", ("", 8000)),
    ("", None),
])
def test_freedom_redirect(redirect: str, expected: tuple[str, int] | None) -> None:
    config = parse_config(edited(BRIDGE, "outbounds.0.settings.redirect", redirect), "x")
    assert config.outbounds[0].settings == FreedomSettings(redirect=expected)


def test_outbound_extras() -> None:
    data = copy.deepcopy(BRIDGE)
    data["outbounds"].append({"tag": "block", "protocol": "blackhole",
                              "settings": {"response": {"type": "http"}}, "mux": {}})
    data["outbounds"].append({"tag": "off", "protocol": "vmess", "mux": {
        "enabled": True, "concurrency": -1}, "settings": BRIDGE["outbounds"][1]["settings"]})
    config = parse_config(data, "x")
    assert config.outbounds[2].settings == BlackholeSettings(response="http")
    assert config.outbounds[3].mux == MuxConfig(enabled=False)


def test_json_comments_outside_strings_only(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('# V2Ray also takes hash comments\n{ /* block\n comment */ "outbounds": [\n'
                    '  {"protocol": "freedom", // line comment\n'
                    '   "tag": "a//b #c /* d */"}]}\n')
    assert load_config(path).outbounds[0].tag == "a//b #c /* d */"


# --- one message per mistake -----------------------------------------------------------------

@pytest.mark.parametrize(("base", "path", "value", "expected"), [
    (PORTAL, "inbounds.1.settings.clients.0.id", "abc",
     'inbounds[1].settings.clients[0].id: "abc" is not a UUID'),
    (PORTAL, "inbounds.0.port", "abc", 'inbounds[0].port: expected a port number, got "abc"'),
    (PORTAL, "inbounds.0.port", True, "inbounds[0].port: expected a port number, got true"),
    (PORTAL, "inbounds.0.port", 70000, "inbounds[0].port: port 70000 is out of range (1-65535)"),
    (PORTAL, "inbounds.0.port", 0, "inbounds[0].port: port 0 is out of range (1-65535)"),
    (PORTAL, "inbounds.0.port", "1000-2000",
     'inbounds[0].port: port ranges are not supported by revproxy, got "1000-2000"'),
    (PORTAL, "inbounds.0.port", DELETE, 'inbounds[0]: missing required key "port"'),
    (PORTAL, "inbounds.0.listen", "example.com",
     'inbounds[0].listen: "example.com" is not an IP address'),
    (PORTAL, "inbounds.0.protocol", "trojan",
     'inbounds[0].protocol: protocol "trojan" is not supported by revproxy'),
    (PORTAL, "inbounds.0.protocol", "dokodemo",
     'inbounds[0].protocol: unknown protocol "dokodemo" (did you mean "dokodemo-door"?)'),
    (PORTAL, "inbounds.0.allocate", {"strategy": "random"},
     'inbounds[0].allocate.strategy: allocation strategy "random" is not supported by revproxy '
     '(only "always": it listens on its port all the time)'),
    (PORTAL, "inbounds.0.allocate", {},
     'inbounds[0].allocate: unknown allocation strategy "" (V2Ray refuses it too; "always" is '
     "the default)"),
    (PORTAL, "inbounds.0.settings.network", "icmp",
     'inbounds[0].settings.network: unknown network "icmp" (expected "tcp" or "udp")'),
    (PORTAL, "inbounds.0.settings.address", DELETE,
     'inbounds[0].settings: missing required key "address" (needed unless followRedirect is '
     'true)'),
    (PORTAL, "inbounds.0.settings", [], "inbounds[0].settings: expected an object, got a list"),
    (PORTAL, "inbounds.1.settings.clients.0.alterId", 2048,
     "inbounds[1].settings.clients[0].alterId: alterId 2048 is more than revproxy supports "
     "(1024): each alter id means 241 user hashes kept in memory"),
    (PORTAL, "inbounds.1.settings.clients.0.security", "aes-128-cfb",
     'inbounds[1].settings.clients[0].security: "aes-128-cfb" is not one of "auto", '
     '"aes-128-gcm", "chacha20-poly1305", "none", "zero"'),
    (PORTAL, "inbounds.1.settings.clients", [],
     "inbounds[1].settings.clients: must not be empty"),
    (PORTAL, "inbounds.1.settings.detour", {"to": "x"},
     "inbounds[1].settings.detour: not supported by revproxy"),
    (PORTAL, "inbounds", {}, "inbounds: expected a list, got an object"),
    (PORTAL, "inbounds.0.tag", "interconn",
     'inbounds[1].tag: duplicate tag "interconn" (first used at inbounds[0].tag)'),
    (PORTAL, "inboundDetour", [{"port": 1}],
     'inboundDetour[0]: missing required key "protocol"'),
    (PORTAL, "policy", {"levels": {"x": {}}}, 'policy.levels.x: a level is a number, got "x"'),
    (PORTAL, "api", {"tag": ""}, "api: the API needs a tag (V2Ray refuses an empty one too)"),
    (PORTAL, "log", {"access": 5}, "log.access: expected a string, got 5"),
    (PORTAL, "reverse.portals.0.domain", DELETE,
     'reverse.portals[0]: missing required key "domain"'),
    (PORTAL, "routing.rules.0.outboundTag", "portl",
     'routing.rules[0].outboundTag: no outbound or portal is tagged "portl" (did you mean '
     '"portal"?) (V2Ray would send this traffic to the first outbound, and there is none)'),
    (PORTAL, "routing.rules.0.type", "chinasites",
     'routing.rules[0].type: rule type "chinasites" is not supported by revproxy (only '
     '"field", as in V2Ray 4.34)'),
    (PORTAL, "routing.rules.0.inboundTag", [],
     "routing.rules[0]: the rule has no conditions (V2Ray refuses such a rule: it needs one of "
     "inboundTag, domain, domains, ip, port, network, protocol, source, sourcePort, user, "
     "attrs)"),
    (PORTAL, "routing.rules.0.domain", ["full:a.com", "geosite:cn"],
     'routing.rules[0].domain[1]: "geosite:cn": failed to load geosite: failed to open file: '
     "geosite.dat (put it next to the configuration, in /usr/share/v2ray, or where "
     "V2RAY_LOCATION_ASSET names)"),
    (PORTAL, "routing.rules.0.domain", ["ext:h2y.dat:gfw"],
     'routing.rules[0].domain[0]: "ext:h2y.dat:gfw": failed to load external geosite: failed '
     "to open file: h2y.dat (put it next to the configuration, in /usr/share/v2ray, or where "
     "V2RAY_LOCATION_ASSET names)"),
    (PORTAL, "routing.rules.0.domain", ["regexp:("],
     'routing.rules[0].domain[0]: "regexp:(": invalid regular expression: missing ), '
     "unterminated subpattern at position 0"),
    (PORTAL, "routing.rules.0.domain", ["a.com", ""],
     'routing.rules[0].domain[1]: "": empty domain pattern'),
    (PORTAL, "routing.rules.0.ip", ["geoip:private"],
     'routing.rules[0].ip[0]: "geoip:private": failed to load geoip: failed to open file: '
     "geoip.dat (put it next to the configuration, in /usr/share/v2ray, or where "
     "V2RAY_LOCATION_ASSET names)"),
    (PORTAL, "routing.rules.0.ip", "10.0.0.0/33",
     'routing.rules[0].ip[0]: "10.0.0.0/33": invalid network mask /33'),
    (PORTAL, "routing.rules.0.ip", ["example.com"],
     'routing.rules[0].ip[0]: "example.com": not an IP address or CIDR'),
    (PORTAL, "routing.rules.0.port", "2000-1000",
     'routing.rules[0].port: port range "2000-1000" is reversed'),
    (PORTAL, "routing.rules.0.port", "http",
     'routing.rules[0].port: expected a port number, got "http"'),
    (PORTAL, "routing.rules.0.network", "icmp",
     'routing.rules[0].network: unknown network "icmp" (expected "tcp" or "udp")'),
    (PORTAL, "routing.rules.0.attrs", "attrs.__class__",
     "routing.rules[0].attrs: method '__class__' is not supported in attrs by revproxy"),
    (PORTAL, "routing.rules.0", {"inboundTag": "external", "balancerTag": "b", "type": "field"},
     'routing.rules[0].balancerTag: balancer "b" not found (routing.balancers has no such '
     "tag)"),
    (PORTAL, "routing.balancers", [{"tag": "b", "selector": []}],
     "routing.balancers[0]: the balancer needs a selector (V2Ray refuses an empty one)"),
    (PORTAL, "server", {"workers": 0}, "server.workers: must be between 1 and 128, got 0"),
    (PORTAL, "server", {"workers": "many"},
     'server.workers: expected a number of workers or "auto", got "many"'),
    (PORTAL, "server", {"gracefulTimeout": -1},
     "server.gracefulTimeout: must be at least 0 and finite, got -1"),
    (PORTAL, "server", {"pidfile": ""}, "server.pidFile: must not be empty"),
    (BRIDGE, "outbounds.0.settings.redirect", "127.0.0.1",
     'outbounds[0].settings.redirect: "127.0.0.1" is not "host:port"'),
    (BRIDGE, "outbounds.0.settings.redirect", "127.0.0.1:99999",
     'outbounds[0].settings.redirect: port 99999 is out of range (0-65535)'),
    (BRIDGE, "outbounds.0.protocol", "freedon",
     'outbounds[0].protocol: unknown protocol "freedon" (did you mean "freedom"?)'),
    (BRIDGE, "outbounds.0.protocol", "mtproto",
     'outbounds[0].protocol: protocol "mtproto" is not supported by revproxy'),
    (BRIDGE, "outbounds.0.sendThrough", "10.0.0.1",
     "outbounds[0].sendThrough: not supported by revproxy"),
    (BRIDGE, "outbounds.1.settings", {},
     'outbounds[1].settings: missing required key "vnext"'),
    (BRIDGE, "outbounds.1.settings.vnext.0.port", "x",
     'outbounds[1].settings.vnext[0].port: expected a port number, got "x"'),
    (BRIDGE, "outbounds.1.settings.vnext.0.users", [],
     "outbounds[1].settings.vnext[0].users: must not be empty"),
    (BRIDGE, "outbounds.1.settings.vnext.0.address", DELETE,
     'outbounds[1].settings.vnext[0]: missing required key "address"'),
    (BRIDGE, "outbounds.1.mux", {"enabled": "yes"},
     'outbounds[1].mux.enabled: expected true or false, got "yes"'),
    (BRIDGE, "outbounds.1.mux", {"enabled": True},
     f'outbounds[1].mux: {MUX_WARNING} (bridge "bridge" sends its tunnels here)'),
    (BRIDGE, "outbounds.0.mux", {"enabled": True}, None),  # freedom serves visitors only
    (BRIDGE, "outbounds.1.tag", "out",
     'outbounds[1].tag: duplicate tag "out" (first used at outbounds[0].tag)'),
    (BRIDGE, "reverse.bridges.0.minTunnels", 4,
     None),
    (BRIDGE, "reverse.bridges.0.maxTunnels", 0,
     "reverse.bridges[0].maxTunnels: must be between 1 and 1024, got 0"),
    (BRIDGE, "reverse.bridges.0.tag", "",
     "reverse.bridges[0].tag: must not be empty"),
    (BRIDGE, "routing.rules.0.domain", ["full:other.example"],
     'reverse.bridges[0]: its tunnels to "test.v2fly.org" are routed to the freedom outbound '
     'outbounds[0], which cannot reach a portal: add a routing rule for inboundTag "bridge" '
     'and domain "full:test.v2fly.org"'),
])
def test_each_mistake_has_its_message(base: dict[str, Any], path: str, value: Any,
                                      expected: str | None) -> None:
    found = problems_of(edited(base, path, value))
    assert found == ([] if expected is None else [f"t.json: {expected}"])


NO_OUTBOUND = " (V2Ray would send this traffic to the first outbound, and there is none)"


def test_all_problems_are_collected() -> None:
    data = edited(PORTAL, "inbounds.0.port", "x")
    data["inbounds"][1]["settings"]["clients"][0]["id"] = "abc"
    data["routing"]["rules"][1]["outboundTag"] = "nowhere"
    data["routing"]["rules"][0]["source"] = ["10.0.0.1", "somewhere"]
    assert problems_of(data) == [
        't.json: inbounds[0].port: expected a port number, got "x"',
        't.json: inbounds[1].settings.clients[0].id: "abc" is not a UUID',
        't.json: routing.rules[0].source[1]: "somewhere": not an IP address or CIDR',
        f't.json: routing.rules[1].outboundTag: no outbound or portal is tagged "nowhere"'
        f"{NO_OUTBOUND}",
    ]


def test_every_dangling_reference_is_reported() -> None:
    assert problems_of(edited(BRIDGE, "outbounds", [])) == [
        f't.json: routing.rules[0].outboundTag: no outbound or portal is tagged "interconn"'
        f"{NO_OUTBOUND}",
        f't.json: routing.rules[1].outboundTag: no outbound or portal is tagged "out"'
        f"{NO_OUTBOUND}"]


def test_more_bridge_route_problems() -> None:
    no_outbounds = edited(BRIDGE, "outbounds", [])
    no_outbounds["routing"] = {}
    assert problems_of(no_outbounds) == [
        't.json: reverse.bridges[0]: no outbound to carry its tunnels: add one and a routing '
        'rule for inboundTag "bridge" and domain "full:test.v2fly.org"']


def test_portal_tag_counts_as_outbound_tag() -> None:
    data = copy.deepcopy(PORTAL)
    data["outbounds"] = [{"tag": "portal", "protocol": "blackhole"}]
    assert problems_of(data) == [
        't.json: reverse.portals[0].tag: duplicate tag "portal" (first used at '
        "outbounds[0].tag)"]


def test_inbound_and_outbound_tags_are_separate_namespaces() -> None:
    data = edited(PORTAL, "reverse.portals.0.tag", "external")
    for rule in data["routing"]["rules"]:
        rule["outboundTag"] = "external"
    assert problems_of(data) == []


def test_bridge_tag_counts_as_inbound_tag() -> None:
    data = copy.deepcopy(BRIDGE)
    data["inbounds"] = [{"tag": "bridge", "port": 1, "protocol": "dokodemo-door",
                         "settings": {"followRedirect": True}}]
    assert problems_of(data) == [
        't.json: reverse.bridges[0].tag: duplicate tag "bridge" (first used at '
        "inbounds[0].tag)"]


def test_duplicate_and_misspelt_keys() -> None:
    data = copy.deepcopy(PORTAL)
    data["inbounds"][0]["Tag"] = "again"
    data["inbounds"][0]["prot"] = 1
    config = parse_config(data, "t.json")
    assert config.inbounds[0].tag == "again"  # the last spelling wins, as in Go
    assert config.warnings == (
        't.json: inbounds[0]: warning: duplicate key "Tag" (also "tag"): the last one is used '
        "(as V2Ray does)",
        't.json: inbounds[0]: warning: unknown key "prot" is ignored (as V2Ray does) (did you '
        'mean "port"?)',
        't.json: routing.rules[0].inboundTag[0]: warning: no inbound or bridge is tagged '
        '"external": this tag never matches (as in V2Ray)')
    assert problems_of([1]) == ["t.json: the top level must be an object, got a list"]
    assert problems_of({1: 2}) == []
    assert problems_of({"server": {"worker": 2}}) == [
        't.json: server: unknown key "worker" (did you mean "workers"?)']


def test_messages_stay_on_one_line() -> None:
    found = problems_of(edited(PORTAL, "inbounds.0.tag", "a\nb" * 40))
    found += problems_of(edited(PORTAL, "inbounds.0.port", "1\n2"))
    assert found and all("\n" not in line for line in found)
    assert found[-1] == 't.json: inbounds[0].port: expected a port number, got "1\\n2"'


# --- files ------------------------------------------------------------------------------------

def load_problems(path: Path | str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_problem_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "portal.yaml"
    path.write_text(
        "inbounds:\n  - {port: 1, protocol: dokodemo-door, settings: {followRedirect: true}}\n"
        "  - port: 2\n    protocol: vmess\n    settings:\n      clients:\n        - id: abc\n")
    assert load_problems(path) == [
        'portal.yaml: inbounds[1].settings.clients[0].id: "abc" is not a UUID']


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("a.json", '{\n  "log": {\n    "loglevel": "info",\n  }\n}\n',
     "line 4 column 3: Expecting property name enclosed in double quotes"),
    ("a.json", '{"log": {"loglevel": NaN}}', "invalid JSON: NaN is not allowed"),
    ("a.json", '{"log": {} /* open',
     "line 1 column 19: Expecting ',' delimiter (the /* comment at line 1 column 12 is never "
     "closed)"),
    ("a.json", "", "line 1 column 1: Expecting value"),
    ("a.json", "[" * 100_000, "nested too deeply"),
    ("a.yaml", "log: {loglevel: info\n", "line 2 column 1: while parsing a flow mapping; "
                                         "expected ',' or '}', but got '<stream end>'"),
    ("a.yml", "log:\n  - a\n  b: c\n",
     "line 3 column 3: while parsing a block collection; expected <block end>, but found "
     "'?'"),
    ("a.yaml", "a: !!python/object:os.system {}\n",
     "line 1 column 4: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object:os.system'"),
    ("a.yaml", "", "the top level must be an object, got null"),
    ("a.conf", "", "line 1 column 1: Expecting value"),  # JSON, as V2Ray reads it
    ("a.pb", "", "protobuf configurations (.pb) are not supported by revproxy: give the JSON"),
])
def test_file_errors(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    problems = load_problems(path)
    assert problems[0] == f"{name}: {expected}"


def test_unreadable_files(tmp_path: Path) -> None:
    assert load_problems(tmp_path / "missing.json") == [
        "missing.json: cannot read: No such file or directory"]
    (tmp_path / "dir.yaml").mkdir()
    assert load_problems(tmp_path / "dir.yaml") == [
        "dir.yaml: is a directory, not a configuration file"]
    (tmp_path / "bad.json").write_bytes(b'{\n "log": "\xff"}')
    assert load_problems(tmp_path / "bad.json") == [
        "bad.json: line 2 column 10: not valid UTF-8 (byte 0xff)"]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(PORTAL).encode())
    assert load_config(path) == parse_config(PORTAL, "x")


# --- nothing but ConfigError ------------------------------------------------------------------

KEYS = ["log", "inbounds", "outbounds", "routing", "reverse", "server", "rules", "tag", "port",
        "protocol", "settings", "clients", "id", "vnext", "users", "address", "domain", "ip",
        "network", "redirect", "mux", "enabled", "bridges", "portals", "outboundTag",
        "inboundTag", "streamSettings", "workers", "listen", "alterId", "type"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["tcp", "udp", "vmess", "freedom", "dokodemo-door", "blackhole",
                              UUID, "1-2", "80", "full:a", "regexp:(", "10.0.0.0/8", "auto"]))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5), max_leaves=30)


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += leaf_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += leaf_paths(item, (*prefix, index))
    return paths


def accepts_or_config_error(data: Any) -> None:
    try:
        assert isinstance(parse_config(data, "t"), Config)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("t: ") and "\n" not in p for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(JUNK)
def test_random_data_gives_config_error(data: Any) -> None:
    accepts_or_config_error(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([PORTAL, BRIDGE]), st.data())
def test_damaged_documented_config_gives_config_error(base: dict[str, Any], draw: Any) -> None:
    data = copy.deepcopy(base)
    path = draw.draw(st.sampled_from(leaf_paths(data)[1:]))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw.draw(JUNK)
    accepts_or_config_error(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       st.sampled_from(["json", "yaml"]))
def test_random_text_gives_config_error(raw: bytes, fmt: str) -> None:
    try:
        data = parse_bytes(raw, "t", fmt)
    except ConfigError as exc:
        assert exc.problems and all("\n" not in p for p in exc.problems)
        return
    accepts_or_config_error(data)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='{}[]",:/*#\n tf0123456789ab\\', max_size=80))
def test_json_shaped_text_gives_config_error(text: str) -> None:
    try:
        data = parse_text(text, "t", "json")
    except ConfigError:
        return
    accepts_or_config_error(data)
