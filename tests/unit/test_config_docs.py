"""docs/configuration.md cannot drift from the loader: each of its key tables must list
exactly the keys the loader reads for that object, with the status the loader gives them.

The loader's own key lists are taken from the ``Obj`` objects it builds while loading
``FULL``, a configuration that reaches every object kind: a key it reads is "honoured",
"depends" (accepted, warned about or refused by value) or "warning" (read, then warned
about); a key it accepts unread is "ignored"; one it warns about unread is "warning"; one it
refuses is "refused"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from revproxy.config import fields, parse_config
from tests.unit.test_config import UUID

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
STATUSES = ("honoured", "depends", "warning", "ignored", "refused")

USER = {"id": UUID, "alterId": 0, "level": 0, "email": "a@b", "security": "auto"}
FULL: dict[str, Any] = {
    "$schema": "x",
    "log": {"loglevel": "warning"},
    "server": {"workers": 2},
    "api": {"tag": "api", "services": ["StatsService"]},
    "stats": {},
    "dns": {"servers": ["localhost", {"address": "127.0.0.1", "port": 53}]},
    "policy": {"levels": {"0": {"handshake": 4}}, "system": {"statsInboundUplink": False}},
    "transport": {"tcpSettings": {}},
    "inbounds": [
        {"tag": "in", "port": 1, "protocol": "dokodemo-door", "listen": "127.0.0.1",
         "settings": {"address": "127.0.0.1", "port": 2, "network": "tcp"},
         "sniffing": {"enabled": False}, "allocate": {"strategy": "always"},
         "streamSettings": {"network": "tcp", "tcpSettings": {"header": {
             "type": "http", "request": {"path": ["/"]}, "response": {"status": "200"}}},
             "sockopt": {"mark": 0}}},
        {"tag": "vm", "port": 3, "protocol": "vmess",
         "settings": {"clients": [USER], "default": {"level": 0}},
         "streamSettings": {"network": "ws", "wsSettings": {"path": "/"}}},
        {"port": 5, "protocol": "vless", "settings": {
            "clients": [{"id": UUID}], "decryption": "none", "fallbacks": [{"dest": 80}]}},
        {"port": 6, "protocol": "shadowsocks", "settings": {"method": "none", "password": "p"}},
        {"port": 7, "protocol": "socks", "settings": {"accounts": [{"user": "u", "pass": "p"}]}},
        {"port": 8, "protocol": "http", "settings": {"accounts": [{"user": "u", "pass": "p"}]}},
    ],
    "outbounds": [
        {"tag": "direct", "protocol": "freedom", "settings": {}},
        {"tag": "block", "protocol": "blackhole", "settings": {"response": {"type": "none"}}},
        {"tag": "up", "protocol": "vmess", "mux": {"enabled": False},
         "settings": {"vnext": [{"address": "a.example", "port": 4, "users": [USER]}]},
         "streamSettings": {"security": "tls", "tlsSettings": {"serverName": "a.example"},
                            "tcpSettings": {"header": {"type": "http", "request": {},
                                                       "response": {}}}}},
        {"protocol": "vless", "settings": {"vnext": [{"address": "a.example", "port": 4, "users": [
            {"id": UUID, "encryption": "none"}]}]}},
        {"protocol": "shadowsocks", "settings": {"servers": [
            {"address": "a.example", "port": 4, "method": "aes-128-gcm", "password": "p"}]}},
        {"protocol": "socks", "settings": {"servers": [
            {"address": "a.example", "port": 4, "users": [{"user": "u", "pass": "p"}]}]}},
        {"protocol": "http", "settings": {"servers": [
            {"address": "a.example", "port": 4, "users": [{"user": "u", "pass": "p"}]}]}},
    ],
    "routing": {"domainStrategy": "AsIs", "rules": [
        {"type": "field", "inboundTag": ["in"], "outboundTag": "direct"},
        {"type": "field", "inboundTag": ["bridge"], "outboundTag": "up"}],
        "settings": {"rules": []}, "balancers": [{"tag": "b", "selector": ["direct"]}]},
    "reverse": {"bridges": [{"tag": "bridge", "domain": "r.example"}],
                "portals": [{"tag": "portal", "domain": "p.example"}]},
}


def object_name(path: str) -> str:
    """The doc's name for the object at ``path`` of FULL: list indices become "[]", policy
    level numbers "<level>", protocol settings say their protocol, and inbounds' and
    outbounds' streamSettings (one parser) are one "streamSettings"."""
    match = re.match(r"(inbounds|outbounds)\[(\d+)\]\.settings", path)
    if match:
        protocol = FULL[match.group(1)][int(match.group(2))]["protocol"]
        path = f"{path[:match.end()]} ({protocol}){path[match.end():]}"
    path = re.sub(r"\[\d+\]", "[]", path)
    path = re.sub(r"^(inbounds|outbounds)\[\]\.streamSettings", "streamSettings", path)
    path = re.sub(r"^policy\.levels\.\d+", "policy.levels.<level>", path)
    return path or "(top level)"


def loader_tables(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, set[str]]]:
    """object name -> key -> the statuses the loader allows for it."""
    found: dict[str, dict[str, set[str]]] = {}
    original = fields.Obj.__init__

    def recording(self: fields.Obj, node: Any, raw: Any, known: Any, **kinds: Any) -> None:
        table = found.setdefault(object_name(node.path), {})
        for key in known:
            table[key] = {"honoured", "depends", "warning"}
        for key in kinds.get("ignored", ()):
            table[key] = {"ignored"}
        for key in kinds.get("warned") or {}:
            table[key] = {"warning"}
        for key in kinds.get("unsupported", ()):
            table[key] = {"refused"}
        original(self, node, raw, known, **kinds)

    monkeypatch.setattr(fields.Obj, "__init__", recording)
    parse_config(FULL, "full.json")
    return found


def doc_tables() -> Iterator[tuple[str, str, str]]:
    """(object name, key, status) for each row of each table under a "### `name`" heading."""
    name = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"### `([^`]+)`", line)
        if heading:
            name = heading.group(1)
            continue
        row = re.fullmatch(r"\| `([^`]+)` \| (\w+) \|.*\|", line)
        if row and name is not None:
            yield name, row.group(1), row.group(2)


def test_the_full_config_loads() -> None:
    assert parse_config(FULL, "full.json").inbounds


def test_every_documented_key_has_the_loaders_status(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = loader_tables(monkeypatch)
    documented: dict[str, dict[str, str]] = {}
    for name, key, status in doc_tables():
        assert status in STATUSES, f"{name}.{key}: unknown status {status!r}"
        documented.setdefault(name, {})[key] = status
    problems = []
    for name, table in sorted(loader.items()):
        doc = documented.get(name)
        if doc is None:
            problems.append(f"docs/configuration.md has no table for `{name}` "
                            f"(keys {sorted(table)})")
            continue
        for key in sorted(set(table) - set(doc)):
            problems.append(f"`{name}`: `{key}` is read by the loader but not documented")
        for key in sorted(set(doc) - set(table)):
            problems.append(f"`{name}`: `{key}` is documented but the loader does not know it")
        for key in sorted(set(table) & set(doc)):
            if doc[key] not in table[key]:
                problems.append(f"`{name}`: `{key}` is documented as {doc[key]} but the loader "
                                f"makes it {' or '.join(sorted(table[key]))}")
    for name in sorted(set(documented) - set(loader)):
        problems.append(f"docs/configuration.md documents `{name}`, which the loader does not "
                        "read (or FULL does not reach)")
    assert problems == [], "\n".join(problems)


def test_the_statuses_are_explained() -> None:
    text = DOC.read_text()
    for status in STATUSES:
        assert f"**{status}**" in text
