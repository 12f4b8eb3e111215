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

Data travels in binary messages, masked from the client as RFC 6455 requires. The common
frame (a whole binary message) is read and written here, its payload masked in one pass;
every other frame goes to ``wsproto``, which checks and reads it (messages are joined, so a
peer's fragmentation does not matter). A ping is answered, a close frame answered and read
as the end. WebSocket has no half-close: like
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


# -- data frames: the hot path

_FIN_BINARY = 0x82  # a whole binary message in one frame, no extension bits: the common frame
_MASKED = 0x80
_KEYS = 256  # masking keys drawn from the system at a time


def _xor_table(byte: int) -> bytes:
    """The translation table that XORs every byte with ``byte``."""
    return bytes(value ^ byte for value in range(256))


_XOR = [_xor_table(byte) for byte in range(256)]


def mask_in_place(buffer: bytearray, start: int, key: bytes) -> None:
    """XOR ``buffer`` from ``start`` with the 4-byte ``key`` repeated (RFC 6455 5.3): four
    strided table look-ups over the whole payload, not a loop over its bytes."""
    xor = _XOR
    buffer[start::4] = buffer[start::4].translate(xor[key[0]])
    buffer[start + 1::4] = buffer[start + 1::4].translate(xor[key[1]])
    buffer[start + 2::4] = buffer[start + 2::4].translate(xor[key[2]])
    buffer[start + 3::4] = buffer[start + 3::4].translate(xor[key[3]])


def unmask(data: bytes, start: int, end: int, key: bytes) -> bytes:
    """``data[start:end]`` XORed with ``key`` repeated."""
    if key == b"\0\0\0\0":
        return data[start:end]
    out = bytearray(memoryview(data)[start:end])
    mask_in_place(out, 0, key)
    return bytes(out)


def data_frame_head(length: int, key: bytes | None) -> bytes:
    """The head of a final binary frame of ``length`` bytes, masked with ``key`` if any
    (RFC 6455 5.2: the shortest length encoding)."""
    bit = _MASKED if key is not None else 0
    if length < 126:
        head = bytes((_FIN_BINARY, bit | length))
    elif length < 65536:
        head = bytes((_FIN_BINARY, bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((_FIN_BINARY, bit | 127)) + length.to_bytes(8, "big")
    return head if key is None else head + key


class WebSocketStream:
    """A stream of binary WebSocket messages over ``inner``, after the handshake.

    The frames every peer sends (a whole binary message per frame, masked as it must be) are
    read and written here, their payloads masked whole; any other frame (ping, close, text,
    a fragmented message, anything malformed) is handed as it came to ``wsproto``'s frame
    protocol, which reads, checks and answers it (and makes the pong and close frames)."""

    __slots__ = ("inner", "_client", "_frames", "_head", "_payload", "_key", "_offset",
                 "_other", "_fragmented", "_keys", "_control", "_sending", "_ended",
                 "_closing", "_early")

    def __init__(self, inner: TunnelStream, client: bool, received: bytes) -> None:
        self.inner = inner
        self._client = client
        self._frames = FrameProtocol(client, [])
        self._head = b""  # the start of a frame head, until the rest comes
        self._payload = 0  # bytes of the current data frame still to come
        self._key = b"\0\0\0\0"  # its masking key
        self._offset = 0  # where in its payload (the key turns with it)
        self._other = 0  # bytes of the current frame that go to wsproto
        self._fragmented = False  # wsproto is inside a fragmented message: it reads all
        self._keys = b""  # masking keys drawn ahead (a client's)
        self._control = b""  # pong or close frames waiting for a writer to finish
        self._sending = False  # a send is waiting on ``inner``: frames must not cut in
        self._ended = False  # a close frame came, or the connection failed
        self._closing = False  # our close frame is out: no more data frames
        self._early = received  # bytes that came with the handshake, not yet read

    def recv(self) -> bytes:
        if self._early:
            early, self._early = self._early, b""
            payloads = self._read(early)
            if payloads:
                return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        while not self._ended:
            data = self.inner.recv()
            if not data:
                self._ended = True
                break
            payloads = self._read(data)
            if payloads:
                return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        return b""

    def _read(self, data: bytes) -> list[bytes]:
        """The payloads of the data frames in ``data`` (with what came before)."""
        if self._head:
            data, self._head = self._head + data, b""
        payloads: list[bytes] = []
        size = len(data)
        at = 0
        while at < size and not self._ended:
            if self._payload:  # inside a data frame
                end = min(size, at + self._payload)
                if self._client:
                    payloads.append(data[at:end])
                else:
                    key = self._key
                    turn = self._offset & 3
                    payloads.append(unmask(data, at, end, key[turn:] + key[:turn]
                                           if turn else key))
                    self._offset += end - at
                self._payload -= end - at
                at = end
                continue
            if self._other:  # inside a frame wsproto reads
                end = min(size, at + self._other)
                self._other -= end - at
                self._frames.receive_bytes(data[at:end])
                at = end
                self._wsproto_frames(payloads)
                continue
            at = self._frame_head(data, at)
            if at < 0:  # the head is cut: wait for the rest
                self._head = data[-at - 1:]
                break
        return payloads

    def _frame_head(self, data: bytes, at: int) -> int:
        """Read the head of the frame at ``data[at]``: where its payload starts, or (the
        head being incomplete) ``-1 - at``. Frames other than data frames go to wsproto."""
        size = len(data)
        if size - at < 2:
            return -1 - at
        first, second = data[at], data[at + 1]
        length = second & 0x7F
        start = at + 2
        if length == 126:
            start += 2
        elif length == 127:
            start += 8
        masked = second & _MASKED
        if masked:
            start += 4
        if start > size:
            return -1 - at
        if length == 126:
            length = int.from_bytes(data[at + 2:at + 4], "big")
            shortest = length >= 126
        elif length == 127:
            length = int.from_bytes(data[at + 2:at + 10], "big")
            shortest = 65535 < length < 1 << 63
        else:
            shortest = True
        if (first != _FIN_BINARY or not shortest or bool(masked) == self._client
                or self._fragmented):
            self._other = start - at + length  # wsproto checks it, complains, answers
            return at
        self._payload = length
        if masked:
            self._key = data[start - 4:start]
            self._offset = 0
        return start

    def _wsproto_frames(self, payloads: list[bytes]) -> None:
        """The frames wsproto read: data kept, pings and close frames answered."""
        try:
            for frame in self._frames.received_frames():
                opcode, payload = frame.opcode, frame.payload
                if isinstance(payload, tuple):  # a close frame: (code, reason)
                    self._ended = True
                    if not self._closing:  # the peer's close: echo it
                        self._closing = True
                        self._control_frame(self._frames.close(*payload))
                    break
                if opcode is Opcode.PING:
                    self._control_frame(self._frames.pong(payload))  # type: ignore[arg-type]
                elif opcode in (Opcode.BINARY, Opcode.TEXT):
                    self._fragmented = not frame.message_finished
                    if isinstance(payload, str):  # text: gorilla never sends any, take it
                        payloads.append(payload.encode())
                    elif payload:
                        payloads.append(bytes(payload))
        except ParseFailed as exc:  # frames wsproto cannot read: tell the peer, then fail
            self._ended = True
            if not self._closing:
                self._closing = True
                self._control_frame(self._frames.close(exc.code, str(exc)))
            raise ConnectionError(f"websocket: {exc}") from None

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
        """``data`` as one binary frame (a client's masked with a fresh random key), after
        any control frame waiting: what one write sends."""
        if self._closing:
            raise BrokenPipeError("websocket: closed")
        control = self._control
        if not self._client:
            frame = control + data_frame_head(len(data), None) + data
        else:
            keys = self._keys
            if not keys:
                keys = os.urandom(4 * _KEYS)
            key, self._keys = keys[:4], keys[4:]
            head = control + data_frame_head(len(data), key)
            masked = bytearray(head)
            masked += data
            mask_in_place(masked, len(head), key)
            frame = cast(bytes, masked)  # a bytearray, which every stream beneath takes
        if control:
            self._control = b""
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
