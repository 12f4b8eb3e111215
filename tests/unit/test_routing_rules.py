"""Routing's other conditions (source, sourcePort, user, protocol, attrs), balancers and the
IP strategies, through the loader and the Router as V2Ray 4.34 defines them."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from revproxy.config import ConfigError, parse_config
from revproxy.config.model import RoutingRule
from revproxy.net.session import Session, Target
from revproxy.routing import AttrsError, Router, attrs_match, parse_attrs


def session(address: str = "example.com", port: int = 80, *, source: str = "192.0.2.1:5000",
            email: str | None = None, protocol: str = "",
            attributes: dict[str, str] | None = None, tag: str = "in") -> Session:
    return Session(Target("tcp", address, port), tag, source=source, email=email,
                   protocol=protocol, attributes=attributes)


def test_source_and_source_port() -> None:
    router = Router([RoutingRule("a", source_ips=("192.0.2.0/24",), source_ports=((5000, 5010),)),
                     RoutingRule("b", source_ips=("2001:db8::1",))], "d")
    assert router.route(session()) == "a"
    assert router.route(session(source="192.0.2.1:6000")) == "d"
    assert router.route(session(source="2001:db8::1:443")) == "b"
    assert router.route(session(source="")) == "d"


def test_user_and_protocol() -> None:
    router = Router([RoutingRule("u", users=("a@b",)), RoutingRule("p", protocols=("http",)),
                     RoutingRule("t", protocols=("tls", "bittorrent"))], "d")
    assert router.route(session(email="a@b")) == "u"
    assert router.route(session(protocol="http1")) == "p"  # by prefix, as V2Ray
    assert router.route(session(protocol="tls")) == "t"
    assert router.route(session()) == "d"
    assert router.pick("in", Target("tcp", "x", 1)) == "d"


def test_attrs() -> None:
    rule = RoutingRule("h", attrs="attrs[':method'] == 'GET' and attrs[':path'].startswith('/a')")
    router = Router([rule], "d")
    get = {":method": "GET", ":path": "/abc", "host": "x"}
    assert router.route(session(attributes=get)) == "h"
    assert router.route(session(attributes={**get, ":path": "/b"})) == "d"
    assert router.route(session(attributes={":path": "/a"})) == "d"  # a missing key: no match
    assert router.route(session()) == "d"  # no attributes (not an HTTP proxy request)


def test_attrs_expressions() -> None:
    attrs = {":method": "POST", "accept": "text/html", "n": "5"}
    for text, expected in [("attrs[':method'] != 'GET'", True),
                           ("'html' in attrs['accept']", True),
                           ("not attrs.get('x')", True),
                           ("attrs['accept'].endswith('html') or False", True),
                           ("attrs[':method'] in ('GET', 'HEAD')", False),
                           ("attrs['x'] == 'y'", False)]:
        assert attrs_match(parse_attrs(text), attrs) is expected, text
    for bad in ("__import__('os')", "attrs.__class__", "lambda: 1", "x == 1", "1 +"):
        with pytest.raises(AttrsError):
            parse_attrs(bad)


def test_balancer_picks_among_prefixed_tags() -> None:
    picked: list[tuple[str, ...]] = []

    def choose(tags: Any) -> str:
        picked.append(tuple(tags))
        return tags[-1]

    router = Router([RoutingRule("", inbound_tags=("in",), balancer_tag="b")], "d",
                    balancers={"b": ("px-", "solo")}, outbound_tags=["px-1", "px-2", "solo", "d"],
                    choose=choose)
    assert router.pick("in", Target("tcp", "x", 1)) == "solo"
    assert picked == [("px-1", "px-2", "solo")]
    empty = Router([RoutingRule("", inbound_tags=("in",), balancer_tag="b")], "d",
                   balancers={"b": ("none",)}, outbound_tags=["px-1"])
    assert empty.pick("in", Target("tcp", "x", 1)) == "d"


def test_ip_strategies() -> None:
    asked: list[str] = []

    def resolve(name: str) -> list[ipaddress.IPv4Address]:
        asked.append(name)
        if name == "gone.test":
            raise OSError("no such name")
        return [ipaddress.IPv4Address("10.1.2.3")]

    rules = [RoutingRule("dom", domains=("full:named.test",)),
             RoutingRule("ten", ips=("10.0.0.0/8",))]
    as_is = Router(rules, "d", resolve=resolve)
    assert as_is.pick(None, Target("tcp", "other.test", 80)) == "d" and asked == []
    on_demand = Router(rules, "d", strategy="IPOnDemand", resolve=resolve)
    assert on_demand.pick(None, Target("tcp", "named.test", 80)) == "dom"
    assert on_demand.pick(None, Target("tcp", "other.test", 80)) == "ten"
    assert asked == ["other.test"]
    if_non_match = Router(rules, "d", strategy="IPIfNonMatch", resolve=resolve)
    asked.clear()
    assert if_non_match.pick(None, Target("tcp", "named.test", 80)) == "dom"
    assert asked == []  # the first pass matched: nothing resolved
    assert if_non_match.pick(None, Target("tcp", "other.test", 80)) == "ten"
    assert if_non_match.pick(None, Target("tcp", "gone.test", 80)) == "d"
    assert if_non_match.pick(None, Target("tcp", "10.9.9.9", 80)) == "ten"


BASE: dict[str, Any] = {
    "inbounds": [{"tag": "in", "port": 1, "listen": "127.0.0.1", "protocol": "dokodemo-door",
                  "settings": {"address": "127.0.0.1"}}],
    "outbounds": [{"tag": "direct", "protocol": "freedom"},
                  {"tag": "px-a", "protocol": "blackhole"},
                  {"tag": "px-b", "protocol": "blackhole"}],
}


def load(routing: dict[str, Any]) -> Any:
    return parse_config({**BASE, "routing": routing}, "c.json")


def test_the_loader_reads_the_new_conditions() -> None:
    config = load({"domainStrategy": "IPOnDemand", "balancers": [
        {"tag": "b", "selector": ["px-"]}], "rules": [
        {"type": "field", "source": "10.0.0.0/8,192.0.2.1", "sourcePort": "1000-2000",
         "user": ["a@b"], "protocol": ["http", "tls"], "attrs": "attrs[':method'] == 'GET'",
         "balancerTag": "b"},
        {"type": "field", "ip": ["10.0.0.0/8"], "outboundTag": "direct"}]})
    rule = config.routing[0]
    assert rule.source_ips == ("10.0.0.0/8", "192.0.2.1")
    assert rule.source_ports == ((1000, 2000),)
    assert rule.users == ("a@b",) and rule.protocols == ("http", "tls")
    assert rule.balancer_tag == "b" and rule.outbound_tag == ""
    assert config.routing_options.strategy == "IPOnDemand"
    assert config.routing_options.balancers == (("b", ("px-",)),)
    assert config.warnings == ()


def test_the_loader_refuses_what_v2ray_refuses() -> None:
    with pytest.raises(ConfigError) as info:
        load({"rules": [{"type": "field", "inboundTag": "in", "balancerTag": "nope"},
                        {"type": "field", "attrs": "attrs.__class__", "outboundTag": "direct"}]})
    assert any('balancer "nope" not found' in p for p in info.value.problems)
    assert any("attrs" in p and "__class__" in p for p in info.value.problems)


def test_always_ip_routes_as_is() -> None:
    config = load({"domainStrategy": "AlwaysIP", "rules": [
        {"type": "field", "ip": ["10.0.0.0/8"], "outboundTag": "direct"}]})
    assert config.routing_options.strategy == "AsIs"
    assert any("AlwaysIP" in w for w in config.warnings)
