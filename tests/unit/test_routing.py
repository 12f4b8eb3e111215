"""The routing matcher: V2Ray's field-rule semantics, first match wins, else the default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config import RoutingRule, load_config
from revproxy.net.session import Target
from revproxy.routing import Router, parse_cidr, parse_domain

CONF = Path(__file__).resolve().parents[2] / "conf"


def tcp(address: str, port: int = 80) -> Target:
    return Target("tcp", address, port)


def picks(rule: RoutingRule, target: Target, inbound_tag: str | None = "in") -> bool:
    return Router([rule], None).pick(inbound_tag, target) == rule.outbound_tag


def test_documented_bridge_routing() -> None:
    config = load_config(CONF / "v2ray-bridge.json")
    router = Router(config.routing, config.outbounds[0].tag)
    assert router.pick("bridge", tcp("test.v2fly.org", 0)) == "interconn"
    assert router.pick("bridge", tcp("127.0.0.1", 80)) == "out"
    assert router.pick("bridge", tcp("sub.test.v2fly.org", 0)) == "out"
    assert router.pick(None, tcp("test.v2fly.org", 0)) == "out"  # the default: first outbound


def test_documented_portal_routing() -> None:
    config = load_config(CONF / "v2ray-portal.json")
    router = Router(config.routing, None)
    assert router.pick("external", tcp("127.0.0.1")) == "portal"
    assert router.pick("interconn", tcp("test.v2fly.org", 0)) == "portal"
    assert router.pick("other", tcp("127.0.0.1")) is None


def test_first_match_wins_else_default() -> None:
    router = Router([RoutingRule("a", ports=((80, 80),)), RoutingRule("b", networks=("tcp",)),
                     RoutingRule("c", ports=((80, 80),))], "default")
    assert router.pick(None, tcp("x", 80)) == "a"
    assert router.pick(None, tcp("x", 81)) == "b"
    assert router.pick(None, Target("udp", "x", 81)) == "default"
    assert Router([], "d").pick("in", tcp("x")) == "d"
    assert Router([], None).pick("in", tcp("x")) is None


def test_conditions_are_anded() -> None:
    rule = RoutingRule("hit", inbound_tags=("in",), domains=("domain:a.com",),
                       ports=((443, 443),), networks=("tcp",))
    assert picks(rule, tcp("www.a.com", 443))
    assert not picks(rule, tcp("www.a.com", 443), inbound_tag="other")
    assert not picks(rule, tcp("www.a.com", 443), inbound_tag=None)
    assert not picks(rule, tcp("www.b.com", 443))
    assert not picks(rule, tcp("www.a.com", 80))
    assert not picks(rule, Target("udp", "www.a.com", 443))


@pytest.mark.parametrize(("pattern", "matching", "other"), [
    ("full:a.com", ["a.com"], ["www.a.com", "a.com.cn", "xa.com", "A.com"]),
    ("domain:a.com", ["a.com", "www.a.com", "x.y.a.com"], ["xa.com", "a.com.cn", "com"]),
    ("keyword:goo", ["google.com", "a.goo"], ["go.com"]),
    ("goo", ["google.com", "a.goo"], ["go.com"]),
    ("regexp:^www\\.", ["www.a.com"], ["a.www.com"]),
    ("regexp:\\.cn$", ["a.com.cn"], ["a.cn.com"]),
    ("dotless:", ["localhost"], ["a.b"]),
    ("dotless:host", ["myhost1"], ["host.a", "other"]),
])
def test_domain_patterns(pattern: str, matching: list[str], other: list[str]) -> None:
    rule = RoutingRule("hit", domains=(pattern,))
    for domain in matching:
        assert picks(rule, tcp(domain)), domain
    for domain in other:
        assert not picks(rule, tcp(domain)), domain


def test_domain_rules_skip_ip_targets_and_ip_rules_skip_domains() -> None:
    assert not picks(RoutingRule("hit", domains=("keyword:1",)), tcp("10.0.0.1"))
    assert not picks(RoutingRule("hit", domains=("keyword:1",)), tcp(""))
    assert not picks(RoutingRule("hit", ips=("0.0.0.0/0",)), tcp("a.com"))


@pytest.mark.parametrize(("cidr", "matching", "other"), [
    ("10.0.0.0/8", ["10.1.2.3", "::ffff:10.0.0.1"], ["11.0.0.1", "::1"]),
    ("192.168.1.7", ["192.168.1.7"], ["192.168.1.8"]),
    ("192.168.1.7/24", ["192.168.1.200"], ["192.168.2.1"]),
    ("2001:db8::/32", ["2001:db8::1", "[2001:db8::2]"], ["2001:db9::1", "10.0.0.1"]),
    ("::1", ["::1"], ["::2"]),
    ("0.0.0.0/0", ["1.2.3.4"], ["::1"]),
])
def test_ip_rules(cidr: str, matching: list[str], other: list[str]) -> None:
    rule = RoutingRule("hit", ips=(cidr, "172.16.0.0/12"))
    for address in matching:
        assert picks(rule, tcp(address)), address
    for address in other:
        assert not picks(rule, tcp(address)), address


def test_ports_and_networks() -> None:
    rule = RoutingRule("hit", ports=((0, 0), (80, 80), (1000, 2000)))
    assert [p for p in (0, 1, 80, 999, 1000, 1500, 2000, 2001) if picks(rule, tcp("a", p))] == [
        0, 80, 1000, 1500, 2000]
    udp = RoutingRule("hit", networks=("udp",))
    assert picks(udp, Target("udp", "a", 1)) and not picks(udp, tcp("a"))


def test_empty_inbound_tags_are_dropped() -> None:
    assert picks(RoutingRule("hit", inbound_tags=("", "in")), tcp("a"))
    assert not picks(RoutingRule("hit", inbound_tags=("", "in")), tcp("a"), inbound_tag="")


@pytest.mark.parametrize(("text", "error"), [
    ("geosite:cn", "geosite: lists are read by the configuration loader"),
    ("ext-domain:f.dat:x", "ext-domain: lists are read by the configuration loader"),
    ("full:", "empty domain pattern"),
    ("", "empty domain pattern"),
    ("regexp:[", "invalid regular expression"),
    ("dotless:a.b", "a dotless: pattern must not contain a dot"),
])
def test_bad_domain_patterns(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_domain(text)


def test_domain_pattern_kinds() -> None:
    assert parse_domain("a.com") == ("keyword", "a.com")
    assert parse_domain("unknown:a.com") == ("keyword", "unknown:a.com")
    assert parse_domain("domain:a.com") == ("domain", "a.com")


@pytest.mark.parametrize("text", ["geoip:cn", "ext-ip:f.dat:x", "1.2.3.4/", "1.2.3.4/33",
                                  "::/129", "1.2.3.4/x", "a.com"])
def test_bad_cidrs(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cidr(text)


def test_cidr_forms() -> None:
    assert parse_cidr("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_cidr("::ffff:1.2.3.4") == ipaddress.ip_network("1.2.3.4/32")


LABELS = st.lists(st.sampled_from(["a", "b", "ab", "com", "x-y"]), min_size=1, max_size=4)


@given(LABELS, LABELS)
def test_domain_suffix_matches_like_v2ray(pattern: list[str], name: list[str]) -> None:
    p, s = ".".join(pattern), ".".join(name)
    expected = s == p or s.endswith("." + p)  # strmatcher.domainMatcher
    assert picks(RoutingRule("hit", domains=(f"domain:{p}",)), tcp(s)) is expected


@given(st.lists(st.ip_addresses(v=4).map(int).flatmap(
    lambda base: st.tuples(st.just(base), st.integers(0, 32))), min_size=1, max_size=5),
       st.ip_addresses())
def test_ip_matching_agrees_with_ipaddress(cidrs: list[tuple[int, int]], ip: Any) -> None:
    networks = [ipaddress.ip_network((base, bits), strict=False) for base, bits in cidrs]
    rule = RoutingRule("hit", ips=tuple(str(n) for n in networks))
    if ip.version == 6 and ip.ipv4_mapped is not None:  # V2Ray treats these as IPv4
        ip = ip.ipv4_mapped
    expected = any(ip in network for network in networks if network.version == ip.version)
    assert picks(rule, tcp(str(ip))) is expected
