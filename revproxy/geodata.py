"""V2Ray's ``.dat`` domain and IP lists (``geosite.dat``, ``geoip.dat``, and any file an
``ext:FILE:LIST`` condition names): where they are found and what they hold.

The files are protobuf messages (V2Ray's app/router/config.proto)::

    GeoSiteList { repeated GeoSite entry = 1; }
    GeoSite     { string country_code = 1; repeated Domain domain = 2; }
    Domain      { Type type = 1; string value = 2; repeated Attribute attribute = 3; }
                  (Type: Plain = 0, Regex = 1, Domain = 2, Full = 3)
    Attribute   { string key = 1; oneof { bool bool_value = 2; int64 int_value = 3; } }
    GeoIPList   { repeated GeoIP entry = 1; }
    GeoIP       { string country_code = 1; repeated CIDR cidr = 2; }
    CIDR        { bytes ip = 1; uint32 prefix = 2; }

The decoding is sans-IO (bytes in, lists out) and reads only the entry asked for: the
others are skipped by their length. A list is named case-insensitively, as V2Ray looks it
up. Domains come out as routing's condition text ("domain:x", "full:x", "keyword:x",
"regexp:x"), networks as CIDR text, so routing and the DNS client take them like any other
condition. ``encode_sites``/``encode_ips`` write such files (for tests and tools).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

ASSET_ENV = ("v2ray.location.asset", "V2RAY_LOCATION_ASSET")
SYSTEM_DIRS = ("/usr/local/share/v2ray", "/usr/share/v2ray")

_DOMAIN_KINDS = {0: "keyword", 1: "regexp", 2: "domain", 3: "full"}
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class GeoDataError(ValueError):
    """A file that cannot be read or decoded, or a list it does not hold; the message is
    one line, V2Ray's words where it has some."""


# -- protobuf, the little of it these files use

def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise GeoDataError("truncated or invalid varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start of bytes, end of bytes) of each field of
    the message at data[start:end]; a varint's value is in the third place."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            length, pos = _varint(data, pos, end)
            if length > end - pos:
                raise GeoDataError("truncated field")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise GeoDataError("truncated field")
        else:
            raise GeoDataError(f"unknown wire type {wire}")


def _text(data: bytes, start: int, end: int) -> str:
    try:
        return data[start:end].decode()
    except UnicodeDecodeError:
        raise GeoDataError("a string is not UTF-8") from None


def _entry(data: bytes, code: str) -> tuple[int, int] | None:
    """The (start, end) of the entry whose country_code is ``code`` (any case)."""
    wanted = code.lower()
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number != 1 or wire != _LEN:
            continue
        for field, kind, value, stop in _fields(data, start, end):
            if field == 1 and kind == _LEN:
                if _text(data, value, stop).lower() == wanted:
                    return start, end
                break
    return None


def site_codes(data: bytes) -> list[str]:
    """The country codes (list names) of a GeoSiteList or GeoIPList, in order."""
    codes = []
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number == 1 and wire == _LEN:
            for field, kind, value, stop in _fields(data, start, end):
                if field == 1 and kind == _LEN:
                    codes.append(_text(data, value, stop))
                    break
    return codes


def decode_sites(data: bytes, code: str, attributes: Sequence[str] = ()
                 ) -> list[str] | None:
    """The domains of GeoSite ``code`` as routing conditions, only those having every one
    of ``attributes`` (names, any case); None if the file has no such list."""
    found = _entry(data, code)
    if found is None:
        return None
    wanted = [name.lower() for name in attributes]
    domains = []
    for number, wire, start, end in _fields(data, *found):
        if number != 2 or wire != _LEN:
            continue
        kind, value, keys = 0, "", []
        for field, fkind, fvalue, stop in _fields(data, start, end):
            if field == 1 and fkind == _VARINT:
                kind = fvalue
            elif field == 2 and fkind == _LEN:
                value = _text(data, fvalue, stop)
            elif field == 3 and fkind == _LEN:
                for afield, akind, avalue, astop in _fields(data, fvalue, stop):
                    if afield == 1 and akind == _LEN:
                        keys.append(_text(data, avalue, astop).lower())
        if kind not in _DOMAIN_KINDS:
            raise GeoDataError(f"unknown domain type {kind} in list {code}")
        if all(name in keys for name in wanted):
            domains.append(f"{_DOMAIN_KINDS[kind]}:{value}")
    return domains


def decode_ips(data: bytes, code: str) -> list[str] | None:
    """The networks of GeoIP ``code`` as CIDR text; None if the file has no such list."""
    found = _entry(data, code)
    if found is None:
        return None
    networks = []
    for number, wire, start, end in _fields(data, *found):
        if number != 2 or wire != _LEN:
            continue
        ip, prefix = b"", 0
        for field, kind, value, stop in _fields(data, start, end):
            if field == 1 and kind == _LEN:
                ip = data[value:stop]
            elif field == 2 and kind == _VARINT:
                prefix = value
        if len(ip) not in (4, 16) or prefix > len(ip) * 8:
            raise GeoDataError(f"invalid network in list {code}")
        address = ipaddress.ip_address(ip)
        networks.append(str(ipaddress.ip_network((address, prefix), strict=False)))
    return networks


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + _encode_varint(len(value)) + value


def encode_sites(lists: Mapping[str, Sequence[tuple[str, Sequence[str]]]]) -> bytes:
    """A GeoSiteList: list name -> (condition text such as "domain:x", attribute names)."""
    kinds = {name: number for number, name in _DOMAIN_KINDS.items()}
    out = b""
    for code, domains in lists.items():
        entry = _bytes_field(1, code.encode())
        for text, attributes in domains:
            kind, _, value = text.partition(":")
            domain = _key(1, _VARINT) + _encode_varint(kinds[kind]) + \
                _bytes_field(2, value.encode())
            for name in attributes:
                domain += _bytes_field(3, _bytes_field(1, name.encode())
                                       + _key(2, _VARINT) + b"\x01")
            entry += _bytes_field(2, domain)
        out += _bytes_field(1, entry)
    return out


def encode_ips(lists: Mapping[str, Sequence[str]]) -> bytes:
    """A GeoIPList: list name -> CIDR texts."""
    out = b""
    for code, networks in lists.items():
        entry = _bytes_field(1, code.encode())
        for text in networks:
            network = ipaddress.ip_network(text, strict=False)
            entry += _bytes_field(2, _bytes_field(1, network.network_address.packed)
                                  + _key(2, _VARINT) + _encode_varint(network.prefixlen))
        out += _bytes_field(1, entry)
    return out


# -- where the files are, and reading them

def asset_dirs(config_dirs: Sequence[str] = (), environ: Mapping[str, str] | None = None
               ) -> tuple[str, ...]:
    """Where ``.dat`` files are looked for, first first: the directory V2Ray's
    ``v2ray.location.asset`` / ``V2RAY_LOCATION_ASSET`` names, else the configuration
    files' directories and the program's; then /usr/local/share/v2ray and /usr/share/v2ray
    (as V2Ray 4.34 looks, the configuration's directory added)."""
    env = os.environ if environ is None else environ
    named = next((env[name] for name in ASSET_ENV if env.get(name)), None)
    if named is not None:
        first: list[str] = [named]
    else:
        first = [*config_dirs, os.path.dirname(os.path.abspath(sys.argv[0] or "."))]
    found: list[str] = []
    for directory in (*first, *SYSTEM_DIRS):
        if directory not in found:
            found.append(directory)
    return tuple(found)


class Assets:
    """Reads the lists of ``.dat`` files found in ``dirs``; a file is read once (while it
    does not change), and each list decoded once."""

    __slots__ = ("dirs", "_files", "_lists")

    def __init__(self, dirs: Sequence[str]) -> None:
        self.dirs = tuple(dirs)
        self._files: dict[str, tuple[tuple[int, int], bytes]] = {}
        self._lists: dict[tuple[str, str, str, tuple[str, ...]], list[str]] = {}

    def path(self, name: str) -> str:
        """The file ``name`` as found in the asset directories; raises GeoDataError."""
        if os.sep in name or name in ("", ".", ".."):
            candidates = [name]
        else:
            candidates = [os.path.join(directory, name) for directory in self.dirs]
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        if len(candidates) == 1:
            raise GeoDataError(f"failed to open file: {name}")
        raise GeoDataError(f"failed to open file: {name} (put it next to the configuration, "
                           "in /usr/share/v2ray, or where V2RAY_LOCATION_ASSET names)")

    def _data(self, name: str) -> bytes:
        path = self.path(name)
        try:
            status = os.stat(path)
            stamp = (status.st_mtime_ns, status.st_size)
            cached = self._files.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise GeoDataError(f"failed to open file: {name}: {exc.strerror}") from None
        self._files[path] = (stamp, data)
        return data

    def sites(self, name: str, code: str) -> list[str]:
        """Domains of list ``code`` (``LIST@attr@attr`` selects by attributes, as V2Ray's
        geosite conditions do) of file ``name``."""
        code, *attrs = code.split("@")
        code = code.strip()
        if not code:
            raise GeoDataError("empty list name")
        attributes = tuple(a.strip().lower() for a in attrs if a.strip())
        return self._decoded("site", name, code, attributes)

    def ips(self, name: str, code: str) -> list[str]:
        """Networks of list ``code`` of file ``name``."""
        if not code:
            raise GeoDataError("empty list name")
        return self._decoded("ip", name, code, ())

    def _decoded(self, kind: str, name: str, code: str, attributes: tuple[str, ...]
                 ) -> list[str]:
        data = self._data(name)
        key = (kind, self.path(name), code.lower(), attributes)
        cached = self._lists.get(key)
        if cached is not None:
            return cached
        try:
            found = (decode_sites(data, code, attributes) if kind == "site"
                     else decode_ips(data, code))
        except GeoDataError as exc:
            raise GeoDataError(f"{name}: {exc}") from None
        if found is None:
            raise GeoDataError(f"list not found in {name}: {code}")
        self._lists[key] = found
        return found


def expand_domain(text: str, assets: Assets) -> list[str] | None:
    """The domains a ``geosite:LIST`` or ``ext:FILE:LIST`` (``ext-domain:``) condition
    stands for; None for any other condition. Raises GeoDataError."""
    if text.startswith("geosite:"):
        return assets.sites("geosite.dat", text[len("geosite:"):])
    for prefix in ("ext:", "ext-domain:"):
        if text.startswith(prefix):
            parts = text[len(prefix):].split(":")
            if len(parts) != 2:
                raise GeoDataError(f"invalid external resource: {text}")
            return assets.sites(parts[0], parts[1])
    return None


def expand_ip(text: str, assets: Assets) -> list[str] | None:
    """The networks a ``geoip:LIST`` or ``ext:FILE:LIST`` (``ext-ip:``) condition stands
    for; None for any other condition. Raises GeoDataError."""
    if text.startswith("geoip:"):
        return assets.ips("geoip.dat", text[len("geoip:"):])
    for prefix in ("ext:", "ext-ip:"):
        if text.startswith(prefix):
            parts = text[len(prefix):].split(":")
            if len(parts) != 2 or not all(parts):
                raise GeoDataError(f"invalid external resource: {text}")
            return assets.ips(parts[0], parts[1])
    return None
