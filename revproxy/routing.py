"""Routing: V2Ray "field" rules compiled once, then ``Router.route`` gives the outbound tag
for a session (first matching rule wins, else the default).

Matching follows V2Ray 4.34 (app/router, common/strmatcher): domain conditions apply to
domain targets only, case-sensitively as V2Ray does; ``domain:x`` matches x and its
subdomains, ``full:`` is exact, ``keyword:`` and a plain value are substrings, ``regexp:``
is searched anywhere in the name. IP conditions apply to IP targets, and with the
``IPOnDemand`` strategy to the addresses a domain target resolves to (``IPIfNonMatch``: when
no rule matched without them). ``source``/``sourcePort`` match the client's address,
``user`` its e-mail, ``protocol`` the sniffed protocol (by prefix), ``attrs`` an expression
on an HTTP proxy request's attributes. A rule's ``balancerTag`` picks at random among the
outbounds whose tags start with one of the balancer's selectors.

``geosite:``/``geoip:``/``ext:`` lists are expanded by the configuration loader
(revproxy/geodata.py): routing sees their domains and networks as plain conditions.
"""

from __future__ import annotations

import ast
import functools
import ipaddress
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from revproxy.log import log
from revproxy.net.session import Session, Target


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
    @property
    def source_ips(self) -> Sequence[str]: ...
    @property
    def source_ports(self) -> Sequence[tuple[int, int]]: ...
    @property
    def users(self) -> Sequence[str]: ...
    @property
    def protocols(self) -> Sequence[str]: ...
    @property
    def attrs(self) -> str: ...
    @property
    def balancer_tag(self) -> str: ...


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_DOMAIN_KINDS = ("full", "domain", "keyword", "regexp", "dotless")


def parse_domain(text: str) -> tuple[str, str]:
    """Split a V2Ray domain condition into (kind, value), kind being "full", "domain",
    "keyword" or "regexp" ("dotless:" becomes its regexp). Raises ValueError."""
    for prefix in ("geosite:", "ext:", "ext-domain:"):
        if text.startswith(prefix):
            raise ValueError(f"{prefix} lists are read by the configuration loader")
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
            raise ValueError(f"{scheme} lists are read by the configuration loader")
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


class DomainMatcher:
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


class IPMatcher:
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


# -- attrs: V2Ray 4.34 runs a Starlark expression with ``attrs`` (a dict of strings) in
# scope; revproxy evaluates the same expressions' common subset, checked once here.

_ATTR_METHODS = frozenset({"startswith", "endswith", "lower", "upper", "strip", "get",
                           "lstrip", "rstrip"})
_COMPARISONS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


class AttrsError(ValueError):
    """An ``attrs`` expression revproxy cannot evaluate."""


def parse_attrs(text: str) -> ast.expr:
    """An ``attrs`` expression, checked: comparisons (``==``, ``!=``, ``<``, …, ``in``),
    ``and``/``or``/``not``, string and number literals, ``True``/``False``/``None``,
    ``attrs[...]`` and the string methods startswith, endswith, lower, upper, strip (and
    ``attrs.get``). Raises AttrsError for anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise AttrsError(f"not an expression revproxy reads: {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare,
                   ast.Subscript, ast.Constant, ast.Call, ast.Attribute, ast.Name, ast.Load,
                   ast.Tuple, ast.List, *_COMPARISONS)
        if not isinstance(node, allowed):
            raise AttrsError(f"{type(node).__name__} is not supported in attrs by revproxy "
                             "(comparisons of attrs[...] with strings, and/or/not, "
                             "startswith/endswith are)")
        if isinstance(node, ast.Name) and node.id not in ("attrs", "True", "False", "None"):
            raise AttrsError(f"unknown name {node.id!r} (only attrs is defined)")
        if isinstance(node, ast.Attribute) and node.attr not in _ATTR_METHODS:
            raise AttrsError(f"method {node.attr!r} is not supported in attrs by revproxy")
        if isinstance(node, ast.Call) and (node.keywords or not isinstance(node.func,
                                                                           ast.Attribute)):
            raise AttrsError("only method calls such as .startswith(\"/x\") are supported")
        if isinstance(node, ast.Constant) and not isinstance(node.value,
                                                             str | int | bool | type(None)):
            raise AttrsError(f"literal {node.value!r} is not supported")
    return tree


class _Missing(Exception):
    """A key not in attrs (Starlark fails, and the rule does not match)."""


def _evaluate(node: ast.expr, attrs: Mapping[str, str]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return attrs if node.id == "attrs" else {"True": True, "False": False}.get(node.id)
    if isinstance(node, ast.BoolOp):
        value: Any = None
        for operand in node.values:
            value = _evaluate(operand, attrs)
            if isinstance(node.op, ast.And) != bool(value):
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        return not _evaluate(node.operand, attrs)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, attrs)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, attrs)
            if not _COMPARISONS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        container = _evaluate(node.value, attrs)
        key = _evaluate(node.slice, attrs)
        try:
            return container[key]
        except (KeyError, IndexError, TypeError):
            raise _Missing from None
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_evaluate(item, attrs) for item in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        target = _evaluate(node.func.value, attrs)
        args = [_evaluate(arg, attrs) for arg in node.args]
        if node.func.attr == "get" and isinstance(target, Mapping) or \
                node.func.attr != "get" and isinstance(target, str):
            return getattr(target, node.func.attr)(*args)
        raise _Missing
    raise _Missing


def attrs_match(expression: ast.expr, attrs: Mapping[str, str] | None) -> bool:
    """Whether a parsed ``attrs`` expression holds; no attributes (not an HTTP proxy
    request) or an error while evaluating (a missing key) is no match, as in V2Ray."""
    if attrs is None:
        return False
    try:
        return bool(_evaluate(expression, attrs))
    except (_Missing, TypeError, ValueError):
        return False


# -- matching

class _Context:
    """What the rules of one routing decision look at; the target's addresses are resolved
    at most once, when a rule first needs them and the strategy allows it."""

    __slots__ = ("inbound_tag", "target", "ip", "session", "resolve", "_resolved",
                 "_source")

    def __init__(self, inbound_tag: str | None, target: Target, session: Session | None,
                 resolve: Callable[[str], Sequence[IPAddress]] | None) -> None:
        self.inbound_tag = inbound_tag
        self.target = target
        self.ip = _as_ip(target.address)
        self.session = session
        self.resolve = resolve
        self._resolved: Sequence[IPAddress] | None = None
        self._source: tuple[IPAddress | None, int] | None = None

    def target_ips(self) -> Sequence[IPAddress]:
        if self.ip is not None:
            return (self.ip,)
        if self.resolve is None or not self.target.address:
            return ()
        if self._resolved is None:
            try:
                self._resolved = tuple(self.resolve(self.target.address))
            except Exception as exc:  # no answer: IP rules do not match, as in V2Ray
                log.info("routing: resolve ip for %s: %s", self.target.address, exc)
                self._resolved = ()
        return self._resolved

    def source(self) -> tuple[IPAddress | None, int]:
        """The client's (IP or None, port) from ``session.source`` ("ip:port")."""
        if self._source is None:
            text = self.session.source if self.session is not None else ""
            host, colon, port = text.rpartition(":")
            self._source = (_as_ip(host) if colon else None,
                            int(port) if colon and port.isdigit() else 0)
        return self._source


class _Rule:
    __slots__ = ("tag", "balancer", "_inbound", "_networks", "_ports", "_domains", "_ips",
                 "_source_ips", "_source_ports", "_users", "_protocols", "_attrs")

    def __init__(self, rule: RoutingRule) -> None:
        self.tag = rule.outbound_tag
        self.balancer = "" if rule.outbound_tag else getattr(rule, "balancer_tag", "")
        inbound = [tag for tag in rule.inbound_tags if tag]
        self._inbound = frozenset(inbound) if inbound else None
        self._networks = frozenset(rule.networks) if rule.networks else None
        self._ports = rule.ports or None
        self._domains = DomainMatcher(rule.domains) if rule.domains else None
        self._ips = IPMatcher(rule.ips) if rule.ips else None
        source_ips = getattr(rule, "source_ips", ())
        self._source_ips = IPMatcher(source_ips) if source_ips else None
        self._source_ports = getattr(rule, "source_ports", ()) or None
        users = [user for user in getattr(rule, "users", ()) if user]
        self._users = frozenset(users) if users else None
        protocols = tuple(p for p in getattr(rule, "protocols", ()) if p)
        self._protocols = protocols or None
        attrs = getattr(rule, "attrs", "")
        self._attrs = parse_attrs(attrs) if attrs else None

    @property
    def needs_ips(self) -> bool:
        return self._ips is not None

    def admits(self, inbound_tag: str | None) -> bool:
        """Whether the rule's inbound condition lets a session of ``inbound_tag`` through."""
        return self._inbound is None or inbound_tag in self._inbound

    @property
    def inbound_only(self) -> bool:
        """Whether the inbound tag is all the rule looks at."""
        return (self._networks is None and self._ports is None and self._domains is None
                and self._ips is None and self._source_ips is None
                and self._source_ports is None and self._users is None
                and self._protocols is None and self._attrs is None)

    def matches(self, ctx: _Context) -> bool:
        target = ctx.target
        if self._inbound is not None and ctx.inbound_tag not in self._inbound:
            return False
        if self._networks is not None and target.network not in self._networks:
            return False
        if self._ports is not None and not any(
                low <= target.port <= high for low, high in self._ports):
            return False
        if self._domains is not None and (
                ctx.ip is not None or not target.address
                or not self._domains.match(target.address)):
            return False
        if self._ips is not None and not any(self._ips.match(ip) for ip in ctx.target_ips()):
            return False
        if self._source_ips is not None or self._source_ports is not None:
            source_ip, source_port = ctx.source()
            if self._source_ips is not None and (
                    source_ip is None or not self._source_ips.match(source_ip)):
                return False
            if self._source_ports is not None and not any(
                    low <= source_port <= high for low, high in self._source_ports):
                return False
        session = ctx.session
        if self._users is not None and (session is None or session.email not in self._users):
            return False
        if self._protocols is not None and (
                session is None or not session.protocol
                or not session.protocol.startswith(self._protocols)):
            return False
        return self._attrs is None or (
            session is not None and attrs_match(self._attrs, session.attributes))


STRATEGIES = ("AsIs", "IPIfNonMatch", "IPOnDemand")
_MAX_PLANS = 1024  # inbound tags remembered (a configuration has a few)


class Router:
    """Picks the outbound tag for a session; rules are compiled once here and must have
    been validated (the config loader does that).

    ``balancers``: balancer tag -> selectors; ``outbound_tags``: the tags they select from;
    ``strategy``: V2Ray's ``domainStrategy`` ("AsIs", "IPIfNonMatch", "IPOnDemand"; V2Ray
    4.34 reads "AlwaysIP" as "AsIs"), with ``resolve`` giving a domain's addresses."""

    __slots__ = ("_rules", "_default", "_balancers", "_strategy", "_resolve", "_choose",
                 "_plans")

    def __init__(self, rules: Sequence[RoutingRule], default_tag: str | None, *,
                 balancers: Mapping[str, Sequence[str]] | None = None,
                 outbound_tags: Sequence[str] = (), strategy: str = "AsIs",
                 resolve: Callable[[str], Sequence[IPAddress]] | None = None,
                 choose: Callable[[Sequence[str]], str] = random.choice) -> None:
        self._rules = tuple(_Rule(rule) for rule in rules)
        self._default = default_tag
        self._balancers = {
            tag: tuple(t for t in outbound_tags if t.startswith(tuple(selectors)))
            for tag, selectors in (balancers or {}).items()}
        needs_ips = any(rule.needs_ips for rule in self._rules)
        self._strategy = strategy if resolve is not None and needs_ips else "AsIs"
        self._resolve = resolve
        self._choose = choose
        # inbound tag -> the rule that takes all its sessions, or the rules that may take
        # some (see _plan); made when the tag is first routed.
        self._plans: dict[str | None, _Rule | tuple[_Rule, ...]] = {}

    def _plan(self, inbound_tag: str | None) -> _Rule | tuple[_Rule, ...]:
        """The rules a session of ``inbound_tag`` may match, in order; when the first of them
        looks at nothing but the inbound tag, that rule alone (it takes every session)."""
        rules = tuple(rule for rule in self._rules if rule.admits(inbound_tag))
        plan: _Rule | tuple[_Rule, ...] = (
            rules[0] if rules and rules[0].inbound_only else rules)
        if len(self._plans) < _MAX_PLANS:
            self._plans[inbound_tag] = plan
        return plan

    def pick(self, inbound_tag: str | None, target: Target) -> str | None:
        """The tag for a connection known only by its inbound and target."""
        return self._pick(inbound_tag, target, None)

    def route(self, session: Session) -> str | None:
        """The tag for ``session`` (its source, user and sniffed protocol count too)."""
        return self._pick(session.inbound_tag, session.target, session)

    def _pick(self, inbound_tag: str | None, target: Target, session: Session | None
              ) -> str | None:
        plan = self._plans.get(inbound_tag)
        if plan is None:
            plan = self._plan(inbound_tag)
        if isinstance(plan, _Rule):  # decided by the inbound tag: nothing else to look at
            rule: _Rule | None = plan
        else:
            strategy = self._strategy
            ctx = _Context(inbound_tag, target, session,
                           self._resolve if strategy == "IPOnDemand" else None)
            rule = self._first(plan, ctx)
            if (rule is None and strategy == "IPIfNonMatch" and ctx.ip is None
                    and target.address):
                ctx.resolve = self._resolve
                rule = self._first(plan, ctx)
        if rule is None:
            return self._default
        if not rule.balancer:
            return rule.tag
        candidates = self._balancers.get(rule.balancer, ())
        if not candidates:  # V2Ray: "no available outbounds selected", the default route
            log.warning("routing: balancer %s selects no outbound", rule.balancer)
            return self._default
        return self._choose(candidates)

    @staticmethod
    def _first(rules: Sequence[_Rule], ctx: _Context) -> _Rule | None:
        for rule in rules:
            if rule.matches(ctx):
                return rule
        return None
