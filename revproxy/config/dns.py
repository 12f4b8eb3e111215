"""The ``dns`` section, read as V2Ray 4.34 reads it (infra/conf/dns.go): ``servers``,
``hosts``, ``clientIp`` and ``tag``; the DNS client that uses it is revproxy/dns.py.

``hosts`` keys take V2Ray's forms ("domain:", "full:", "keyword:", "regexp:", "dotless:",
"geosite:", "ext:FILE:LIST"; a plain name is a full match) and are kept in V2Ray's order
(sorted); ``geosite:``/``ext:`` lists, and those in a server's ``domains`` and
``expectIps``, are expanded here, so a missing file or list is a configuration error as in
V2Ray.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

from revproxy.config import fields as f
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import Obj
from revproxy.config.model import DNSConfig, NameServerConfig
from revproxy.geodata import Assets, GeoDataError, expand_domain, expand_ip
from revproxy.routing import parse_cidr, parse_domain

DNS = ("servers", "hosts", "clientIp", "tag")
_LATER = "V2Ray 4.34 does not know it (it came in a later version) and ignores it, as revproxy does"
DNS_WARNED = {name: _LATER for name in (
    "disableCache", "queryStrategy", "disableFallback", "disableFallbackIfMatch", "fakedns",
    "domainMatcher")}
SERVER = ("address", "clientIp", "port", "domains", "expectIps")
SERVER_WARNED = {"skipFallback": _LATER, "queryStrategy": _LATER, "fakedns": _LATER}


def dns(node: Node, raw: Any, assets: Assets) -> DNSConfig | None:
    o = Obj(node, raw, DNS, warned=DNS_WARNED)
    servers = o.nested("servers", lambda n, v: _servers(n, v, assets), ())
    hosts = o.nested("hosts", lambda n, v: _hosts(n, v, assets), ())
    client_ip = o.get("clientIp", _ip, None)
    tag = o.get("tag", f.string, "")
    if not o.ok:
        return None
    return DNSConfig(servers=servers, hosts=hosts, client_ip=client_ip, tag=tag)


def _ip(value: Any) -> str:
    text = f.string(value)
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise Invalid(f"not an IP address: {show(value)}") from None


def _servers(node: Node, raw: Any, assets: Assets) -> tuple[NameServerConfig, ...]:
    if not isinstance(raw, list):
        raise Invalid(f"expected a list, got {show(raw)}")
    found = []
    for index, item in enumerate(raw):
        here = node.at(index)
        server = (_address(here, item) if isinstance(item, str)
                  else _server(here, item, assets))
        if server is not None:
            found.append(server)
    return tuple(found)


def _address(node: Node, text: str, port: int = 53) -> NameServerConfig | None:
    """A server given by its address alone."""
    address = text.strip()
    if address == "localhost":
        return NameServerConfig("localhost", port)
    scheme = address.partition("://")[0].lower() if "://" in address else ""
    if scheme in ("https", "https+local"):
        parts = urllib.parse.urlsplit(address)
        try:
            parts.port  # noqa: B018 (it checks the port)
        except ValueError:
            parts = parts._replace(netloc="")
        if not parts.hostname:
            node.report(f"{show(text)} is not a DNS-over-HTTPS URL (https://host/path)")
            return None
        return NameServerConfig(address, port)
    if scheme == "quic+local":
        node.report(f"DNS over QUIC ({show(text)}) is not supported by revproxy: use a "
                    "\"https://\" or UDP server")
        return None
    if scheme:
        node.report(f"unknown DNS server scheme {show(scheme)} (V2Ray 4.34 speaks UDP, "
                    "\"https://\", \"https+local://\" and \"quic+local://\")")
        return None
    if not address:
        node.report("empty server address")
        return None
    try:
        host = f.host(address)
    except Invalid as exc:
        node.report(str(exc))
        return None
    return NameServerConfig(host, port)


def _server(node: Node, raw: Any, assets: Assets) -> NameServerConfig | None:
    o = Obj(node, raw, SERVER, warned=SERVER_WARNED)
    address = o.get("address", f.string, "", required=True)
    port = o.get("port", f.integer(0, 65535), 0)
    domains = o.nested("domains", lambda n, v: _domain_list(n, v, assets), ())
    expect = o.nested("expectIps", lambda n, v: _ip_list(n, v, assets), ())
    client_ip = o.get("clientIp", _ip, None)
    if not o.ok or not address:
        return None
    server = _address(node.at("address"), address, port or 53)
    if server is None:
        return None
    return NameServerConfig(server.address, port or 53, domains, expect, client_ip)


def _domain_list(node: Node, raw: Any, assets: Assets) -> tuple[str, ...]:
    """V2Ray's []string of domain conditions (one string is not a list here)."""
    if not isinstance(raw, list):
        raise Invalid(f"expected a list of strings, got {show(raw)}")
    found: list[str] = []
    for index, item in enumerate(raw):
        found += domain_condition(node.at(index), f.string(item), assets)
    return tuple(found)


def _ip_list(node: Node, raw: Any, assets: Assets) -> tuple[str, ...]:
    found: list[str] = []
    for index, item in enumerate(f.string_list(raw)):
        found += ip_condition(node.at(index), item, assets)
    return tuple(found)


def domain_condition(node: Node, text: str, assets: Assets) -> list[str]:
    """A routing-style domain condition, a ``geosite:``/``ext:`` list expanded; reports
    what is wrong and gives [] then."""
    try:
        expanded = expand_domain(text, assets)
    except GeoDataError as exc:
        what = "geosite" if text.startswith("geosite:") else "external geosite"
        node.report(f"{show(text)}: failed to load {what}: {exc}")
        return []
    patterns = [text] if expanded is None else expanded
    for pattern in patterns:
        try:
            parse_domain(pattern)
        except ValueError as exc:
            node.report(f"{show(pattern)}{'' if expanded is None else f' (of {text})'}: {exc}")
            return []
    return patterns


def ip_condition(node: Node, text: str, assets: Assets) -> list[str]:
    """An IP condition, a ``geoip:``/``ext:`` list expanded; reports what is wrong."""
    try:
        expanded = expand_ip(text, assets)
    except GeoDataError as exc:
        node.report(f"{show(text)}: failed to load geoip: {exc}")
        return []
    if expanded is not None:
        return expanded
    try:
        parse_cidr(text)
    except ValueError as exc:
        node.report(f"{show(text)}: {exc}")
        return []
    return [text]


_HOST_FORMS = ("domain:", "full:", "keyword:", "regexp:", "dotless:")


def _hosts(node: Node, raw: Any, assets: Assets) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise Invalid(f"expected an object, got {show(raw)}")
    found: list[tuple[str, str]] = []
    for key in sorted(raw):  # V2Ray's order
        here = node.at(str(key))
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            here.report(f"expected an IP address or a domain, got {show(value)}")
            continue
        try:
            address = f.host(value.strip())
        except Invalid as exc:
            here.report(str(exc))
            continue
        if key.startswith(("geosite:", "ext:")):
            patterns = domain_condition(here, key, assets)
        elif key.startswith(_HOST_FORMS):
            if not key.partition(":")[2] and not key.startswith("dotless:"):
                here.report(f"empty {key.partition(':')[0]} rule {show(key)}")
                continue
            patterns = domain_condition(here, key, assets)
        else:
            patterns = domain_condition(here, f"full:{key}", assets)
        found += [(pattern, address) for pattern in patterns]
    return tuple(found)
