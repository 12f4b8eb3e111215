"""WebSocket (``network: "ws"``): the HTTP/1.1 upgrade, then binary messages via ``wsproto``.

Handshake, as V2Ray 4.34 does it (transport/internet/websocket; a Go HTTP server with
gorilla/websocket):

- the client asks ``GET <path>`` (a query string included) with the configured headers, a
  ``Host`` of the address dialed unless configured, and Go's ``User-Agent``;
- the server compares the request's path, without query, to the path configured (without
  query too: V2Ray 4.34 compares it with the query and so never matches one); another path is
  answered ``404`` and the connection may carry another request; the right path without a
  valid upgrade is answered ``400`` (``405`` for a method other than GET), as gorilla does; a
  malformed request or one with too long a head gets Go's ``400``/``431`` and is closed. The
  first ``X-Forwarded-For`` address (a proxy in front, such as nginx) becomes the peer's.

Data travels in binary messages, masked from the client as RFC 6455 requires (``wsproto``
frames and unframes; messages are joined, so a peer's fragmentation does not matter). A ping
is answered, a close frame answered and read as the end. WebSocket has no half-close: like
V2Ray, ``close_write`` sends nothing and the protocol above (VMess) says where its data ends.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass
from typing import NoReturn, cast

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed
from wsproto.utilities import generate_accept_token

from revproxy.net.stream import TunnelStream
from revproxy.transport.base import Address, TransportError
from revproxy.transport.http1 import (
    HeadError,
    HeadReader,
    HeadTooLong,
    Request,
    format_head,
    http_date,
    parse_request,
    parse_response,
)
from revproxy.transport.settings import WebSocketSettings

MAX_REQUEST_HEAD = 2048 + 4096  # Go's MaxHeaderBytes as V2Ray sets it, plus Go's slack
MAX_RESPONSE_HEAD = 8192
GO_USER_AGENT = "Go-http-client/1.1"
NORMAL_CLOSURE = 1000


def _go_error(status: str) -> bytes:
    """Go's answer to a request it cannot read, before closing."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Connection: close\r\n\r\n{status}").encode()


MALFORMED = _go_error("400 Bad Request")
MISSING_HOST = _go_error("400 Bad Request: missing required Host header")
TOO_LARGE = _go_error("431 Request Header Fields Too Large")


# -- the handshake (sans-IO)

def new_key() -> str:
    """A Sec-WebSocket-Key: 16 random bytes in base64."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_token(key: str) -> str:
    return generate_accept_token(key.encode()).decode()


def client_request(host: str, path: str, headers: tuple[tuple[str, str], ...],
                   key: str) -> bytes:
    """The upgrade request, laid out as Go writes gorilla's: Host, User-Agent, then the
    other fields sorted. A configured Host or User-Agent replaces the default."""
    fields = {"Connection": "Upgrade", "Sec-WebSocket-Key": key,
              "Sec-WebSocket-Version": "13", "Upgrade": "websocket"}
    agent = GO_USER_AGENT
    for name, value in headers:
        if name.lower() == "host":
            host = value
        elif name.lower() == "user-agent":
            agent = value
        else:
            fields[name] = value
    return format_head(f"GET {path} HTTP/1.1",
                       [("Host", host), ("User-Agent", agent), *sorted(fields.items())])


def check_response(head: bytes, key: str) -> None:
    """Raise ``TransportError`` unless ``head`` accepts the upgrade asked with ``key``."""
    try:
        response = parse_response(head)
    except HeadError as exc:
        raise TransportError(f"websocket: bad answer: {exc}") from None
    if response.status != 101:
        raise TransportError(f"websocket: answered {response.status} {response.reason}")
    fields = response.head
    if not (fields.has_token("Upgrade", "websocket") and fields.has_token("Connection", "upgrade")
            and fields.get("Sec-WebSocket-Accept") == accept_token(key)):
        raise TransportError("websocket: bad handshake answer")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A server's decision on one request: what to send; whether the connection is now a
    WebSocket (``upgrade``) or is to be closed (``close``), else another request may come."""

    answer: bytes
    upgrade: bool = False
    close: bool = False
    forwarded_for: str | None = None


def judge_request(head: bytes, path: str, now: float | None = None) -> Verdict:
    """The answer V2Ray's WebSocket server gives to the request ``head`` when configured
    with ``path`` (whose query, if any, is not compared)."""
    try:
        request = parse_request(head)
    except HeadError:
        return Verdict(MALFORMED, close=True)
    if request.version == "HTTP/1.1" and request.head.count("Host") != 1:
        return Verdict(MISSING_HOST, close=True)
    close = not request.keep_alive or request.has_body
    if request.path != path.split("?", 1)[0]:
        return _answer(request, "404 Not Found", (), b"", close, now)
    fields = request.head
    if not (fields.has_token("Connection", "upgrade") and fields.has_token("Upgrade",
                                                                         "websocket")):
        return _refusal(request, "400 Bad Request", close, now)
    if request.method != "GET":
        return _refusal(request, "405 Method Not Allowed", close, now)
    if not fields.has_token("Sec-WebSocket-Version", "13"):
        return _refusal(request, "400 Bad Request", close, now)
    key = fields.get("Sec-WebSocket-Key") or ""
    if not key:  # any other key will do: V2Ray 4.34's gorilla checks no more
        return _refusal(request, "400 Bad Request", close, now)
    answer = format_head("HTTP/1.1 101 Switching Protocols", (
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_token(key))))
    return Verdict(answer, upgrade=True, forwarded_for=_forwarded_for(request))


def _forwarded_for(request: Request) -> str | None:
    """The first X-Forwarded-For address, if it is an IP address (as V2Ray reads it)."""
    value = request.head.get("X-Forwarded-For")
    if not value:
        return None
    first = value.split(",", 1)[0].strip()
    try:
        return str(ipaddress.ip_address(first))
    except ValueError:
        return None


def _refusal(request: Request, status: str, close: bool, now: float | None) -> Verdict:
    """gorilla's refusal of a bad upgrade: Go's http.Error with its version header."""
    body = (status.split(" ", 1)[1] + "\n").encode()
    return _answer(request, status, (("Content-Type", "text/plain; charset=utf-8"),
                                     ("Sec-Websocket-Version", "13"),
                                     ("X-Content-Type-Options", "nosniff")), body, close, now)


def _answer(request: Request, status: str, headers: tuple[tuple[str, str], ...], body: bytes,
            close: bool, now: float | None) -> Verdict:
    """A Go answer to a readable request: its headers, Date, Content-Length, and
    Connection: close when the connection ends with it (HTTP/1.0 just closes)."""
    old = request.version != "HTTP/1.1"
    fields = [*headers, ("Date", http_date(now)), ("Content-Length", str(len(body)))]
    if close and not old:
        fields.append(("Connection", "close"))
    version = "HTTP/1.0" if old else "HTTP/1.1"
    return Verdict(format_head(f"{version} {status}", fields) + body, close=close or old)


# -- the layer

class WebSocketLayer:
    """``wsSettings`` as a transport layer; ``secure`` when TLS is under it (wss)."""

    __slots__ = ("path", "headers", "secure")

    def __init__(self, settings: WebSocketSettings, secure: bool) -> None:
        self.path = settings.path
        self.headers = settings.headers
        self.secure = secure

    def client(self, stream: TunnelStream, host: str, port: int) -> TunnelStream:
        name = f"[{host}]" if ":" in host else host
        if port != (443 if self.secure else 80):
            name = f"{name}:{port}"
        key = new_key()
        stream.send(client_request(name, self.path, self.headers, key))
        reader = HeadReader(MAX_RESPONSE_HEAD)
        while True:
            data = stream.recv()
            if not data:
                raise TransportError("websocket: closed during the handshake")
            try:
                got = reader.feed(data)
            except HeadTooLong as exc:
                raise TransportError(f"websocket: {exc}") from None
            if got is not None:
                break
        head, rest = got
        check_response(head, key)
        return WebSocketStream(stream, True, rest)

    def server(self, stream: TunnelStream, peer: Address) -> tuple[TunnelStream, Address]:
        rest = b""
        while True:
            head, rest = _read_request(stream, rest)
            verdict = judge_request(head, self.path)
            stream.send(verdict.answer)
            if verdict.upgrade:
                if verdict.forwarded_for is not None:
                    peer = (verdict.forwarded_for, 0)
                return WebSocketStream(stream, False, rest), peer
            if verdict.close:
                raise TransportError("websocket: not a WebSocket request (answered)")


def _read_request(stream: TunnelStream, rest: bytes) -> tuple[bytes, bytes]:
    """The next request head on a server connection, and what came after it. Answers as Go
    does what cannot be read: too long, or a line cut off by the handshake timeout."""
    reader = HeadReader(MAX_REQUEST_HEAD)
    data = rest
    try:
        while True:
            if data:
                got = reader.feed(data)
                if got is not None:
                    return got
            data = stream.recv()
            if not data:
                raise TransportError("websocket: closed before its request")
    except HeadTooLong:
        _refuse(stream, TOO_LARGE)
    except TimeoutError:
        if reader.buffered and not reader.buffered.endswith(b"\n"):
            _refuse(stream, MALFORMED, wait=False)
        raise


def _refuse(stream: TunnelStream, answer: bytes, wait: bool = True) -> NoReturn:
    if wait:
        stream.send(answer)
    else:
        stream.send_nowait(answer)
    raise TransportError("websocket: unreadable request (answered)")


class WebSocketStream:
    """A stream of binary WebSocket messages over ``inner``, after the handshake: wsproto's
    frame protocol (its framing, masking and message reassembly) without its event layer,
    which costs a fifth more per frame on the hot path."""

    __slots__ = ("inner", "_frames", "_control", "_sending", "_ended", "_closing", "_early")

    def __init__(self, inner: TunnelStream, client: bool, received: bytes) -> None:
        self.inner = inner
        self._frames = FrameProtocol(client, [])
        self._control = b""  # pong or close frames waiting for a writer to finish
        self._sending = False  # a send is waiting on ``inner``: frames must not cut in
        self._ended = False  # a close frame came, or the connection failed
        self._closing = False  # our close frame is out: no more data frames
        self._early = bool(received)  # bytes that came with the handshake, not yet read
        if received:
            self._frames.receive_bytes(received)

    def recv(self) -> bytes:
        if self._early:
            self._early = False
            payloads = self._payloads()
            if payloads:
                return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        frames = self._frames
        while not self._ended:
            data = self.inner.recv()
            if not data:
                self._ended = True
                break
            frames.receive_bytes(data)
            payloads = self._payloads()
            if payloads:
                return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        return b""

    def _payloads(self) -> list[bytes]:
        """The data of the frames received; answers pings and close frames on the way."""
        payloads = []
        try:
            for frame in self._frames.received_frames():
                opcode, payload = frame.opcode, frame.payload
                if isinstance(payload, tuple):  # a close frame: (code, reason)
                    self._ended = True
                    if not self._closing:  # the peer's close: echo it
                        self._closing = True
                        self._control_frame(self._frames.close(*payload))
                    break
                if isinstance(payload, str):  # text: gorilla never sends any, take it
                    payloads.append(payload.encode())
                elif opcode is Opcode.PING:
                    self._control_frame(self._frames.pong(payload))
                elif opcode is Opcode.BINARY and payload:
                    payloads.append(bytes(payload))
        except ParseFailed as exc:  # frames wsproto cannot read: tell the peer, then fail
            self._ended = True
            if not self._closing:
                self._closing = True
                self._control_frame(self._frames.close(exc.code, str(exc)))
            raise ConnectionError(f"websocket: {exc}") from None
        return payloads

    def _control_frame(self, frame: bytes | bytearray) -> None:
        """Send a pong or close frame now, or after the running send. (wsproto 1.2 makes
        frames as bytes, 1.3 as bytearray: Debian bookworm has 1.2.)"""
        if self._sending:
            self._control += frame
            return
        try:
            self.inner.send_nowait(bytes(frame))
        except OSError:
            pass

    def _frame(self, data: bytes | memoryview) -> bytes:
        if self._closing:
            raise BrokenPipeError("websocket: closed")
        # wsproto frames any buffer (its annotation says bytes): no copy of a memoryview.
        frame: bytes = self._frames.send_data(  # type: ignore[assignment,unused-ignore]
            cast(bytes, data))  # (a bytearray from wsproto 1.3, which sockets take as well)
        if self._control:
            frame, self._control = self._control + frame, b""
        return frame

    def send(self, data: bytes | memoryview) -> None:
        frame = self._frame(data)
        self._sending = True
        try:
            self.inner.send(frame)
        finally:
            self._sending = False

    def send_nowait(self, data: bytes) -> bool:
        return self.inner.send_nowait(self._frame(data))

    def flush(self) -> None:
        self.inner.flush()

    def close_write(self) -> None:
        """WebSocket has no half-close (nor has V2Ray's): nothing to send."""

    def close(self) -> None:
        if not self._closing and not self._sending:
            self._closing = True
            try:
                self.inner.send_nowait(bytes(self._frames.close(NORMAL_CLOSURE)))
            except OSError:
                pass
        self.inner.close()

    def settimeout(self, seconds: float | None) -> None:
        self.inner.settimeout(seconds)
