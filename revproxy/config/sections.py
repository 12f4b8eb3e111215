"""Parsers for the top level and its ``log``, ``routing``, ``reverse`` and ``server`` sections
(``inbounds``/``outbounds`` are in proxies).

Top-level keys that V2Ray has and revproxy does not implement (dns, api, policy, transport,
fakedns, observatory..., and the deprecated inbound/outbound/inboundDetour/outboundDetour/port)
are reported as not supported unless their value is empty; ``stats`` is accepted and ignored,
since without ``api`` it only enables counters nobody can read. Inside objects, V2Ray keys
with no effect on revproxy are ignored likewise: ``sniffing`` and ``domainOverride`` on
inbounds, ``userLevel`` and freedom's ``domainStrategy``/``timeout``, the settings of unused
transports, and routing's ``domainStrategy``/``domainMatcher``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from revproxy.config import fields as f
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import Obj
from revproxy.config.model import (
    BridgeConfig,
    Config,
    LogConfig,
    PortalConfig,
    ReverseConfig,
    RoutingRule,
    ServerConfig,
)
from revproxy.config.proxies import inbound, outbound
from revproxy.routing import parse_cidr, parse_domain

# The most worker processes one generation may have: a reload runs the new generation beside
# the old one, and the state table (revproxy/server/statetable.py) has a slot for each of
# twice this many.
MAX_WORKERS = 128

_V2RAY_ONLY_SECTIONS = ("dns", "api", "policy", "transport", "fakedns", "observatory",
                        "burstObservatory", "multiObservatory", "browserForwarder", "reverseDNS",
                        "port", "inbound", "outbound", "inboundDetour", "outboundDetour")


def config(node: Node, raw: Any, source: str) -> Config:
    if not isinstance(raw, Mapping):
        node.report(f"the top level must be an object, got {show(raw)}")
    o = Obj(node, raw if isinstance(raw, Mapping) else {},
            ("log", "inbounds", "outbounds", "routing", "reverse", "server"),
            ignored=("stats",), unsupported=_V2RAY_ONLY_SECTIONS)
    return Config(
        source=source,
        log=o.nested("log", _log, LogConfig()),
        inbounds=o.nested("inbounds", lambda n, v: f.items(n, v, inbound), ()),
        outbounds=o.nested("outbounds", lambda n, v: f.items(n, v, outbound), ()),
        routing=o.nested("routing", _routing, ()),
        reverse=o.nested("reverse", _reverse, ReverseConfig()),
        server=o.nested("server", _server, ServerConfig()),
    )


def _log(node: Node, raw: Any) -> LogConfig:
    o = Obj(node, raw, ("loglevel", "access", "error"))
    return LogConfig(
        level=o.get("loglevel", f.choice("debug", "info", "warning", "error", "none"), "warning"),
        access=o.get("access", f.string, None) or None,
        error=o.get("error", f.string, None) or None,
    )


def _routing(node: Node, raw: Any) -> tuple[RoutingRule, ...]:
    o = Obj(node, raw, ("rules", "domainStrategy", "domainMatcher"), unsupported=("balancers",))
    o.get("domainStrategy", f.string, None)
    o.get("domainMatcher", f.string, None)
    rules = o.nested("rules", lambda n, v: f.items(n, v, _rule), ())
    return tuple(rule for rule in rules if rule is not None)


_RULE_CONDITIONS = ("inboundTag", "domain", "domains", "ip", "port", "network")


def _rule(node: Node, raw: Any) -> RoutingRule | None:
    """A "field" rule, or None when it has problems (reported)."""
    before = node.problem_count()
    o = Obj(node, raw, ("type", "outboundTag", *_RULE_CONDITIONS),
            unsupported=("balancerTag", "source", "sourcePort", "user", "protocol", "attrs"))
    o.get("type", _rule_type, None)
    domains = o.nested("domain", _domains, ()) + o.nested("domains", _domains, ())
    rule = RoutingRule(
        outbound_tag=o.get("outboundTag", f.nonempty_string, "", required=True),
        inbound_tags=tuple(tag for tag in o.get("inboundTag", f.string_list, ()) if tag),
        domains=domains,
        ips=o.nested("ip", _ips, ()),
        ports=o.get("port", f.port_ranges, ()),
        networks=o.get("network", f.networks, ()),
    )
    if node.problem_count() != before:
        return None
    if not (rule.inbound_tags or rule.domains or rule.ips or rule.ports or rule.networks):
        node.report("the rule has no conditions (V2Ray refuses such a rule: it needs one of "
                    + ", ".join(_RULE_CONDITIONS) + ")")
        return None
    return rule


def _rule_type(value: Any) -> None:
    if f.string(value).lower() != "field":
        raise Invalid(f'rule type {show(value)} is {f.NOT_SUPPORTED} (only "field")')


def _domains(node: Node, raw: Any) -> tuple[str, ...]:
    return _patterns(node, raw, parse_domain)


def _ips(node: Node, raw: Any) -> tuple[str, ...]:
    return _patterns(node, raw, parse_cidr)


def _patterns(node: Node, raw: Any, parse: Callable[[str], object]) -> tuple[str, ...]:
    """A string list whose items must pass the router's own ``parse``."""
    patterns = f.string_list(raw)
    for index, pattern in enumerate(patterns):
        try:
            parse(pattern)
        except ValueError as exc:
            node.at(index).report(f"{show(pattern)}: {exc}")
    return patterns


def _reverse(node: Node, raw: Any) -> ReverseConfig:
    o = Obj(node, raw, ("bridges", "portals"))
    return ReverseConfig(
        bridges=o.nested("bridges", lambda n, v: f.items(n, v, _bridge), ()),
        portals=o.nested("portals", lambda n, v: f.items(n, v, _portal), ()),
    )


def _bridge(node: Node, raw: Any) -> BridgeConfig:
    o = Obj(node, raw, ("tag", "domain", "minTunnels", "maxTunnels"))
    bridge = BridgeConfig(
        tag=o.get("tag", f.nonempty_string, "", required=True),
        domain=o.get("domain", f.host, "", required=True),
        min_tunnels=o.get("minTunnels", f.integer(1, 1024), None),
        max_tunnels=o.get("maxTunnels", f.integer(1, 1024), None),
    )
    if bridge.min_tunnels and bridge.max_tunnels and bridge.min_tunnels > bridge.max_tunnels:
        node.report(f"minTunnels ({bridge.min_tunnels}) is more than maxTunnels "
                    f"({bridge.max_tunnels})")
    return bridge


def _portal(node: Node, raw: Any) -> PortalConfig:
    o = Obj(node, raw, ("tag", "domain"))
    return PortalConfig(
        tag=o.get("tag", f.nonempty_string, "", required=True),
        domain=o.get("domain", f.host, "", required=True),
    )


def _server(node: Node, raw: Any) -> ServerConfig:
    o = Obj(node, raw, ("workers", "pidFile", "stateFile", "user", "group", "gracefulTimeout"))
    return ServerConfig(
        workers=o.get("workers", _workers, None),
        pid_file=o.get("pidFile", f.nonempty_string, None),
        state_file=o.get("stateFile", f.nonempty_string, None),
        user=o.get("user", f.nonempty_string, None),
        group=o.get("group", f.nonempty_string, None),
        graceful_timeout=o.get("gracefulTimeout", f.number(0), 30.0),
    )


def _workers(value: Any) -> int | None:
    """A number of worker processes up to MAX_WORKERS, or "auto" (None: one per CPU)."""
    if isinstance(value, str) and value.lower() == "auto":
        return None
    if isinstance(value, str):
        raise Invalid(f'expected a number of workers or "auto", got {show(value)}')
    return f.integer(1, MAX_WORKERS)(value)
