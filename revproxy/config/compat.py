"""V2Ray 4.34's sections beside the handlers and routing: ``sniffing``/``domainOverride``
and ``allocate`` on inbounds, ``policy``, ``stats``, ``api`` (the ``dns`` section is in
config/dns.py).

Each is validated as V2Ray validates it (what V2Ray refuses is refused); what revproxy does
not do is accepted with a warning saying so when leaving it out changes nothing about where
traffic goes, or refused with a one-line reason when it would.
"""

from __future__ import annotations

from typing import Any

from revproxy.config import fields as f
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import Obj
from revproxy.config.model import ApiConfig, LevelPolicy, PolicyConfig, SystemPolicy

UINT32 = 2**32 - 1

# ``sniffing.destOverride`` and ``domainOverride`` names, as V2Ray spells them.
_SNIFFED = {"http": "http", "tls": "tls", "https": "tls", "ssl": "tls"}


def sniffing(node: Node, raw: Any, domain_override: Any) -> tuple[str, ...] | None:
    """An inbound's ``sniffing`` object and legacy ``domainOverride`` list (``node`` is the
    inbound's), read as V2Ray reads them: None when the inbound does not sniff, else the
    protocols whose sniffed domain replaces the destination ("http", "tls"; maybe none)."""
    overrides: tuple[str, ...] = ()
    if domain_override is not None:
        here = node.at("domainOverride")
        try:
            overrides = _protocols(domain_override)
        except Invalid as exc:
            here.report(str(exc))
        if raw is not None and overrides:
            here.warn("ignored: the inbound has a sniffing object, which V2Ray uses instead")
        elif overrides:
            return overrides
    if raw is None:
        return None
    here = node.at("sniffing")
    o = Obj(here, raw, ("enabled", "destOverride"))
    enabled = o.get("enabled", f.boolean, False)
    dest = o.get("destOverride", _protocols, ())
    return dest if enabled else None


def _protocols(value: Any) -> tuple[str, ...]:
    found: list[str] = []
    for item in f.string_list(value):
        name = _SNIFFED.get(item.lower())
        if name is None:
            raise Invalid(f"unknown protocol {show(item)} (V2Ray sniffs \"http\" and \"tls\")")
        if name not in found:
            found.append(name)
    return tuple(found)


def allocate(node: Node, raw: Any) -> None:
    """An inbound's ``allocate``: "always" (listen all the time) is what revproxy does;
    "random" and "external" are refused, anything else is refused as V2Ray refuses it."""
    o = Obj(node, raw, ("strategy", "refresh", "concurrency"))
    o.get("refresh", f.integer(0, UINT32), None)
    o.get("concurrency", f.integer(0, UINT32), None)
    strategy = o.get("strategy", f.string, "") if o.ok else "always"
    name = strategy.lower()
    if name in ("random", "external"):
        node.at("strategy").report(f"allocation strategy {show(strategy)} is not supported by "
                                   'revproxy (only "always": it listens on its port all the '
                                   "time)")
    elif name != "always":
        (node.at("strategy") if o.has("strategy") else node).report(
            f"unknown allocation strategy {show(strategy)} (V2Ray refuses it too; "
            '"always" is the default)')


def policy(node: Node, raw: Any) -> PolicyConfig:
    """The ``policy`` section, read as V2Ray reads it: each level's timeouts, buffer size and
    statistics flags, and the system's statistics flags."""
    o = Obj(node, raw, ("levels", "system"))
    levels = o.nested("levels", _levels, ())
    system = o.nested("system", _system, SystemPolicy())
    return PolicyConfig(levels, system)


def _levels(node: Node, raw: Any) -> tuple[tuple[int, LevelPolicy], ...]:
    """Each level is keyed by its number."""
    if not isinstance(raw, dict):
        raise Invalid(f"expected an object, got {show(raw)}")
    found: list[tuple[int, LevelPolicy]] = []
    for key, value in raw.items():
        here = node.at(str(key))
        if not (isinstance(key, str) and key.isascii() and key.isdigit()
                and int(key) <= UINT32) and not (isinstance(key, int) and 0 <= key <= UINT32):
            here.report(f"a level is a number, got {show(key)}")
            continue
        if value is None:
            continue
        o = Obj(here, value, ("handshake", "connIdle", "uplinkOnly", "downlinkOnly",
                              "statsUserUplink", "statsUserDownlink", "bufferSize"))
        seconds = f.integer(0, UINT32)
        found.append((int(key), LevelPolicy(
            stats_user_uplink=o.get("statsUserUplink", f.boolean, False),
            stats_user_downlink=o.get("statsUserDownlink", f.boolean, False),
            handshake=o.get("handshake", seconds, None),
            conn_idle=o.get("connIdle", seconds, None),
            uplink_only=o.get("uplinkOnly", seconds, None),
            downlink_only=o.get("downlinkOnly", seconds, None),
            buffer_size=o.get("bufferSize", f.integer(-(2**31), 2**31 - 1), None))))
    return tuple(found)


def _system(node: Node, raw: Any) -> SystemPolicy:
    o = Obj(node, raw, ("statsInboundUplink", "statsInboundDownlink", "statsOutboundUplink",
                        "statsOutboundDownlink"))
    return SystemPolicy(*(o.get(name, f.boolean, False) for name in
                          ("statsInboundUplink", "statsInboundDownlink",
                           "statsOutboundUplink", "statsOutboundDownlink")))


API_SERVICES = ("StatsService", "LoggerService")
_OTHER_SERVICES = ("HandlerService", "ReflectionService")


def api(node: Node, raw: Any) -> ApiConfig | None:
    """The ``api`` section: its tag and services (named in any case, as V2Ray reads them;
    given back in ``API_SERVICES``' spelling), or None when it is invalid. revproxy serves
    StatsService and LoggerService; V2Ray's other two get a warning, and a name V2Ray does
    not know is ignored with a warning, as V2Ray ignores it."""
    o = Obj(node, raw, ("tag", "services"))
    tag = o.get("tag", f.string, "")
    services = o.get("services", _string_array, ())
    if o.ok and not tag:
        node.report("the API needs a tag (V2Ray refuses an empty one too)")
        return None
    served: list[str] = []
    for index, service in enumerate(services):
        known = {name.lower(): name for name in API_SERVICES}
        here = node.at("services").at(index)
        if service.lower() in known:
            served.append(known[service.lower()])
        elif service.lower() in (name.lower() for name in _OTHER_SERVICES):
            here.warn(f"{show(service)} is not served by revproxy (it serves "
                      f"{', '.join(API_SERVICES)})")
        else:
            here.warn(f"unknown service {show(service)}: ignored, as V2Ray ignores it")
    return ApiConfig(tag, tuple(served)) if tag else None


def _string_array(value: Any) -> tuple[str, ...]:
    """A JSON array of strings (V2Ray's []string: one string is not accepted here)."""
    if not isinstance(value, list):
        raise Invalid(f"expected a list of strings, got {show(value)}")
    return f.string_list(value)


def stats(node: Node, raw: Any) -> bool:
    """The ``stats`` object (empty in V2Ray 4.34): counting is on when it is present."""
    if not isinstance(raw, dict):
        node.report(f"expected an object, got {show(raw)}")
        return False
    return True


_FREEDOM_STRATEGIES = {
    "useip": "UseIP", "use_ip": "UseIP",
    **{name: "UseIPv4" for name in ("useip4", "useipv4", "use_ipv4", "use_ip_v4", "use_ip4")},
    **{name: "UseIPv6" for name in ("useip6", "useipv6", "use_ipv6", "use_ip_v6", "use_ip6")},
}


def freedom_strategy(value: Any) -> str:
    """A freedom outbound's ``domainStrategy``: "UseIP", "UseIPv4", "UseIPv6" in V2Ray's
    spellings (any case); any other text is "AsIs", as V2Ray reads it."""
    return _FREEDOM_STRATEGIES.get(f.string(value).lower(), "AsIs")
