"""V2Ray 4.34 settings that revproxy reads only to check them and to decide what ignoring
them would do: ``sniffing``/``domainOverride`` and ``allocate`` on inbounds, the ``dns``
section and the parts of ``policy`` not applied; and the statistics (``stats``, ``api``,
``policy``'s statistics flags), which are applied.

Each is validated as V2Ray validates it (what V2Ray refuses is refused), then accepted with a
warning saying what is not done when leaving it out changes nothing about where traffic goes,
or refused with a one-line reason when it would.
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


def sniffing(node: Node, raw: Any, domain_override: Any) -> bool:
    """An inbound's ``sniffing`` object and legacy ``domainOverride`` list (``node`` is the
    inbound's). Sniffing that would change a connection's destination is refused; sniffing
    without ``destOverride`` only names the protocol for routing rules and gets a warning.
    Gives whether the inbound sniffs."""
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
            here.report(_DEST_OVERRIDE.format(", ".join(overrides)))
            return True
    if raw is None:
        return False
    here = node.at("sniffing")
    o = Obj(here, raw, ("enabled", "destOverride"))
    enabled = o.get("enabled", f.boolean, False)
    dest = o.get("destOverride", _protocols, ())
    if enabled and dest:
        here.report(_DEST_OVERRIDE.format(", ".join(dest)))
    elif enabled:
        here.warn("the protocol is not sniffed yet: routing rules on \"protocol\" never match "
                  "this inbound's connections")
    return enabled


_DEST_OVERRIDE = ("sniffing ({}) is not supported by revproxy yet: V2Ray would send these "
                  "connections to the domain found in their HTTP Host or TLS SNI instead of "
                  'their destination; set "enabled": false to keep the destination')


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
    """The ``policy`` section, checked as V2Ray reads it: its statistics flags are applied,
    the rest gets a warning naming what is not (it changes how long connections are kept,
    not where they go)."""
    o = Obj(node, raw, ("levels", "system"))
    given: set[str] = set()
    levels = o.nested("levels", lambda n, v: _levels(n, v, given), ())
    system = o.nested("system", _system, SystemPolicy())
    if given:
        node.warn(f"not applied yet ({', '.join(sorted(given))}): revproxy keeps its own "
                  "timeouts and buffers")
    return PolicyConfig(levels, system)


_LEVEL_TIMEOUTS = ("handshake", "connIdle", "uplinkOnly", "downlinkOnly")
_LEVEL_STATS = ("statsUserUplink", "statsUserDownlink")


def _levels(node: Node, raw: Any, given: set[str]) -> tuple[tuple[int, LevelPolicy], ...]:
    """Each level is keyed by its number; adds the kinds of setting not applied to
    ``given``."""
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
        o = Obj(here, value, (*_LEVEL_TIMEOUTS, *_LEVEL_STATS, "bufferSize"))
        for name in _LEVEL_TIMEOUTS:
            if o.get(name, f.integer(0, UINT32), None) is not None:
                given.add("timeouts")
        if o.get("bufferSize", f.integer(-(2**31), 2**31 - 1), None) is not None:
            given.add("buffer sizes")
        found.append((int(key), LevelPolicy(
            stats_user_uplink=o.get("statsUserUplink", f.boolean, False),
            stats_user_downlink=o.get("statsUserDownlink", f.boolean, False))))
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


def dns(node: Node, raw: Any, resolving_outbound: str | None) -> None:
    """The ``dns`` section. V2Ray 4.34 uses it only to resolve for freedom outbounds whose
    domainStrategy is UseIP*, for routing's IP strategies and for the dns outbound: refused
    when a freedom outbound would resolve with it (``resolving_outbound`` names it), else
    accepted with a warning."""
    if not isinstance(raw, dict):
        node.report(f"expected an object, got {show(raw)}")
        return
    if not raw:
        return
    if resolving_outbound is not None:
        node.report(f"not supported by revproxy yet: V2Ray would resolve the destinations of "
                    f"{resolving_outbound} with it; revproxy has no DNS client (set that "
                    'domainStrategy to "AsIs" to resolve with the system as revproxy does)')
    else:
        node.warn("not used: revproxy has no DNS client yet, and nothing in this configuration "
                  "would resolve with V2Ray's (freedom outbounds resolve \"AsIs\", with the "
                  "system)")
