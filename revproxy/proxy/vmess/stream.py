"""VMess body streams over a transport's stream: the server end (after a request header was read)
and the client end (which sends the request header). Codec errors surface as
``ConnectionError``."""

from __future__ import annotations

import os

from revproxy.net.stream import TunnelStream
from revproxy.proxy.vmess.body import (
    NONCE_COUNT,
    BodyError,
    BodyReader,
    BodyWriter,
    request_body_reader,
    request_body_writer,
    response_body_reader,
    response_body_writer,
)
from revproxy.proxy.vmess.header import (
    HandshakeError,
    RequestHeader,
    ResponseDecoder,
    seal_response,
)

# The chunks a writer seals before it refuses more (a nonce would repeat) and its connection
# ends: 2**16; REVPROXY_NONCE_LIMIT lowers it for tests.
NONCE_LIMIT = min(int(os.environ.get("REVPROXY_NONCE_LIMIT", NONCE_COUNT)), NONCE_COUNT)
# A stream that has sealed or opened this many chunks should be replaced (a tunnel is drained
# and redialled) well before its writer's nonces run out and the connection must end.
# REVPROXY_ROTATE_CHUNKS lowers it for tests.
ROTATE_AT = int(os.environ.get("REVPROXY_ROTATE_CHUNKS", NONCE_LIMIT - NONCE_LIMIT // 16))


class _VMessStream:
    """Shared reading/writing of body chunks; subclasses decide the keys and the preamble."""

    def __init__(self, transport: TunnelStream, reader: BodyReader | None, writer: BodyWriter,
                 preamble: bytes) -> None:
        self.transport = transport
        self._reader = reader
        self._writer = writer
        self._preamble = preamble  # sent in front of the first body bytes
        # The most bytes one send seals into a single chunk: a mux connection reads its
        # sessions' sockets in such pieces (see mux/connection.py).
        self.seal_size = writer.max_payload
        self._write_ended = False

    def _feed(self, data: bytes) -> bytes | None:
        """Decode received bytes; None means 'need more'."""
        assert self._reader is not None
        try:
            payloads = self._reader.feed(data)
        except BodyError as exc:
            raise ConnectionError(f"vmess: bad body: {exc}") from None
        if payloads:
            return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        if self._reader.finished:
            return b""
        return None

    def recv(self) -> bytes:
        while True:
            reader = self._reader
            if reader is not None and reader.finished:
                return b""
            data = self.transport.recv()
            if not data:
                return b""
            out = self._decode(data)
            if out is not None:
                return out

    def _decode(self, data: bytes) -> bytes | None:
        return self._feed(data)

    def _seal(self, data: bytes | memoryview) -> bytes:
        out = self._writer.seal(data)
        if self._preamble:
            out = self._preamble + out
            self._preamble = b""
        return out

    def send(self, data: bytes | memoryview) -> None:
        self.transport.send(self._seal(data))

    def send_nowait(self, data: bytes) -> bool:
        return self.transport.send_nowait(self._seal(data))

    def flush(self) -> None:
        self.transport.flush()

    def close_write(self) -> None:
        if self._write_ended:
            return
        self._write_ended = True
        try:
            self.transport.send(self._preamble + self._writer.end())
            self._preamble = b""
        except OSError:
            return
        self.transport.close_write()

    def worn(self) -> bool:
        """Whether this stream has used enough nonces in either direction to be replaced."""
        reader = self._reader
        return self._writer.chunks >= ROTATE_AT or (reader is not None
                                                    and reader.chunks >= ROTATE_AT)

    def close(self) -> None:
        self.transport.close()

    def settimeout(self, seconds: float | None) -> None:
        self.transport.settimeout(seconds)


class VMessServerStream(_VMessStream):
    """Server end: decodes the request body, encodes the response (header sent lazily)."""

    def __init__(self, transport: TunnelStream, header: RequestHeader, rest: bytes) -> None:
        super().__init__(transport, request_body_reader(header),
                         response_body_writer(header, nonce_limit=NONCE_LIMIT),
                         seal_response(header))
        self._early = rest

    def recv(self) -> bytes:
        if self._early:
            early, self._early = self._early, b""
            out = self._feed(early)
            if out is not None:
                return out
        return super().recv()


class VMessClientStream(_VMessStream):
    """Client end: the request header went out on connect; the response header comes first."""

    def __init__(self, transport: TunnelStream, header: RequestHeader) -> None:
        super().__init__(transport, None, request_body_writer(header, nonce_limit=NONCE_LIMIT),
                         b"")
        self._header = header
        self._response = ResponseDecoder(header)

    def _decode(self, data: bytes) -> bytes | None:
        if self._reader is None:
            try:
                if not self._response.feed(data):
                    return None
            except HandshakeError as exc:
                raise ConnectionError(f"vmess: bad response header: {exc}") from None
            self._reader = response_body_reader(self._header)
            data = self._response.rest
            if not data:
                return None
        return self._feed(data)
