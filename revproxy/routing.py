"""Routing: V2Ray "field" rules compiled once, then ``Router.pick`` gives the outbound tag
for a session (first matching rule wins, else the default).

Matching follows V2Ray 4.34 (app/router, common/strmatcher): domain conditions apply to
domain targets only and ip conditions to IP targets only, both case-sensitively as V2Ray
does; ``domain:x`` matches x and its subdomains, ``full:`` is exact, ``keyword:`` and a
plain value are substrings, ``regexp:`` is searched anywhere in the name.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from revproxy.net.session import Target


class RoutingRule(Protocol):
    """A "field" rule as the config loader validated it (``config.model.RoutingRule``).
    The loader checks routes with a ``Router``, so routing names only what it reads and does
    not import the config."""

    @property
    def outbound_tag(self) -> str: ...
    @property
    def inbound_tags(self) -> Sequence[str]: ...
    @property
    def domains(self) -> Sequence[str]: ...
    @property
    def ips(self) -> Sequence[str]: ...
    @property
    def ports(self) -> Sequence[tuple[int, int]]: ...
    @property
    def networks(self) -> Sequence[str]: ...


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_DOMAIN_KINDS = ("full", "domain", "keyword", "regexp", "dotless")


def parse_domain(text: str) -> tuple[str, str]:
    """Split a V2Ray domain condition into (kind, value), kind being "full", "domain",
    "keyword" or "regexp" ("dotless:" becomes its regexp). Raises ValueError."""
    for prefix in ("geosite:", "ext:", "ext-domain:"):
        if text.startswith(prefix):
            raise ValueError(f"{prefix} domain lists are not supported by revproxy")
    kind, colon, value = text.partition(":")
    if not (colon and kind in _DOMAIN_KINDS):
        kind, value = "keyword", text
    if kind == "dotless":
        if "." in value:
            raise ValueError("a dotless: pattern must not contain a dot")
        kind, value = "regexp", f"^[^.]*{value}[^.]*$"
    if not value:
        raise ValueError("empty domain pattern")
    if kind == "regexp":
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
    return kind, value


def parse_cidr(text: str) -> IPNetwork:
    """An IP condition: "10.0.0.0/8", "2001:db8::/32", or a bare IP (/32 or /128).
    Raises ValueError."""
    for scheme in ("geoip:", "ext:", "ext-ip:"):
        if text.startswith(scheme):
            raise ValueError(f"{scheme} IP lists are not supported by revproxy")
    address_text, slash, mask = text.partition("/")
    address = _as_ip(address_text)
    if address is None:
        raise ValueError("not an IP address or CIDR")
    if slash and not (mask.isascii() and mask.isdigit() and len(mask) <= 3
                      and int(mask) <= address.max_prefixlen):
        raise ValueError(f"invalid network mask /{mask}")
    prefix = int(mask) if slash else address.max_prefixlen
    return ipaddress.ip_network((address, prefix), strict=False)


@functools.lru_cache(maxsize=4096)
def _as_ip(address: str) -> IPAddress | None:
    """The address as an IP (IPv4-mapped IPv6 counts as IPv4, as in V2Ray), or None."""
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _DomainMatcher:
    """All domain conditions of one rule: sets for full/domain, one regex for keywords."""

    __slots__ = ("_full", "_suffixes", "_keywords", "_regexps")

    def __init__(self, patterns: Iterable[str]) -> None:
        by_kind: dict[str, list[str]] = {kind: [] for kind in _DOMAIN_KINDS}
        for pattern in patterns:
            kind, value = parse_domain(pattern)
            by_kind[kind].append(value)
        self._full = frozenset(by_kind["full"])
        self._suffixes = frozenset(by_kind["domain"])
        keywords = by_kind["keyword"]
        self._keywords = re.compile("|".join(map(re.escape, keywords))) if keywords else None
        self._regexps = tuple(re.compile(value) for value in by_kind["regexp"])

    def match(self, domain: str) -> bool:
        if domain in self._full or domain in self._suffixes:
            return True
        if self._suffixes:
            dot = domain.find(".")
            while dot >= 0:
                if domain[dot + 1:] in self._suffixes:
                    return True
                dot = domain.find(".", dot + 1)
        if self._keywords is not None and self._keywords.search(domain):
            return True
        return any(regexp.search(domain) for regexp in self._regexps)


class _IPMatcher:
    """CIDRs grouped by family and prefix length: one set lookup per distinct length."""

    __slots__ = ("_by_version",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        grouped: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for cidr in cidrs:
            network = parse_cidr(cidr)
            shift = network.max_prefixlen - network.prefixlen
            grouped[network.version].setdefault(shift, set()).add(
                int(network.network_address) >> shift)
        self._by_version = {
            version: tuple((shift, frozenset(prefixes)) for shift, prefixes in shifts.items())
            for version, shifts in grouped.items()
        }

    def match(self, ip: IPAddress) -> bool:
        value = int(ip)
        return any(value >> shift in prefixes for shift, prefixes in self._by_version[ip.version])


class _Rule:
    __slots__ = ("tag", "_inbound", "_networks", "_ports", "_domains", "_ips")

    def __init__(self, rule: RoutingRule) -> None:
        self.tag = rule.outbound_tag
        inbound = [tag for tag in rule.inbound_tags if tag]
        self._inbound = frozenset(inbound) if inbound else None
        self._networks = frozenset(rule.networks) if rule.networks else None
        self._ports = rule.ports or None
        self._domains = _DomainMatcher(rule.domains) if rule.domains else None
        self._ips = _IPMatcher(rule.ips) if rule.ips else None

    @property
    def needs_address(self) -> bool:
        return self._domains is not None or self._ips is not None

    def matches(self, inbound_tag: str | None, target: Target, ip: IPAddress | None) -> bool:
        if self._inbound is not None and inbound_tag not in self._inbound:
            return False
        if self._networks is not None and target.network not in self._networks:
            return False
        if self._ports is not None and not any(
                low <= target.port <= high for low, high in self._ports):
            return False
        if self._domains is not None and (
                ip is not None or not target.address or not self._domains.match(target.address)):
            return False
        return self._ips is None or (ip is not None and self._ips.match(ip))


class Router:
    """Picks the outbound tag for (inbound tag, target); rules are compiled once here and
    must have been validated (the config loader does that)."""

    __slots__ = ("_rules", "_default", "_needs_address")

    def __init__(self, rules: Sequence[RoutingRule], default_tag: str | None) -> None:
        self._rules = tuple(_Rule(rule) for rule in rules)
        self._default = default_tag
        self._needs_address = any(rule.needs_address for rule in self._rules)

    def pick(self, inbound_tag: str | None, target: Target) -> str | None:
        ip = _as_ip(target.address) if self._needs_address else None
        for rule in self._rules:
            if rule.matches(inbound_tag, target, ip):
                return rule.tag
        return self._default
