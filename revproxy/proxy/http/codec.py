"""HTTP proxying, sans-IO: request and response heads, the end of their bodies, and the
rewriting V2Ray 4.34's HTTP inbound does (proxy/http/server.go, common/protocol/http).

- A request is ``CONNECT host:port`` (a tunnel: answered "200 Connection established"
  before the destination is dialed) or any other method with an absolute URI
  (``http://host[:port]/path``; an origin-form target only with ``allowTransparent``, the
  destination then coming from ``Host``). The port defaults to 443 for ``https:`` URIs and
  80 otherwise.
- With ``accounts``, ``Proxy-Authorization: Basic`` must name one, else the client gets
  407 with ``Proxy-Authenticate: Basic realm="proxy"`` and the connection ends.
- A forwarded request loses its hop-by-hop headers (``Proxy-*``, ``Connection`` and those it
  names, ``TE``, ``Trailers``, ``Transfer-Encoding``, ``Upgrade``), goes out in origin form
  with ``Host`` from the URI and ``Connection: close``, one upstream connection per request.
- A response with a known length keeps the client's connection (``Connection`` and
  ``Proxy-Connection: keep-alive``, ``Keep-Alive: timeout=4``); a chunked or close-delimited
  one ends it. An upstream that gives no response yields 503.

Bodies are passed through verbatim (a chunked body stays chunked); the readers here only find
where they end. Every buffer is bounded: heads by ``MAX_HEAD``, chunk lines by ``MAX_LINE``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from revproxy.proxy.wire import ProtocolError, ip_text

MAX_HEAD = 64 * 1024
MAX_LINE = 4096

CONNECT_OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
AUTH_REQUIRED = (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                 b'Proxy-Authenticate: Basic realm="proxy"\r\n\r\n')
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n"
               b"Proxy-Connection: close\r\n\r\n")
SERVICE_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                       b"Content-Length: 0\r\nProxy-Connection: close\r\n\r\n")

_HOP_BY_HOP = ("proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "connection")
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

Headers = tuple[tuple[str, str], ...]


class HTTPError(ProtocolError):
    """A head or body that does not parse."""


class HeadReader:
    """Collects bytes until a head's empty line (CRLF or bare LF line ends): ``feed`` gives
    (head, bytes after it) once complete, None before."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def buffered(self) -> bytes:
        return self._buffer

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        start = max(0, len(self._buffer) - 3)
        buffer = self._buffer = self._buffer + data
        if start == 0:
            # Go's reader skips empty lines before a request (RFC 7230 3.5).
            buffer = self._buffer = buffer.lstrip(b"\r\n")
        end = _head_end(buffer, start)
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise HTTPError(f"no end of the HTTP head within {MAX_HEAD} bytes")
            return None
        if end > MAX_HEAD:
            raise HTTPError(f"an HTTP head longer than {MAX_HEAD} bytes")
        self._buffer = b""
        return buffer[:end], buffer[end:]


def _head_end(buffer: bytes, start: int) -> int:
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    ends = [end + 3 for end in (crlf,) if end >= 0] + [end + 2 for end in (lf,) if end >= 0]
    return min(ends) if ends else -1


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed head: its start line's three parts and its header fields in order."""

    start: tuple[str, str, str]
    headers: Headers

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]


def parse_head(head: bytes) -> Message:
    lines = head.decode("latin-1").split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise HTTPError("empty head")
    start = lines[0].split(" ", 2)
    if len(start) != 3:
        raise HTTPError(f"malformed start line {lines[0][:60]!r}")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise HTTPError("obsolete header line folding")
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN.issuperset(name.encode("latin-1")):
            raise HTTPError(f"malformed header line {line[:60]!r}")
        headers.append((name, value.strip(" \t")))
    return Message((start[0], start[1], start[2]), tuple(headers))


def _version(text: str) -> bool:
    return len(text) == 8 and text.startswith("HTTP/") and text[5].isdigit() and \
        text[6] == "." and text[7].isdigit()


@dataclass(frozen=True, slots=True)
class Request:
    """A proxy request. ``scheme``/``authority``/``uri`` split an absolute-form target (the
    authority alone for CONNECT); an origin-form target has an empty ``authority``."""

    method: str
    target: str
    head: Message
    scheme: str
    authority: str
    uri: str

    @property
    def connect(self) -> bool:
        return self.method.upper() == "CONNECT"

    @property
    def host(self) -> str:
        """Where it goes, as ``host[:port]``: the URI's authority, else the Host header."""
        return self.authority or (self.head.get("Host") or "")

    @property
    def proxy_keep_alive(self) -> bool:
        """V2Ray serves another request on the connection only if the client asked so."""
        return (self.head.get("Proxy-Connection") or "").strip().lower() == "keep-alive"


def parse_request(head: bytes) -> Request:
    message = parse_head(head)
    method, target, version = message.start
    if not method or not _TOKEN.issuperset(method.encode("latin-1")):
        raise HTTPError(f"invalid method {method[:20]!r}")
    if not _version(version):
        raise HTTPError(f"malformed HTTP version {version[:20]!r}")
    if not target or " " in target:
        raise HTTPError("invalid request target")
    scheme = authority = ""
    uri = target
    if method.upper() == "CONNECT" and not target.startswith("/"):
        authority, uri = target, ""
    elif "://" in target.split("/", 1)[0] or target.lower().startswith(("http://", "https://")):
        scheme, _, rest = target.partition("://")
        cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
                  default=len(rest))
        authority, uri = rest[:cut], rest[cut:].split("#", 1)[0]
        authority = authority.rpartition("@")[2]  # no user info in Host
        if not uri.startswith("/"):
            uri = "/" + uri
    elif not target.startswith("/") and target != "*":
        raise HTTPError(f"invalid request target {target[:60]!r}")
    return Request(method, target, message, scheme.lower(), authority, uri)


def destination(request: Request) -> tuple[str, int]:
    """(address, port) the request goes to, V2Ray's ParseHost of ``host``."""
    host = request.host
    port = 443 if request.scheme == "https" else 80
    name = host
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise HTTPError(f"malformed host {host[:60]!r}")
        name, rest = host[1:end], host[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise HTTPError(f"malformed host {host[:60]!r}")
            port = _port(rest[1:], port)
    elif host.count(":") == 1:
        name, _, text = host.partition(":")
        port = _port(text, port)
    elif ":" in host:
        raise HTTPError(f"malformed host {host[:60]!r}: too many colons")
    if not name:
        raise HTTPError("no host to go to")
    return ip_text(name) or name, port


def _port(text: str, default: int) -> int:
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or int(text) > 0xFFFF:
        raise HTTPError(f"invalid port {text[:20]!r}")
    return int(text)


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) from ``Proxy-Authorization: Basic``, or None."""
    value = request.head.get("Proxy-Authorization") or ""
    if not value.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(value[6:], validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def without_hop_by_hop(headers: Headers) -> list[tuple[str, str]]:
    """``headers`` less the hop-by-hop ones, those named by ``Connection`` included."""
    named = {token.strip().lower() for key, value in headers if key.lower() == "connection"
             for token in value.split(",")}
    drop = named.union(_HOP_BY_HOP)
    return [(key, value) for key, value in headers if key.lower() not in drop]


class Body:
    """Finds the end of a body passed through verbatim: ``feed`` gives (body bytes, bytes
    after the body); ``done`` once the end was seen. Never done: delimited by the close."""

    done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        return data, b""


class NoBody(Body):
    done = True

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        return b"", data


class LengthBody(Body):
    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        take = min(self.remaining, len(data))
        self.remaining -= take
        self.done = self.remaining == 0
        return data[:take], data[take:]


class ChunkedBody(Body):
    """``size[;ext] CRLF data CRLF`` ... ``0 CRLF trailers CRLF``."""

    def __init__(self) -> None:
        self._line = b""
        self._data = 0  # bytes of chunk data (and its CRLF) still to pass
        self._trailers = False
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        pos = 0
        while pos < len(data) and not self.done:
            if self._data:
                take = min(self._data, len(data) - pos)
                self._data -= take
                pos += take
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                pos = len(data)
                if len(self._line) > MAX_LINE:
                    raise HTTPError("chunk line too long")
                break
            line, self._line = self._line + data[pos:end], b""
            pos = end + 1
            if len(line) > MAX_LINE:
                raise HTTPError("chunk line too long")
            line = line.rstrip(b"\r")
            if self._trailers:
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_HEAD:
                    raise HTTPError("trailers too long")
                self.done = not line
                continue
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPError(f"invalid chunk size {size_text[:20]!r}") from None
            if size_text[:1] in (b"-", b"+") or size_text.startswith((b"0x", b"0X")):
                raise HTTPError(f"invalid chunk size {size_text[:20]!r}")
            if size == 0:
                self._trailers = True
            else:
                self._data = size + 2  # its CRLF passes through as data
        return data[:pos], data[pos:]


def request_body(request: Request) -> Body:
    """How the request's body ends (requests without a length have none)."""
    encoding = request.head.get("Transfer-Encoding")
    if encoding is not None:
        if encoding.strip().lower() != "chunked":
            raise HTTPError(f"unsupported transfer encoding {encoding[:40]!r}")
        return ChunkedBody()
    length = _content_length(request.head)
    return LengthBody(length) if length else NoBody()


def _content_length(head: Message) -> int | None:
    values = {value.strip() for value in head.values("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError("conflicting Content-Length headers")
    text = values.pop()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise HTTPError(f"invalid Content-Length {text[:20]!r}")
    return int(text)


def forward_request(request: Request) -> bytes:
    """The head sent upstream for a plain (not CONNECT) request."""
    head = request.head
    host = request.authority or (head.get("Host") or "")
    lines = [f"{request.method} {request.uri} HTTP/1.1", f"Host: {host}"]
    chunked = head.get("Transfer-Encoding") is not None
    for key, value in without_hop_by_hop(head.headers):
        lowered = key.lower()
        if lowered == "host" or (chunked and lowered == "content-length"):
            continue
        lines.append(f"{key}: {value}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Response:
    version: str
    status: int
    reason: str
    head: Message


def parse_response(head: bytes) -> Response:
    """A response head; the reason phrase may be missing ("HTTP/1.1 200"), as Go allows."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    if first.count(b" ") == 1:
        head = first + b" " + head[len(first):]
    message = parse_head(head)
    version, status, reason = message.start
    if not _version(version) or not (len(status) == 3 and status.isdigit()):
        raise HTTPError(f"malformed status line {' '.join(message.start)[:60]!r}")
    return Response(version, int(status), reason, message)


def response_body(response: Response, method: str) -> Body:
    """How the response's body ends, for a request with ``method``."""
    if method.upper() == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
        return NoBody()
    encoding = response.head.get("Transfer-Encoding")
    if encoding is not None and encoding.strip().lower() == "chunked":
        return ChunkedBody()
    if encoding is None:
        length = _content_length(response.head)
        if length is not None:
            return LengthBody(length)
    return Body()


def forward_response(response: Response, body: Body) -> tuple[bytes, bool]:
    """The head sent back to the client, and whether the connection may carry another
    request afterwards (only when the body's length is known, as in V2Ray)."""
    keep = isinstance(body, LengthBody | NoBody)
    lines = [f"{response.version} {response.status:03d} {response.reason}".rstrip()]
    for key, value in without_hop_by_hop(response.head.headers):
        if keep and key.lower() == "keep-alive":
            continue  # replaced below
        lines.append(f"{key}: {value}")
    if isinstance(body, ChunkedBody):
        lines.append("Transfer-Encoding: chunked")
    if keep:
        lines += ["Proxy-Connection: keep-alive", "Connection: keep-alive",
                  "Keep-Alive: timeout=4"]
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), keep


def connect_request(target: str, account: tuple[str, str] | None) -> bytes:
    """A client's CONNECT to ``target`` ("host:port"), as V2Ray's HTTP outbound sends it."""
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if account is not None:
        token = base64.b64encode(f"{account[0]}:{account[1]}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    lines.append("Proxy-Connection: Keep-Alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
