"""V2Ray's HTTP disguise of a TCP stream (``tcpSettings.header`` of type "http").

The client's first bytes are an HTTP request head (method, one of the configured paths, each
header with one of its values, picked per connection) and it skips the server's first head;
the server reads the request head, accepts it when its path is one of the configured ones,
and puts its response head in front of its first bytes. A request with another path is
answered 404, a malformed or too long one 400, and a server stream closed before it wrote
anything answers 400: V2Ray's answers (its transport/internet/headers/http).

``HeaderCodec`` is the sans-IO part; the two stream classes put it on a stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NoReturn

from revproxy.net.stream import TunnelStream
from revproxy.transport.base import Address, TransportError
from revproxy.transport.http1 import (
    HeadError,
    HeadReader,
    HeadTooLong,
    check_partial_request,
    format_head,
    http_date,
    parse_request,
)
from revproxy.transport.settings import Headers, HTTPHeaderSettings

MAX_HEAD = 8192  # V2Ray's maxHeaderLength
BAD_REQUEST = 400
NOT_FOUND = 404
_ANSWERS = {BAD_REQUEST: "400 Bad Request", NOT_FOUND: "404 Not Found"}


def answer(status: int, now: float | None = None) -> bytes:
    """V2Ray's error answer (400 or 404), after which it closes."""
    return format_head(f"HTTP/1.1 {_ANSWERS[status]}", (
        ("Connection", "close"), ("Cache-Control", "private"), ("Content-Length", "0"),
        ("Date", http_date(now))))


def _picked(headers: Headers, choice: Callable[[Sequence[str]], str]) -> list[tuple[str, str]]:
    return [(name, choice(values) if values else "") for name, values in headers]


class HeaderCodec:
    """The heads of one configuration; ``choice`` picks among configured values."""

    __slots__ = ("settings", "choice", "_paths", "_has_date")

    def __init__(self, settings: HTTPHeaderSettings,
                 choice: Callable[[Sequence[str]], str] = random.choice) -> None:
        self.settings = settings
        self.choice = choice
        self._paths = frozenset(settings.request.paths)
        self._has_date = any(name.lower() == "date" for name, _ in settings.response.headers)

    def request_head(self) -> bytes:
        """What a client sends first."""
        request = self.settings.request
        path = self.choice(request.paths) if request.paths else ""
        return format_head(f"{request.method} {path} HTTP/{request.version}",
                           _picked(request.headers, self.choice))

    def response_head(self, now: float | None = None) -> bytes:
        """What a server sends first; a Date unless the configuration has one."""
        response = self.settings.response
        headers = _picked(response.headers, self.choice)
        if not self._has_date:
            headers.append(("Date", http_date(now)))
        return format_head(f"HTTP/{response.version} {response.status} {response.reason}",
                           headers)

    def check_request(self, head: bytes) -> int:
        """0 for a request the server accepts, else the status to answer (400 or 404)."""
        try:
            request = parse_request(head)
        except HeadError:
            return BAD_REQUEST
        return 0 if request.path in self._paths else NOT_FOUND


class HeaderLayer:
    """The HTTP header as a transport layer."""

    __slots__ = ("codec",)

    def __init__(self, settings: HTTPHeaderSettings) -> None:
        self.codec = HeaderCodec(settings)

    def client(self, stream: TunnelStream, host: str, port: int) -> TunnelStream:
        return HeaderClientStream(stream, self.codec.request_head())

    def server(self, stream: TunnelStream, peer: Address) -> tuple[TunnelStream, Address]:
        reader = HeadReader(MAX_HEAD)
        try:
            while True:
                data = stream.recv()
                if not data:
                    raise TransportError("closed before its HTTP request head")
                got = reader.feed(data)
                if got is not None:
                    break
                check_partial_request(reader.buffered)
        except HeadTooLong:
            _refuse(stream, BAD_REQUEST)
        except HeadError:
            _refuse(stream, BAD_REQUEST)
        head, rest = got
        status = self.codec.check_request(head)
        if status:
            _refuse(stream, status)
        return HeaderServerStream(stream, self.codec.response_head(), rest), peer


def _refuse(stream: TunnelStream, status: int) -> NoReturn:
    stream.send(answer(status))
    raise TransportError(f"HTTP header: answered {_ANSWERS[status]}")


class HeaderClientStream:
    """Sends the request head in front of the first bytes; skips the response head."""

    __slots__ = ("inner", "_request", "_reader")

    def __init__(self, inner: TunnelStream, request: bytes) -> None:
        self.inner = inner
        self._request = request
        self._reader: HeadReader | None = HeadReader(MAX_HEAD)

    def recv(self) -> bytes:
        reader = self._reader
        while reader is not None:
            data = self.inner.recv()
            if not data:
                return b""
            try:
                got = reader.feed(data)
            except HeadTooLong as exc:
                raise ConnectionError(f"HTTP header: {exc}") from None
            if got is not None:
                self._reader = reader = None
                if got[1]:
                    return got[1]
        return self.inner.recv()

    def _head(self, data: bytes | memoryview) -> bytes | memoryview:
        request, self._request = self._request, b""
        return request + data

    def send(self, data: bytes | memoryview) -> None:
        self.inner.send(self._head(data) if self._request else data)

    def send_nowait(self, data: bytes) -> bool:
        return self.inner.send_nowait(bytes(self._head(data)) if self._request else data)

    def flush(self) -> None:
        self.inner.flush()

    def close_write(self) -> None:
        self.inner.close_write()

    def close(self) -> None:
        self.inner.close()

    def settimeout(self, seconds: float | None) -> None:
        self.inner.settimeout(seconds)


class HeaderServerStream:
    """Gives the bytes that came after the request head first; sends the response head in
    front of the first bytes; closed before that, answers 400 as V2Ray does."""

    __slots__ = ("inner", "_response", "_early")

    def __init__(self, inner: TunnelStream, response: bytes, early: bytes) -> None:
        self.inner = inner
        self._response = response
        self._early = early

    def recv(self) -> bytes:
        if self._early:
            early, self._early = self._early, b""
            return early
        return self.inner.recv()

    def _head(self, data: bytes | memoryview) -> bytes | memoryview:
        response, self._response = self._response, b""
        return response + data

    def send(self, data: bytes | memoryview) -> None:
        self.inner.send(self._head(data) if self._response else data)

    def send_nowait(self, data: bytes) -> bool:
        return self.inner.send_nowait(bytes(self._head(data)) if self._response else data)

    def flush(self) -> None:
        self.inner.flush()

    def close_write(self) -> None:
        self.inner.close_write()

    def close(self) -> None:
        if self._response:
            self._response = b""
            try:
                self.inner.send_nowait(answer(BAD_REQUEST))
            except OSError:
                pass
        self.inner.close()

    def settimeout(self, seconds: float | None) -> None:
        self.inner.settimeout(seconds)
