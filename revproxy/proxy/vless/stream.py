"""VLESS bodies over a transport's stream: the server end sends the response header in front
of its first bytes (as V2Ray does); the client end reads the response header first. A UDP
request's body is framed in length-prefixed datagrams, one per ``send`` and per ``recv``.
Codec errors surface as ``ConnectionError``."""

from __future__ import annotations

from collections import deque

from revproxy.net.stream import TunnelStream
from revproxy.proxy.vless.codec import (
    RESPONSE,
    PacketDecoder,
    ResponseDecoder,
    VLESSError,
    encode_packet,
)


class _VLESSStream:
    __slots__ = ("transport", "_preamble", "_packets", "_queue", "_pending")

    def __init__(self, transport: TunnelStream, udp: bool, preamble: bytes,
                 early: bytes) -> None:
        self.transport = transport
        self._preamble = preamble  # goes in front of the first bytes sent
        self._packets = PacketDecoder() if udp else None
        self._queue: deque[bytes] = deque()
        self._pending = early  # received, not yet decoded

    def _body(self, data: bytes) -> None:
        """Received body bytes, queued as what ``recv`` gives."""
        if self._packets is None:
            self._queue.append(data)
        else:
            self._queue.extend(self._packets.feed(data))

    def _received(self, data: bytes) -> None:
        self._body(data)

    def recv(self) -> bytes:
        if self._pending:
            pending, self._pending = self._pending, b""
            self._received(pending)
        queue = self._queue
        while not queue:
            data = self.transport.recv()
            if not data:
                return b""
            self._received(data)
        return queue.popleft()

    def _encode(self, data: bytes | memoryview) -> bytes | memoryview:
        if self._packets is not None:
            try:
                data = encode_packet(data)
            except ValueError as exc:
                raise ConnectionError(f"vless: {exc}") from None
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        return data

    def send(self, data: bytes | memoryview) -> None:
        if data:
            self.transport.send(self._encode(data))

    def send_nowait(self, data: bytes) -> bool:
        if not data:
            return True
        return self.transport.send_nowait(bytes(self._encode(data)))

    def flush(self) -> None:
        self.transport.flush()

    def close_write(self) -> None:
        try:
            if self._preamble:
                preamble, self._preamble = self._preamble, b""
                self.transport.send(preamble)
        except OSError:
            return
        self.transport.close_write()

    def close(self) -> None:
        self.transport.close()

    def settimeout(self, seconds: float | None) -> None:
        self.transport.settimeout(seconds)


class VLESSServerStream(_VLESSStream):
    """The server end, after the request header: ``early`` is the body that came with it."""

    __slots__ = ()

    def __init__(self, transport: TunnelStream, udp: bool, early: bytes) -> None:
        super().__init__(transport, udp, RESPONSE, early)


class VLESSClientStream(_VLESSStream):
    """The client end, after the request header was sent."""

    __slots__ = ("_response",)

    def __init__(self, transport: TunnelStream, udp: bool) -> None:
        super().__init__(transport, udp, b"", b"")
        self._response: ResponseDecoder | None = ResponseDecoder()

    def _received(self, data: bytes) -> None:
        response = self._response
        if response is not None:
            try:
                if not response.feed(data):
                    return
            except VLESSError as exc:
                raise ConnectionError(f"vless: bad response: {exc}") from None
            self._response = None
            data = response.rest
            if not data:
                return
        self._body(data)
