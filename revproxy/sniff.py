"""Sniffing: what protocol a connection's first bytes speak and which domain they name, as
V2Ray 4.34 reads them (app/dispatcher/sniffer.go and common/protocol/{http,tls,bittorrent}).

Sans-IO: ``sniff(data)`` looks at the bytes received so far and answers with a ``Sniffed``
(protocol "http1" with the ``Host`` header's host, "tls" with the ClientHello's server name,
or "bittorrent" with no domain), ``MORE`` when the bytes are a plausible beginning that says
nothing yet, or ``None`` when they are none of these. The dispatcher does the reading
(dispatcher.py) and decides what the result changes: the protocol is what routing's
"protocol" rules see; the domain, for the protocols the inbound's ``destOverride`` names,
becomes the session's destination.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Sniffed:
    """``protocol``: "http1", "tls" or "bittorrent"; ``domain``: the name found (an IP
    address text for an HTTP Host that is one), "" for bittorrent."""

    protocol: str
    domain: str


class _More:
    """The type of ``MORE``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MORE"


MORE: Final = _More()
"""``sniff``'s answer when more bytes could decide."""

Result = Sniffed | _More | None


class _NoClue(Exception):
    """This sniffer needs more bytes."""


class _NotThis(Exception):
    """Not this sniffer's protocol."""


# -- HTTP/1 (common/protocol/http/sniff.go)

_METHODS = (b"get", b"post", b"head", b"put", b"delete", b"options", b"connect")


def _http(data: bytes) -> Sniffed:
    # V2Ray tries the methods in this order and gives up waiting at the first one longer
    # than what it has, so "PO" waits for more but so does "XYZW" (for "delete").
    for method in _METHODS:
        if len(data) < len(method):
            raise _NoClue
        if data[:len(method)].lower() == method:
            break
    else:
        raise _NotThis
    host = ""
    for line in data.split(b"\n")[1:]:
        if not line:
            break  # (a CRLF line ending leaves "\r": V2Ray reads on, and so does this)
        key, colon, value = line.partition(b":")
        if not colon or key.lower() != b"host":
            continue
        host = _http_host(value.strip().decode("latin-1").lower())
    if not host:
        raise _NoClue
    return Sniffed("http1", host)


def _http_host(raw: str) -> str:
    """The host of a ``Host`` value ("name", "name:port", "[v6]", "[v6]:port"), as Go's
    SplitHostPort and V2Ray's ParseHost read it; raises _NotThis for what they refuse."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise _NotThis
        host, rest = raw[1:end], raw[end + 1:]
        if rest and not rest.startswith(":") or ":" in rest[1:]:
            raise _NotThis
        port = rest[1:] if rest else ""
        if not rest:  # "[v6]" alone: Go says "missing port", so V2Ray keeps it whole
            return _address(raw)
    else:
        if raw.count(":") > 1:
            raise _NotThis  # Go: "too many colons"
        host, colon, port = raw.partition(":")
        if not colon:
            return _address(raw)
    if port and not _go_port(port):
        raise _NotThis
    return _address(host)


def _go_port(text: str) -> bool:
    """Whether Go's strconv.ParseUint(text, 0, 16) takes it (prefixes 0x, 0o, 0b, 0)."""
    try:
        value = int(text, 0) if not (len(text) > 1 and text[0] == "0" and text[1].isdigit()) \
            else int(text, 8)
    except ValueError:
        return False
    return 0 <= value <= 0xFFFF and text.isalnum()  # no sign, space or underscore


def _address(text: str) -> str:
    """V2Ray's ParseAddress: brackets and (around odd characters) spaces go; an IP is
    given in its usual text (an IPv4-mapped IPv6 address as IPv4), a name as it is."""
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if text and not (text[0].isalnum() and text[-1].isalnum()):
        text = text.strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# -- TLS (common/protocol/tls/sniff.go)

def _tls(data: bytes) -> Sniffed:
    if len(data) < 5:
        raise _NoClue
    if data[0] != 0x16 or data[1] != 3:  # a handshake record, TLS major version 3
        raise _NotThis
    length = int.from_bytes(data[3:5], "big")
    if 5 + length > len(data):
        raise _NoClue
    return Sniffed("tls", _client_hello(data[5:5 + length]))


def _client_hello(data: bytes) -> str:
    """The server name of a ClientHello (the whole record's payload), as V2Ray reads it:
    its type byte is not checked, a truncated message is "no clue"."""
    if len(data) < 42:
        raise _NoClue
    session_id = data[38]
    if session_id > 32 or len(data) < 39 + session_id:
        raise _NoClue
    data = data[39 + session_id:]
    if len(data) < 2:
        raise _NoClue
    suites = int.from_bytes(data[:2], "big")
    if suites % 2 or len(data) < 2 + suites:
        raise _NotThis
    data = data[2 + suites:]
    if len(data) < 1:
        raise _NoClue
    compressions = data[0]
    if len(data) < 1 + compressions:
        raise _NoClue
    data = data[1 + compressions:]
    if len(data) < 2:
        raise _NotThis
    if int.from_bytes(data[:2], "big") != len(data) - 2:
        raise _NotThis
    data = data[2:]
    while data:
        if len(data) < 4:
            raise _NotThis
        kind = int.from_bytes(data[:2], "big")
        length = int.from_bytes(data[2:4], "big")
        data = data[4:]
        if len(data) < length:
            raise _NotThis
        if kind == 0:  # server_name
            name = _server_name(data[:length])
            if name is not None:
                return name
        data = data[length:]
    raise _NotThis


def _server_name(ext: bytes) -> str | None:
    """The host_name of a server_name extension, or None if it has none."""
    if len(ext) < 2 or int.from_bytes(ext[:2], "big") != len(ext) - 2:
        raise _NotThis
    ext = ext[2:]
    while ext:
        if len(ext) < 3:
            raise _NotThis
        kind, length = ext[0], int.from_bytes(ext[1:3], "big")
        ext = ext[3:]
        if len(ext) < length:
            raise _NotThis
        if kind == 0:
            name = ext[:length].decode("latin-1")
            if name.endswith("."):  # RFC 6066: no trailing dot
                raise _NotThis
            return name
        ext = ext[length:]
    return None


# -- BitTorrent (common/protocol/bittorrent)

_BITTORRENT = b"\x13BitTorrent protocol"


def _bittorrent(data: bytes) -> Sniffed:
    if len(data) < len(_BITTORRENT):
        raise _NoClue
    if data.startswith(_BITTORRENT):
        return Sniffed("bittorrent", "")
    raise _NotThis


_SNIFFERS = (_http, _tls, _bittorrent)


def sniff(data: bytes) -> Result:
    """What ``data`` (a connection's first bytes, all of them so far) is: a ``Sniffed``,
    ``MORE`` if more bytes could tell, None if it is none of the protocols known."""
    waiting = False
    for sniffer in _SNIFFERS:
        try:
            return sniffer(data)
        except _NoClue:
            waiting = True
        except _NotThis:
            pass
    return MORE if waiting else None


def overrides(protocol: str, dest_override: tuple[str, ...]) -> bool:
    """Whether a sniffed ``protocol`` replaces the destination for an inbound whose
    ``destOverride`` is ``dest_override`` (V2Ray matches by prefix: "http" covers
    "http1")."""
    return any(protocol.startswith(name) for name in dest_override)
