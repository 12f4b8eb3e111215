"""Readers for JSON-shaped values: ``Obj`` reads one object and reports unknown keys; the
scalar parsers (ports, UUIDs, string lists...) raise ``Invalid`` with a message for the path."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from revproxy.config.errors import Invalid, Node, show

T = TypeVar("T")
D = TypeVar("D")

NOT_SUPPORTED = "not supported by revproxy"


EMPTY_VALUES: tuple[Any, ...] = ({}, [], "", False)


class Obj:
    """One JSON object being read, as Go's encoding/json reads it for V2Ray: keys match
    case-insensitively, the last of repeated keys wins, null means absent, and keys it does
    not know are ignored. ``ok`` is false when ``raw`` is not an object.

    The keys: ``known`` are read by the caller (``get``/``nested``); ``ignored`` are accepted
    unread (they have no effect here); ``warned`` (key -> reason) are accepted unread with a
    warning giving the reason, unless their value is empty ({}, [], "", false);
    ``unsupported`` (keys, or key -> reason) are refused unless their value is empty. Unknown
    keys and repeated keys get a warning; with ``strict`` (revproxy's own objects, which
    V2Ray never reads) an unknown key is a problem."""

    def __init__(self, node: Node, raw: Any, known: Collection[str], *,
                 ignored: Collection[str] = (), unsupported: Collection[str] = (),
                 warned: Mapping[str, str] | None = None, strict: bool = False) -> None:
        self.node = node
        self._values: dict[str, Any] = {}
        self.ok = isinstance(raw, Mapping)
        if not self.ok:
            node.report(f"expected an object, got {show(raw)}")
            return
        warned = warned or {}
        for key in getattr(raw, "duplicates", ()):
            node.warn(f"duplicate key {show(key)}: the last one is used (as V2Ray does)")
        names = {name.lower(): name for name in (*known, *ignored, *unsupported, *warned)}
        spelled: dict[str, Any] = {}
        for key, value in raw.items():
            name = names.get(key.lower()) if isinstance(key, str) else None
            if name is None:
                hint = suggest(key, names.values())
                if strict:
                    node.report(f"unknown key {show(key)}{hint}")
                else:
                    node.warn(f"unknown key {show(key)} is ignored (as V2Ray does){hint}")
                continue
            if name in spelled:
                node.warn(f"duplicate key {show(key)} (also {show(spelled[name])}): the last "
                          "one is used (as V2Ray does)")
                self._values.pop(name, None)
            spelled[name] = key
            if value is None or name in ignored:
                continue
            if name in unsupported:
                if value not in EMPTY_VALUES:
                    reason = unsupported.get(name) if isinstance(unsupported, Mapping) else None
                    node.at(name).report(reason or NOT_SUPPORTED)
            elif name in warned:
                if value not in EMPTY_VALUES:
                    node.at(name).warn(warned[name])
            else:
                self._values[name] = value

    def raw(self, key: str) -> Any:
        """The unparsed value of a ``known`` key (None when absent)."""
        return self._values.get(key)

    def has(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str, parse: Callable[[Any], T], default: D, *,
            required: bool = False) -> T | D:
        """Parse the value of ``key`` (a ``known`` key), or give ``default`` if absent/invalid."""
        if key not in self._values:
            if required and self.ok:
                self.node.report(f"missing required key {show(key)}")
            return default
        try:
            return parse(self._values[key])
        except Invalid as exc:
            self.node.at(key).report(str(exc))
            return default

    def nested(self, key: str, build: Callable[[Node, Any], T], default: D, *,
               required: bool = False) -> T | D:
        """Like ``get`` for a structured value: ``build`` reports its own problems."""
        return self.get(key, lambda value: build(self.node.at(key), value), default,
                        required=required)


def suggest(key: Any, names: Collection[str]) -> str:
    """A " (did you mean ...?)" hint for a misspelt name, or ""."""
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, sorted(names), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def items(node: Node, raw: Any, build: Callable[[Node, Any], T], *,
          nonempty: bool = False) -> tuple[T, ...]:
    """Each element of a JSON list, built at its own index."""
    if not isinstance(raw, list):
        raise Invalid(f"expected a list, got {show(raw)}")
    if nonempty and not raw:
        raise Invalid("must not be empty")
    return tuple(build(node.at(index), item) for index, item in enumerate(raw))


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {show(value)}")
    return value


def nonempty_string(value: Any) -> str:
    if string(value) == "":
        raise Invalid("must not be empty")
    return value


def tag(value: Any) -> str | None:
    """A tag; the empty string means no tag, as in V2Ray."""
    return string(value) or None


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {show(value)}")
    return value


def integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {show(value)}")
        if value < low or (high is not None and value > high):
            limit = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise Invalid(f"must be {limit}, got {show(value)}")
        return value

    return parse


def number(low: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected a number, got {show(value)}")
        if not low <= value < 1e12:
            raise Invalid(f"must be at least {low:g} and finite, got {show(value)}")
        return float(value)

    return parse


def choice(*options: str) -> Callable[[Any], str]:
    """One of ``options``, compared case-insensitively; gives the option as listed."""

    def parse(value: Any) -> str:
        for option in options:
            if string(value).lower() == option.lower():
                return option
        listed = ", ".join(f'"{option}"' for option in options)
        raise Invalid(f"{show(value)} is not one of {listed}")

    return parse


def port(value: Any, *, low: int = 1) -> int:
    """A port: an integer, a decimal string, or "env:NAME" (V2Ray reads the variable)."""
    if isinstance(value, str):
        return _port_text(value, low, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected a port number, got {show(value)}")
    if not low <= value <= 65535:
        raise Invalid(f"port {show(value)} is out of range ({low}-65535)")
    return value


def _port_text(text: str, low: int, original: Any) -> int:
    if text.startswith("env:"):
        text = os.environ.get(text[4:], "")
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"expected a port number, got {show(original)}")
    digits = text.lstrip("0") or "0"
    if len(digits) > 5:
        raise Invalid(f"port {show(original)} is out of range ({low}-65535)")
    return port(int(digits), low=low)


def single_port(value: Any) -> int:
    """A listening port: V2Ray also allows a range "from-to" here, revproxy does not."""
    if isinstance(value, str) and "-" in value.lstrip("-"):
        first, _, last = value.partition("-")
        if first != last:
            raise Invalid(f"port ranges are {NOT_SUPPORTED}, got {show(value)}")
        value = first
    return port(value)


def port_ranges(value: Any) -> tuple[tuple[int, int], ...]:
    """V2Ray's PortList: 80, "80", "1000-2000" or "80,443,1000-2000"; 0 is a valid port in a
    string. As in V2Ray, the number 0 and a string with no port give no range at all (a rule
    with such a condition never matches)."""
    if not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            return ()
        return ((port(value, low=0),) * 2,)
    ranges = []
    for part in (part.strip() for part in value.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        low = _port_text(first.strip(), 0, value)
        high = _port_text(last.strip(), 0, value) if dash else low
        if low > high:
            raise Invalid(f"port range {show(part)} is reversed")
        ranges.append((low, high))
    return tuple(ranges)


def string_list(value: Any) -> tuple[str, ...]:
    """V2Ray's StringList: a list of strings, or one string of comma-separated items (split
    as V2Ray splits it: spaces around the commas stay in the items)."""
    if isinstance(value, str):
        return tuple(value.split(","))
    if not isinstance(value, list):
        raise Invalid(f"expected a list of strings, got {show(value)}")
    for item in value:
        if not isinstance(item, str):
            raise Invalid(f"expected a list of strings, got {show(item)} in it")
    return tuple(value)


def networks(value: Any) -> tuple[str, ...]:
    """A network list ("tcp", "udp", "tcp,udp" or a list), lowercased, without repeats."""
    found: list[str] = []
    for item in string_list(value):
        name = item.strip().lower()
        if name not in ("tcp", "udp"):
            raise Invalid(f'unknown network {show(item)} (expected "tcp" or "udp")')
        if name not in found:
            found.append(name)
    if not found:
        raise Invalid("no network given")
    return tuple(found)


def raw_get(raw: Any, key: str) -> Any:
    """The value of ``key`` in a raw object as V2Ray reads it (case-insensitive, the last
    spelling wins), or None; for looking at parts another parser reads."""
    found = None
    if isinstance(raw, Mapping):
        for name, value in raw.items():
            if isinstance(name, str) and name.lower() == key.lower():
                found = value
    return found


_UUID = re.compile(r"[0-9a-fA-F]{8}(-?)[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1"
                   r"[0-9a-fA-F]{12}")


def uuid(value: Any) -> str:
    """A UUID with or without dashes; gives the canonical lowercase dashed text."""
    if not _UUID.fullmatch(string(value)):
        raise Invalid(f"{show(value)} is not a UUID")
    hexdigits = value.replace("-", "").lower()
    return "-".join((hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20],
                     hexdigits[20:]))


def ip_address(value: Any) -> str:
    """An IP address to listen on (V2Ray also accepts "localhost")."""
    if string(value) == "localhost":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(f"{show(value)} is not an IP address") from None


def host(value: Any) -> str:
    """A domain name or IP address; IPv6 may be written in brackets."""
    text = string(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or any(c.isspace() or c in "/[]" for c in text):
        raise Invalid(f"{show(value)} is not a host name or IP address")
    return text


def server_address(node: Node, value: Any) -> str:
    """A server's address. V2Ray takes any text that is not an IP address for a domain name,
    so one that cannot be a host name (a template's "{{ host }}", "") is only warned about."""
    try:
        return host(value)
    except Invalid as exc:
        if not isinstance(value, str):
            raise
        node.warn(f"{exc}: V2Ray takes it for a domain name all the same, and so does "
                  "revproxy (connections to this server fail)")
        return value


def host_port(value: Any) -> tuple[str, int]:
    """Go's net.SplitHostPort: "host:port" or "[v6]:port"; the host may be empty."""
    text = string(value)
    if text.startswith("["):
        end = text.find("]")
        hostname, rest = text[1:end], text[end + 1:]
        ok = end > 0 and rest.startswith(":")
    else:
        hostname, _, rest = text.rpartition(":")
        rest = ":" + rest
        ok = ":" in text and ":" not in hostname
    if not ok or not rest[1:]:
        raise Invalid(f'{show(value)} is not "host:port"')
    return (host(hostname) if hostname else "", _port_text(rest[1:], 0, value))
