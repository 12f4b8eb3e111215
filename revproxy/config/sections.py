"""Parsers for the top level and its ``log``, ``routing``, ``reverse`` and ``server``
sections (``inbounds``/``outbounds`` are in proxies, V2Ray's sections that revproxy only
checks are in compat).

The top level is read as V2Ray 4.34 reads it: the deprecated ``inbound``/``inboundDetour``
and ``outbound``/``outboundDetour`` come before ``inbounds``/``outbounds``, the deprecated
``port`` is the first inbound's port when it has none, and the global ``transport`` settings
are copied into every stream that lacks them. Routing reads the legacy ``settings.rules``
after ``rules``. The key tables below are what docs/configuration.md documents (a test
compares them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from revproxy.config import compat
from revproxy.config import fields as f
from revproxy.config.dns import dns as dns_section
from revproxy.config.dns import domain_condition, ip_condition
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import Obj
from revproxy.config.merge import ConfigSource
from revproxy.config.model import (
    BridgeConfig,
    Config,
    LogConfig,
    PolicyConfig,
    PortalConfig,
    ReverseConfig,
    RoutingConfig,
    RoutingRule,
    ServerConfig,
)
from revproxy.config.proxies import inbound, outbound
from revproxy.config.reader import ParsedObject
from revproxy.geodata import Assets, asset_dirs
from revproxy.routing import AttrsError, parse_attrs

# The most worker processes one generation may have: a reload runs the new generation beside
# the old one, and the state table (revproxy/server/statetable.py) has a slot for each of
# twice this many.
MAX_WORKERS = 128

TOP_LEVEL = ("log", "inbounds", "outbounds", "routing", "reverse", "dns", "policy", "api",
             "stats", "transport", "port", "inbound", "outbound", "inboundDetour",
             "outboundDetour", "server")
TOP_LEVEL_IGNORED = ("$schema",)
_LATER = "V2Ray 4.34 does not know it (it came in a later version) and ignores it, as revproxy does"
TOP_LEVEL_WARNED = {name: _LATER for name in (
    "fakedns", "observatory", "burstObservatory", "multiObservatory", "browserForwarder")}

# V2Ray's global transport: the settings it copies into each stream (not quicSettings).
TRANSPORT_APPLIED = ("tcpSettings", "kcpSettings", "wsSettings", "httpSettings", "dsSettings")
TRANSPORT_WARNED = {"quicSettings": "ignored: V2Ray 4.34 does not copy a global quicSettings "
                                    "into streams either"}

ROUTING = ("rules", "domainStrategy", "balancers", "settings")
ROUTING_WARNED = {
    "strategy": "ignored (a key of old V2Ray versions; V2Ray 4.34 ignores it too)",
    "domainMatcher": "V2Ray 4.34 does not know it (it came in 4.36) and ignores it; rules "
                     "match the same either way",
}
RULE = ("type", "outboundTag", "balancerTag", "inboundTag", "domain", "domains", "ip", "port",
        "network", "protocol", "source", "sourcePort", "user", "attrs")
_STRATEGIES = {"asis": "AsIs", "": "AsIs",
               "alwaysip": "AlwaysIP", "always_ip": "AlwaysIP", "always-ip": "AlwaysIP",
               "ipifnonmatch": "IPIfNonMatch", "ip_if_non_match": "IPIfNonMatch",
               "ip-if-non-match": "IPIfNonMatch",
               "ipondemand": "IPOnDemand", "ip_on_demand": "IPOnDemand",
               "ip-on-demand": "IPOnDemand"}


@dataclass(frozen=True)
class Layout:
    """Where the parsed parts sit in the document, for the checks' messages: the path of each
    inbound, outbound and (kept) routing rule, and the API's tag, which rules may name."""

    inbounds: tuple[str, ...] = ()
    outbounds: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    api_tag: str | None = None


@dataclass
class _Routing:
    """What rules need to know of the rest, and what they tell routing: the balancer tags
    they name (with the rules' balancerTag nodes naming each)."""

    assets: Assets
    balanced: dict[str, list[Node]] = field(default_factory=dict)
    strategy: str = "AsIs"
    balancers: tuple[tuple[str, tuple[str, ...]], ...] = ()


def config(node: Node, raw: Any, source: str) -> tuple[Config, Layout]:
    if not isinstance(raw, Mapping):
        node.report(f"the top level must be an object, got {show(raw)}")
    o = Obj(node, raw if isinstance(raw, Mapping) else {}, TOP_LEVEL,
            ignored=TOP_LEVEL_IGNORED, warned=TOP_LEVEL_WARNED)
    transport = o.nested("transport", _transport, {})
    inbound_items = _handlers(o, ("inbound", "inboundDetour", "inbounds"), transport)
    outbound_items = _handlers(o, ("outbound", "outboundDetour", "outbounds"), transport)
    port = o.get("port", f.integer(0, 65535), 0)
    if port and inbound_items and f.raw_get(inbound_items[0][1], "port") is None:
        here, first = inbound_items[0]
        inbound_items[0] = (here, {**first, "port": port})
        here.at("port").alias_of("port")
    inbounds = tuple(inbound(here, item) for here, item in inbound_items)
    outbounds = tuple(outbound(here, item) for here, item in outbound_items)
    paths = source.paths() if isinstance(source, ConfigSource) else []
    assets = Assets(asset_dirs([os.path.dirname(os.path.abspath(p)) for p in paths]))
    routing = _Routing(assets)
    rules = o.nested("routing", lambda n, v: _routing(n, v, routing), [])
    dns = o.nested("dns", lambda n, v: dns_section(n, v, assets), None)
    policy = o.nested("policy", compat.policy, PolicyConfig())
    stats = o.nested("stats", compat.stats, False)
    api = o.nested("api", compat.api, None)
    parsed = Config(
        source=source,
        log=o.nested("log", _log, LogConfig()),
        inbounds=inbounds,
        outbounds=outbounds,
        routing=tuple(rule for _, rule in rules),
        reverse=o.nested("reverse", _reverse, ReverseConfig()),
        server=o.nested("server", _server, ServerConfig()),
        api=api,
        stats=stats,
        policy=policy,
        routing_options=RoutingConfig(routing.strategy, routing.balancers),
        dns=dns,
    )
    layout = Layout(inbounds=tuple(here.path for here, _ in inbound_items),
                    outbounds=tuple(here.path for here, _ in outbound_items),
                    rules=tuple(path for path, _ in rules),
                    api_tag=api.tag if api is not None else None)
    return parsed, layout


def _handlers(o: Obj, keys: tuple[str, str, str], transport: Mapping[str, Any]
              ) -> list[tuple[Node, Any]]:
    """The raw inbounds (or outbounds) in V2Ray's order: the deprecated single one, the
    deprecated detours, then the list; each with its node and the transport applied."""
    single, detours, current = keys
    found: list[tuple[Node, Any]] = []
    if o.has(single):
        found.append((o.node.at(single), o.raw(single)))
    for key in (detours, current):
        if not o.has(key):
            continue
        value = o.raw(key)
        if not isinstance(value, list):
            o.node.at(key).report(f"expected a list, got {show(value)}")
            continue
        found += [(o.node.at(key).at(index), item) for index, item in enumerate(value)
                  if item is not None]
    return [(here, _with_transport(here, item, transport)) for here, item in found]


def _transport(node: Node, raw: Any) -> dict[str, Any]:
    o = Obj(node, raw, TRANSPORT_APPLIED, warned=TRANSPORT_WARNED)
    return {name: o.raw(name) for name in TRANSPORT_APPLIED if o.has(name)}


def _with_transport(node: Node, raw: Any, transport: Mapping[str, Any]) -> Any:
    """``raw`` with the global transport settings its streamSettings lack, as V2Ray's
    applyTransportConfig does; messages about a copy name the transport's value."""
    if not transport or not isinstance(raw, Mapping):
        return raw
    stream = f.raw_get(raw, "streamSettings")
    stream = {} if stream is None else stream
    if not isinstance(stream, Mapping):
        return raw
    completed = ParsedObject(stream)
    completed.duplicates = getattr(stream, "duplicates", ())
    for name, value in transport.items():
        if f.raw_get(stream, name) is None:
            completed[name] = value
            node.at("streamSettings").at(name).alias_of(f"transport.{name}")
    copy = ParsedObject((key, value) for key, value in raw.items()
                        if not (isinstance(key, str) and key.lower() == "streamsettings"))
    copy.duplicates = getattr(raw, "duplicates", ())
    copy["streamSettings"] = completed
    return copy


def _log(node: Node, raw: Any) -> LogConfig:
    o = Obj(node, raw, ("loglevel", "access", "error"))
    return LogConfig(
        level=o.get("loglevel", lambda value: _log_level(node, value), "warning"),
        access=o.get("access", f.string, None) or None,
        error=o.get("error", f.string, None) or None,
    )


def _log_level(node: Node, value: Any) -> str:
    """V2Ray's levels, in any case; V2Ray reads any other text as "warning"."""
    level = f.string(value).lower()
    if level in ("debug", "info", "warning", "error", "none"):
        return level
    node.at("loglevel").warn(f'unknown level {show(value)}: "warning" is used (as V2Ray does)')
    return "warning"


def _routing(node: Node, raw: Any, context: _Routing) -> list[tuple[str, RoutingRule]]:
    """The kept rules with their paths: ``rules``, then the legacy ``settings.rules``."""
    o = Obj(node, raw, ROUTING, warned=ROUTING_WARNED)
    strategy_node = node.at("domainStrategy")
    strategy = o.get("domainStrategy", f.string, None)
    if not o.has("domainStrategy") and o.has("settings"):
        strategy_node = node.at("settings").at("domainStrategy")
    rules = [(here.path, rule) for here, rule in _rule_list(o, "rules", context)
             if rule is not None]
    legacy = o.nested("settings", lambda n, v: _legacy_settings(n, v, context), (None, []))
    if strategy is None:
        strategy = legacy[0]
    rules += [(here.path, rule) for here, rule in legacy[1] if rule is not None]
    balancers = o.nested("balancers", lambda n, v: f.items(n, v, _balancer), ())
    context.balancers = tuple(item for item in balancers if item[0])
    known = {tag for tag, _ in context.balancers}
    for tag, nodes in context.balanced.items():
        if o.ok and tag not in known:  # V2Ray: "balancer X not found"
            for here in nodes:
                here.report(f"balancer {show(tag)} not found (routing.balancers has no such "
                            "tag)")
    if strategy is not None:
        context.strategy = _domain_strategy(strategy_node, strategy)
    return rules


def _legacy_settings(node: Node, raw: Any, context: _Routing
                     ) -> tuple[str | None, list[tuple[Node, RoutingRule | None]]]:
    """V2Ray's deprecated ``routing.settings`` (domainStrategy, rules)."""
    o = Obj(node, raw, ("rules", "domainStrategy"))
    return (o.get("domainStrategy", f.string, None), _rule_list(o, "rules", context))


def _rule_list(o: Obj, key: str, context: _Routing) -> list[tuple[Node, RoutingRule | None]]:
    here = o.node.at(key)
    return o.get(key, lambda value: [(here.at(index), _rule(here.at(index), item, context))
                                     for index, item in enumerate(_list(value))], [])


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(f"expected a list, got {show(value)}")
    return value


def _domain_strategy(node: Node, value: str) -> str:
    """Routing's domainStrategy: IPIfNonMatch and IPOnDemand resolve domains (with the
    ``dns`` section) to match ip rules; V2Ray 4.34 routes "AlwaysIP" as "AsIs"."""
    strategy = _STRATEGIES.get(value.lower())
    if strategy is None:
        node.warn(f'unknown strategy {show(value)}: "AsIs" is used (as V2Ray does)')
        return "AsIs"
    if strategy == "AlwaysIP":
        node.warn(f'{show(value)} routes as "AsIs": V2Ray 4.34 reads it but resolves nothing '
                  "for it")
        return "AsIs"
    return strategy


_RULE_CONDITIONS = ("inboundTag", "domain", "domains", "ip", "port", "network", "protocol",
                    "source", "sourcePort", "user", "attrs")


def _rule(node: Node, raw: Any, context: _Routing) -> RoutingRule | None:
    """A "field" rule, or None when it has problems (reported) or never matches (warned)."""
    before = node.problem_count()
    o = Obj(node, raw, RULE)
    if not o.ok:
        return None
    rule_type = o.get("type", f.string, None)
    if rule_type is None:
        node.warn('no "type": V2Ray 4.34 refuses a rule without "type": "field"')
    elif rule_type.lower() != "field":
        node.at("type").report(f"rule type {show(rule_type)} is {f.NOT_SUPPORTED} (only "
                               '"field", as in V2Ray 4.34)')
    outbound_tag = o.get("outboundTag", f.string, "")
    balancer_tag = o.get("balancerTag", f.string, "")
    if outbound_tag and balancer_tag:
        node.at("balancerTag").warn("ignored: the rule has an outboundTag, which V2Ray uses")
    elif balancer_tag:
        context.balanced.setdefault(balancer_tag, []).append(node.at("balancerTag"))
    elif not outbound_tag:
        node.report('missing "outboundTag" (V2Ray refuses a rule with neither outboundTag nor '
                    "balancerTag)")
    inbound_tags = o.get("inboundTag", f.string_list, ())
    protocols = o.get("protocol", f.string_list, ())
    ports = o.get("port", f.port_ranges, ())
    source_ports = o.get("sourcePort", f.port_ranges, ())
    users = o.get("user", f.string_list, ())
    attrs = o.get("attrs", f.string, "")
    if attrs:
        try:
            parse_attrs(attrs)
        except AttrsError as exc:
            node.at("attrs").report(str(exc))
    assets = context.assets
    rule = RoutingRule(
        outbound_tag=outbound_tag,
        inbound_tags=tuple(tag for tag in inbound_tags if tag),
        domains=(o.nested("domain", lambda n, v: _domains(n, v, assets), ())
                 + o.nested("domains", lambda n, v: _domains(n, v, assets), ())),
        ips=o.nested("ip", lambda n, v: _ips(n, v, assets), ()),
        ports=ports,
        networks=o.get("network", f.networks, ()),
        source_ips=o.nested("source", lambda n, v: _ips(n, v, assets), ()),
        source_ports=source_ports,
        users=tuple(user for user in users if user),
        protocols=tuple(protocol for protocol in protocols if protocol),
        attrs=attrs,
        balancer_tag="" if outbound_tag else balancer_tag,
    )
    if node.problem_count() != before:
        return None
    for key, given, kept in (("protocol", protocols, rule.protocols),
                             ("user", users, rule.users)):
        if given and not kept:
            node.at(key).warn("the rule is left out: it never matches, since an empty "
                              f"{key} matches nothing (as in V2Ray)")
            return None
    if o.has("sourcePort") and not source_ports:
        node.at("sourcePort").warn("the rule is left out: it never matches, since this gives "
                                   "no port (as V2Ray reads it)")
        return None
    if o.has("port") and not ports:
        node.at("port").warn("the rule is left out: it never matches, since this gives no "
                             "port (as V2Ray reads it)")
        return None
    if inbound_tags and not rule.inbound_tags:
        node.at("inboundTag").warn("the rule is left out: it never matches, since an empty "
                                   "tag matches no inbound (as in V2Ray)")
        return None
    if not (rule.inbound_tags or rule.domains or rule.ips or rule.ports or rule.networks
            or rule.source_ips or rule.source_ports or rule.users or rule.protocols
            or rule.attrs):
        node.report("the rule has no conditions (V2Ray refuses such a rule: it needs one of "
                    + ", ".join(_RULE_CONDITIONS) + ")")
        return None
    return rule


def _balancer(node: Node, raw: Any) -> tuple[str, tuple[str, ...]]:
    """A balancer, checked as V2Ray checks it: a tag and a non-empty selector."""
    o = Obj(node, raw, ("tag", "selector"))
    tag = o.get("tag", f.string, "")
    selector = o.get("selector", f.string_list, ())
    if o.ok and not tag:
        node.report("the balancer needs a tag (V2Ray refuses an empty one)")
    elif o.ok and not selector:
        node.report("the balancer needs a selector (V2Ray refuses an empty one)")
    return tag, selector


def _domains(node: Node, raw: Any, assets: Assets) -> tuple[str, ...]:
    """Domain conditions, geosite and ext lists expanded."""
    return _patterns(node, raw, lambda n, text: domain_condition(n, text, assets))


def _ips(node: Node, raw: Any, assets: Assets) -> tuple[str, ...]:
    """IP conditions, geoip and ext lists expanded."""
    return _patterns(node, raw, lambda n, text: ip_condition(n, text, assets))


def _patterns(node: Node, raw: Any, expand: Callable[[Node, str], list[str]]
              ) -> tuple[str, ...]:
    found: list[str] = []
    for index, pattern in enumerate(f.string_list(raw)):
        found += expand(node.at(index), pattern)
    return tuple(found)


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
    o = Obj(node, raw, ("tag", "domain", "proxyProtocol"))
    return PortalConfig(
        tag=o.get("tag", f.nonempty_string, "", required=True),
        domain=o.get("domain", f.host, "", required=True),
        proxy_protocol=o.get("proxyProtocol", f.integer(0, 2), 0),
    )


SERVER = ("workers", "pidFile", "stateFile", "user", "group", "gracefulTimeout", "metrics")


def _server(node: Node, raw: Any) -> ServerConfig:
    o = Obj(node, raw, SERVER, strict=True)
    return ServerConfig(
        workers=o.get("workers", _workers, None),
        pid_file=o.get("pidFile", f.nonempty_string, None),
        state_file=o.get("stateFile", f.nonempty_string, None),
        user=o.get("user", f.nonempty_string, None),
        group=o.get("group", f.nonempty_string, None),
        graceful_timeout=o.get("gracefulTimeout", f.number(0), 30.0),
        metrics=o.get("metrics", _host_port, None),
    )


def _host_port(value: Any) -> tuple[str, int]:
    """"host:port" ("[::1]:port" for IPv6) where the Prometheus metrics are served."""
    text = f.string(value)
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f'expected "host:port", got {show(value)}')
    return host, int(port)


def _workers(value: Any) -> int | None:
    """A number of worker processes up to MAX_WORKERS, or "auto" (None: one per CPU)."""
    if isinstance(value, str) and value.lower() == "auto":
        return None
    if isinstance(value, str):
        raise Invalid(f'expected a number of workers or "auto", got {show(value)}')
    return f.integer(1, MAX_WORKERS)(value)
