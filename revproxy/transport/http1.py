"""Sans-IO HTTP/1.1 heads, as the WebSocket handshake and V2Ray's HTTP header disguise need
them: collecting a head from received bytes, parsing a request or response head, writing one.

Bodies are none of this module's business: the transports only ever exchange heads.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

END = b"\r\n\r\n"


class HeadError(ValueError):
    """A head that cannot be parsed."""


class HeadTooLong(HeadError):
    """No end of head within the limit."""


class HeadReader:
    """Collects bytes until a head's blank line: ``feed`` gives (head, the bytes after it)
    once complete, None before; raises ``HeadTooLong`` past ``limit`` bytes of head."""

    __slots__ = ("limit", "_buffer")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = b""

    @property
    def buffered(self) -> bytes:
        """What was fed and not yet given back."""
        return self._buffer

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        start = max(0, len(self._buffer) - 3)
        buffer = self._buffer = self._buffer + data
        end = buffer.find(END, start)
        if end < 0:
            if len(buffer) > self.limit:
                raise HeadTooLong(f"no end of the HTTP head within {self.limit} bytes")
            return None
        end += len(END)
        if end > self.limit:
            raise HeadTooLong(f"an HTTP head longer than {self.limit} bytes")
        self._buffer = b""
        return buffer[:end], buffer[end:]


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed head: the start line's three parts and the header fields in order."""

    start: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def count(self, name: str) -> int:
        name = name.lower()
        return sum(1 for key, _ in self.headers if key.lower() == name)

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header ``name`` lists ``token`` (any case), as in
        ``Connection: keep-alive, Upgrade``."""
        name, token = name.lower(), token.lower()
        return any(part.strip().lower() == token
                   for key, value in self.headers if key.lower() == name
                   for part in value.split(","))


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str  # "HTTP/1.1"
    head: Head

    @property
    def path(self) -> str:
        """The target's path, unescaped and without the query, as Go's ``URL.Path`` (an
        absolute-form target's too)."""
        target = self.target
        if "://" in target.split("?", 1)[0]:
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        return unquote(target.split("?", 1)[0].split("#", 1)[0])

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection carry another request."""
        if self.head.has_token("Connection", "close"):
            return False
        return self.version == "HTTP/1.1" or self.head.has_token("Connection", "keep-alive")

    @property
    def has_body(self) -> bool:
        length = self.head.get("Content-Length")
        return (length is not None and length.strip() not in ("", "0")) or \
            self.head.get("Transfer-Encoding") is not None


@dataclass(frozen=True, slots=True)
class Response:
    version: str
    status: int
    reason: str
    head: Head


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN for c in text)


def _is_version(text: str) -> bool:
    return len(text) == 8 and text.startswith("HTTP/") and text[5].isdigit() and \
        text[6] == "." and text[7].isdigit()


def parse_head(data: bytes) -> Head:
    """A head (start line and header fields, ending with its blank line or not)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes everything)
        raise HeadError("undecodable head") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HeadError("empty head")
    start = lines[0].split(" ", 2)
    if len(start) != 3:
        raise HeadError(f"malformed start line {lines[0][:60]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _is_token(name):
            raise HeadError(f"malformed header line {line[:60]!r}")
        headers.append((name, value.strip(" \t")))
    return Head((start[0], start[1], start[2]), tuple(headers))


def parse_request(data: bytes) -> Request:
    head = parse_head(data)
    method, target, version = head.start
    if not _is_token(method):
        raise HeadError(f"invalid method {method[:20]!r}")
    if not target or " " in target:
        raise HeadError("invalid request target")
    if not _is_version(version):
        raise HeadError(f"malformed HTTP version {version[:20]!r}")
    return Request(method, target, version, head)


def check_partial_request(data: bytes) -> None:
    """Raise ``HeadError`` if the complete lines of a request head still being received are
    already malformed (V2Ray answers such a request at once)."""
    end = data.rfind(b"\r\n")
    if end > 0:
        parse_request(data[:end])


def parse_response(data: bytes) -> Response:
    head = parse_head(data)
    version, status, reason = head.start
    if not _is_version(version) or not (len(status) == 3 and status.isdigit()):
        raise HeadError(f"malformed status line {' '.join(head.start)[:60]!r}")
    return Response(version, int(status), reason, head)


def format_head(start: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A head: the start line, ``Name: value`` lines, the blank line."""
    lines = [start]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode()


def http_date(now: float | None = None) -> str:
    """An HTTP Date value: "Sat, 28 Nov 2026 01:18:38 GMT"."""
    return email.utils.formatdate(now, usegmt=True)
