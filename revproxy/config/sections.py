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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from revproxy.config import compat
from revproxy.config import fields as f
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import Obj
from revproxy.config.model import (
    BridgeConfig,
    Config,
    LogConfig,
    PolicyConfig,
    PortalConfig,
    ReverseConfig,
    RoutingRule,
    ServerConfig,
)
from revproxy.config.proxies import inbound, outbound
from revproxy.config.reader import ParsedObject
from revproxy.routing import parse_cidr, parse_domain

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
        "network", "protocol")
RULE_UNSUPPORTED = {
    "source": "routing on the source address is not supported by revproxy yet",
    "sourcePort": "routing on the source port is not supported by revproxy yet",
    "user": "routing on the user is not supported by revproxy yet",
    "attrs": "routing on HTTP attributes is not supported by revproxy yet",
}
_STRATEGIES = {"asis": "AsIs", "": "AsIs",
               "alwaysip": "AlwaysIP", "always_ip": "AlwaysIP", "always-ip": "AlwaysIP",
               "ipifnonmatch": "IPIfNonMatch", "ip_if_non_match": "IPIfNonMatch",
               "ip-if-non-match": "IPIfNonMatch",
               "ipondemand": "IPOnDemand", "ip_on_demand": "IPOnDemand",
               "ip-on-demand": "IPOnDemand"}
_RESOLVING_FREEDOM = ("useip", "use_ip", "useip4", "useipv4", "use_ipv4", "use_ip_v4",
                      "use_ip4", "useip6", "useipv6", "use_ipv6", "use_ip_v6", "use_ip6")


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
    """What rules need to know of the rest, and what they tell routing."""

    sniffing: bool
    balanced: int = 0


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
    sniffing = any(_sniffs(item) for _, item in inbound_items)
    rules = o.nested("routing", lambda n, v: _routing(n, v, _Routing(sniffing)), [])
    resolving = next((here.path for here, item in outbound_items if _resolves(item)), None)
    o.nested("dns", lambda n, v: compat.dns(n, v, resolving), None)
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


def _sniffs(raw: Any) -> bool:
    """Whether V2Ray would sniff this inbound's connections (sniffing enabled, or the legacy
    domainOverride without a sniffing object)."""
    sniffing = f.raw_get(raw, "sniffing")
    if sniffing is not None:
        return f.raw_get(sniffing, "enabled") is True
    return f.raw_get(raw, "domainOverride") not in (None, "", [])


def _resolves(raw: Any) -> bool:
    """Whether this outbound is a freedom outbound that resolves names with V2Ray's DNS."""
    protocol = f.raw_get(raw, "protocol")
    strategy = f.raw_get(f.raw_get(raw, "settings"), "domainStrategy")
    return (isinstance(protocol, str) and protocol.lower() == "freedom"
            and isinstance(strategy, str) and strategy.lower() in _RESOLVING_FREEDOM)


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
    if balancers and not context.balanced:
        node.at("balancers").warn("not used by any rule: balancing is not supported by "
                                  "revproxy yet")
    if strategy is not None:
        _domain_strategy(strategy_node, strategy, rules)
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


def _domain_strategy(node: Node, value: str, rules: list[tuple[str, RoutingRule]]) -> None:
    """Routing's domainStrategy: anything but AsIs resolves domains to match ip rules."""
    strategy = _STRATEGIES.get(value.lower())
    if strategy is None:
        node.warn(f'unknown strategy {show(value)}: "AsIs" is used (as V2Ray does)')
        return
    if strategy == "AsIs":
        return
    ip_rules = [path for path, rule in rules if rule.ips]
    if ip_rules:
        node.report(f"{show(value)} is not supported by revproxy yet: V2Ray would resolve "
                    f"domains to match the ip rule {node.describe(ip_rules[0])}; set "
                    '"AsIs" to match IP destinations only, as revproxy does')
    else:
        node.warn(f"{show(value)} has no effect here (no rule matches IPs); revproxy "
                  "resolves nothing for routing")


_RULE_CONDITIONS = ("inboundTag", "domain", "domains", "ip", "port", "network", "protocol")


def _rule(node: Node, raw: Any, context: _Routing) -> RoutingRule | None:
    """A "field" rule, or None when it has problems (reported) or never matches (warned)."""
    before = node.problem_count()
    o = Obj(node, raw, RULE, unsupported=RULE_UNSUPPORTED)
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
        context.balanced += 1
        node.at("balancerTag").report("balancers are not supported by revproxy yet: V2Ray "
                                      "would spread this traffic over the balancer's outbounds")
    elif not outbound_tag:
        node.report('missing "outboundTag" (V2Ray refuses a rule with neither outboundTag nor '
                    "balancerTag)")
    inbound_tags = o.get("inboundTag", f.string_list, ())
    protocols = o.get("protocol", f.string_list, ())
    ports = o.get("port", f.port_ranges, ())
    rule = RoutingRule(
        outbound_tag=outbound_tag,
        inbound_tags=tuple(tag for tag in inbound_tags if tag),
        domains=o.nested("domain", _domains, ()) + o.nested("domains", _domains, ()),
        ips=o.nested("ip", _ips, ()),
        ports=ports,
        networks=o.get("network", f.networks, ()),
    )
    if node.problem_count() != before:
        return None
    if protocols:
        if context.sniffing:
            node.at("protocol").report("routing on the sniffed protocol is not supported by "
                                       "revproxy yet")
            return None
        node.at("protocol").warn("the rule is left out: it never matches, since no inbound "
                                 "sniffs (V2Ray knows no connection's protocol either)")
        return None
    if o.has("port") and not ports:
        node.at("port").warn("the rule is left out: it never matches, since this gives no "
                             "port (as V2Ray reads it)")
        return None
    if inbound_tags and not rule.inbound_tags:
        node.at("inboundTag").warn("the rule is left out: it never matches, since an empty "
                                   "tag matches no inbound (as in V2Ray)")
        return None
    if not (rule.inbound_tags or rule.domains or rule.ips or rule.ports or rule.networks):
        node.report("the rule has no conditions (V2Ray refuses such a rule: it needs one of "
                    + ", ".join(_RULE_CONDITIONS) + ")")
        return None
    return rule


def _balancer(node: Node, raw: Any) -> str:
    """A balancer, checked as V2Ray checks it: a tag and a non-empty selector."""
    o = Obj(node, raw, ("tag", "selector"))
    tag = o.get("tag", f.string, "")
    selector = o.get("selector", f.string_list, ())
    if o.ok and not tag:
        node.report("the balancer needs a tag (V2Ray refuses an empty one)")
    elif o.ok and not selector:
        node.report("the balancer needs a selector (V2Ray refuses an empty one)")
    return tag


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
