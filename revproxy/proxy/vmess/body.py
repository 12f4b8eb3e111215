"""VMess body chunk codec, sans-IO: BodyWriter seals application bytes into chunks, BodyReader
opens them incrementally, for every security and option combination V2Ray 4.34 / v5 produce.

Chunk = size ‖ payload ‖ padding, where size counts payload (with its AEAD tag) and padding.
The size is plain, XOR-masked with SHAKE128(IV) (ChunkMasking), or itself AEAD-sealed
(AuthenticatedLength, v5). With GlobalPadding each chunk draws its padding length (u16 % 64)
from the same SHAKE stream *before* the length mask. A chunk whose payload is empty ends the
stream. AEAD ciphers always chunk; "none" chunks only with ChunkStream and then carries, for a
stream, just size ‖ data (V2Ray's ChunkStreamWriter, no padding), for UDP (packet) the AEAD
chunk layout without a tag."""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .crypto import ShakeStream, chacha20_key, kdf16
from .header import (
    COMMAND_UDP,
    OPTION_AUTH_LENGTH,
    OPTION_CHUNK_MASKING,
    OPTION_CHUNK_STREAM,
    OPTION_GLOBAL_PADDING,
    SECURITY_AES128_GCM,
    SECURITY_CHACHA20_POLY1305,
    SECURITY_NONE,
    SECURITY_ZERO,
    RequestHeader,
    response_body_key_iv,
)

MAX_CHUNK_SIZE = 0xFFFF  # the u16 size field, after unmasking
_TAG = 16
_MAX_PADDING = 63
_PAD_POOL = 4096  # random padding bytes fetched at once
# The largest payload a chunk can carry in every mode. Large chunks use few nonces: a writer
# never reuses one, so a connection ends after 2**16 chunks (4 GiB at this size).
MAX_WRITE_PAYLOAD = MAX_CHUNK_SIZE - _TAG - _MAX_PADDING
NONCE_COUNT = 1 << 16  # the nonce's counter is a u16
_READER_NONCES = 1 << 62  # a reader counts on past 2**16 (V2Ray's writers wrap the counter)
_AUTH_LEN_SALT = b"auth_len"
_U16 = struct.Struct(">H")

_RAW = 0  # "none" without ChunkStream: bytes pass through untouched
_STREAM = 1  # "none" + ChunkStream on a stream: size ‖ data, no padding, size 0 ends
_AUTH = 2  # AEAD ciphers (always), or "none" + ChunkStream for UDP: authenticated chunks


class BodyError(Exception):
    """A body chunk failed authentication or is malformed; the connection must be dropped."""


class NonceExhausted(ConnectionAbortedError):
    """A writer sealed 2**16 chunks (or its lower ``nonce_limit``): one more would reuse a
    nonce, so the connection ends."""


_Aead = AESGCM | ChaCha20Poly1305


def _aead(security: int, key: bytes) -> _Aead:
    if security == SECURITY_AES128_GCM:
        return AESGCM(key)
    return ChaCha20Poly1305(chacha20_key(key))


class _ChunkCodec:
    """State shared by writer and reader: mode, ciphers, nonce counters and the SHAKE stream."""

    def __init__(
        self,
        security: int,
        key: bytes,
        iv: bytes,
        option: int,
        packet: bool,
        request_key: bytes | None,
        request_iv: bytes | None,
        nonce_limit: int,
    ) -> None:
        # A writer never wraps its nonce counter. A reader follows V2Ray's writers, which
        # wrap it (so interop with a long-lived V2Ray tunnel keeps working).
        self.nonce_limit = nonce_limit
        if security == SECURITY_ZERO:
            security = SECURITY_NONE
        if security not in (SECURITY_AES128_GCM, SECURITY_CHACHA20_POLY1305, SECURITY_NONE):
            raise ValueError(f"unsupported body security {security}")
        if len(key) != 16 or len(iv) != 16:
            raise ValueError("body key and IV must be 16 bytes")
        if option & OPTION_GLOBAL_PADDING and not option & OPTION_CHUNK_MASKING:
            raise ValueError("GlobalPadding needs ChunkMasking")  # V2Ray refuses it too
        self.chunked_end = bool(option & OPTION_CHUNK_STREAM)
        self.aead: _Aead | None = None
        self.overhead = 0
        if security != SECURITY_NONE:
            self.mode = _AUTH
            self.aead = _aead(security, key)
            self.overhead = _TAG
        elif not option & OPTION_CHUNK_STREAM:
            self.mode = _RAW
        else:
            self.mode = _AUTH if packet else _STREAM
        masked = option & OPTION_CHUNK_MASKING and self.mode != _RAW
        self.shake = ShakeStream(iv) if masked else None
        self.padding = bool(option & OPTION_GLOBAL_PADDING) and self.mode == _AUTH
        self.iv_tail = bytes(iv[2:12])
        self.counter = 0
        # v5 seals the length with a key and nonces from the *request* body key/IV in both
        # directions (proxy/vmess/encoding: KDF16(requestBodyKey, "auth_len")).
        self.length_aead: _Aead | None = None
        self.length_iv_tail = b""
        self.length_counter = 0
        if option & OPTION_AUTH_LENGTH and self.aead is not None:
            seed_key = key if request_key is None else request_key
            seed_iv = iv if request_iv is None else request_iv
            self.length_aead = _aead(security, kdf16(seed_key, _AUTH_LEN_SALT))
            self.length_iv_tail = bytes(seed_iv[2:12])
        self.size_len = 2 + (_TAG if self.length_aead is not None else 0)

    def next_nonce(self) -> bytes:
        """The next chunk's nonce; ``counter`` counts every chunk (it is not wrapped)."""
        counter = self.counter
        if counter >= self.nonce_limit:
            raise NonceExhausted(f"VMess: {counter} chunks sealed, no unused nonce left")
        self.counter = counter + 1
        return (counter & 0xFFFF).to_bytes(2, "big") + self.iv_tail

    def next_length_nonce(self) -> bytes:
        counter = self.length_counter
        if counter >= self.nonce_limit:
            raise NonceExhausted(f"VMess: {counter} lengths sealed, no unused nonce left")
        self.length_counter = counter + 1
        return (counter & 0xFFFF).to_bytes(2, "big") + self.length_iv_tail


class BodyWriter:
    """Seals application bytes into VMess body chunks.

    `packet=True` (the UDP command) makes every seal() exactly one chunk, i.e. one datagram.
    `request_key`/`request_iv` are the request-direction body key/IV, from which v5 derives the
    AuthenticatedLength cipher in both directions; they default to key/iv, which is right for
    the request direction (use the response_body_writer() helper for the response direction).
    ``nonce_limit`` (at most NONCE_COUNT) lowers the number of chunks it seals before
    refusing more, for tests.
    """

    def __init__(
        self,
        security: int,
        key: bytes,
        iv: bytes,
        option: int,
        *,
        max_payload: int = MAX_WRITE_PAYLOAD,
        packet: bool = False,
        request_key: bytes | None = None,
        request_iv: bytes | None = None,
        nonce_limit: int = NONCE_COUNT,
    ) -> None:
        if not 0 < nonce_limit <= NONCE_COUNT:
            raise ValueError(f"nonce_limit must be in 1..{NONCE_COUNT}")
        self._c = _ChunkCodec(security, key, iv, option, packet, request_key, request_iv,
                              nonce_limit)
        limit = MAX_CHUNK_SIZE - self._c.overhead - (_MAX_PADDING if self._c.padding else 0)
        if not 0 < max_payload <= limit:
            raise ValueError(f"max_payload must be in 1..{limit}")
        self._max = max_payload
        self._packet = packet
        self._pad_pool = b""  # random padding bytes, fetched _PAD_POOL at a time
        self._pad_at = 0

    def _padding(self, n: int) -> bytes:
        """``n`` fresh random bytes: one getrandom call per _PAD_POOL bytes, not per chunk."""
        at = self._pad_at
        if at + n > len(self._pad_pool):
            self._pad_pool = os.urandom(_PAD_POOL)
            at = 0
        self._pad_at = at + n
        return self._pad_pool[at:at + n]

    def _chunk(self, piece: bytes) -> bytes:
        c = self._c
        if c.mode == _STREAM:
            size = len(piece)
            if c.shake is not None:
                size ^= c.shake.next_u16()
            return _U16.pack(size) + piece
        # drawn before the length mask; padding implies a shake stream
        pad = c.shake.next_u16() % 64 if c.padding else 0  # type: ignore[union-attr]
        size = len(piece) + c.overhead + pad
        if c.length_aead is not None:
            head = c.length_aead.encrypt(c.next_length_nonce(), _U16.pack(size - _TAG), None)
        elif c.shake is not None:
            head = _U16.pack(size ^ c.shake.next_u16())
        else:
            head = _U16.pack(size)
        body = piece if c.aead is None else c.aead.encrypt(c.next_nonce(), piece, None)
        if pad:
            return b"".join((head, body, self._padding(pad)))
        return head + body

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """Chunks carrying data, split into <= max_payload pieces (packet mode: exactly one
        chunk, ValueError if too large). Empty data gives b"", as an empty chunk ends the body."""
        if self._c.mode == _RAW:
            return bytes(data)
        n = len(data)
        if n == 0:
            return b""
        if n <= self._max:
            return self._chunk(bytes(data))
        if self._packet:
            raise ValueError(f"datagram of {n} bytes exceeds max_payload {self._max}")
        view = memoryview(data)
        step = self._max
        return b"".join([self._chunk(bytes(view[i : i + step])) for i in range(0, n, step)])

    @property
    def max_payload(self) -> int:
        """The most bytes one chunk carries: a seal() of this many is one chunk."""
        return self._max

    @property
    def chunks(self) -> int:
        """Chunks sealed so far (nonces used); at its nonce limit the writer refuses more."""
        return self._c.counter

    def end(self) -> bytes:
        """The end-of-stream chunk (empty payload); b"" when the option lacks ChunkStream."""
        if not self._c.chunked_end:
            return b""
        return self._chunk(b"")


class BodyReader:
    """Opens VMess body chunks incrementally. After the end chunk `finished` is True and any
    further bytes are ignored, as V2Ray stops reading there. Without ChunkStream ("none"/"zero")
    the bytes pass through and only the connection's close ends the body."""

    def __init__(
        self,
        security: int,
        key: bytes,
        iv: bytes,
        option: int,
        *,
        packet: bool = False,
        request_key: bytes | None = None,
        request_iv: bytes | None = None,
    ) -> None:
        self._c = _ChunkCodec(security, key, iv, option, packet, request_key, request_iv,
                              _READER_NONCES)
        self._buf = bytearray()
        self._size = -1  # size of the chunk being read (after its size field), -1 = none yet
        self._pad = 0
        self.finished = False

    @property
    def chunks(self) -> int:
        """Authenticated chunks opened so far (V2Ray's writers wrap the nonce after 2**16)."""
        return self._c.counter

    def _read_size(self, head: bytes) -> int:
        """Decode one size field; returns the chunk size, or -1 for the end chunk."""
        c = self._c
        if c.mode == _STREAM:
            size = _U16.unpack(head)[0]
            if c.shake is not None:
                size ^= c.shake.next_u16()
            return size if size else -1
        # padding implies a shake stream
        self._pad = pad = c.shake.next_u16() % 64 if c.padding else 0  # type: ignore[union-attr]
        if c.length_aead is not None:
            try:
                plain = c.length_aead.decrypt(c.next_length_nonce(), head, None)
            except InvalidTag:
                raise BodyError("chunk length authentication failed") from None
            size = (_U16.unpack(plain)[0] + _TAG) & 0xFFFF  # V2Ray adds in uint16
        elif c.shake is not None:
            size = _U16.unpack(head)[0] ^ c.shake.next_u16()
        else:
            size = _U16.unpack(head)[0]
        if size == c.overhead + pad:
            return -1
        if size < c.overhead + pad:
            raise BodyError(f"chunk size {size} below overhead {c.overhead} + padding {pad}")
        return size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; returns the payloads now complete (possibly none). In packet mode
        each payload is one datagram. Raises BodyError on authentication failure or garbage."""
        if self.finished or not data:
            return []
        c = self._c
        if c.mode == _RAW:
            return [bytes(data)]
        if self._buf:
            self._buf += data
            src: bytes | bytearray | memoryview = self._buf
        else:
            src = data
        end = len(src)
        pos = 0
        out: list[bytes] = []
        size_len = c.size_len
        while True:
            if self._size < 0:
                if end - pos < size_len:
                    break
                size = self._read_size(bytes(src[pos : pos + size_len]))
                pos += size_len
                if size < 0:
                    self.finished = True
                    pos = end
                    break
                self._size = size
            size = self._size
            if c.mode == _STREAM:  # no authentication: hand out partial data at once
                take = min(size, end - pos)
                if take == 0:
                    break
                out.append(bytes(src[pos : pos + take]))
                pos += take
                self._size = size - take or -1
                continue
            if end - pos < size:
                break
            sealed = bytes(src[pos : pos + size - self._pad])
            pos += size
            self._size = -1
            if c.aead is None:
                out.append(sealed)
                continue
            try:
                out.append(c.aead.decrypt(c.next_nonce(), sealed, None))
            except InvalidTag:
                raise BodyError("chunk authentication failed") from None
        if src is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(src[pos:])
        return out


def request_body_writer(header: RequestHeader, *, max_payload: int = MAX_WRITE_PAYLOAD,
                        nonce_limit: int = NONCE_COUNT) -> BodyWriter:
    """Client: writer for the request body described by header."""
    return BodyWriter(
        header.security,
        header.body_key,
        header.body_iv,
        header.option,
        max_payload=max_payload,
        packet=header.command == COMMAND_UDP,
        nonce_limit=nonce_limit,
    )


def request_body_reader(header: RequestHeader) -> BodyReader:
    """Server: reader for the request body described by header."""
    return BodyReader(
        header.security,
        header.body_key,
        header.body_iv,
        header.option,
        packet=header.command == COMMAND_UDP,
    )


def response_body_writer(header: RequestHeader, *, max_payload: int = MAX_WRITE_PAYLOAD,
                         nonce_limit: int = NONCE_COUNT) -> BodyWriter:
    """Server: writer for the response body (SHA256-derived key/IV, v5 length key from the
    request key/IV)."""
    key, iv = response_body_key_iv(header)
    return BodyWriter(
        header.security,
        key,
        iv,
        header.option,
        max_payload=max_payload,
        packet=header.command == COMMAND_UDP,
        request_key=header.body_key,
        request_iv=header.body_iv,
        nonce_limit=nonce_limit,
    )


def response_body_reader(header: RequestHeader) -> BodyReader:
    """Client: reader for the response body (the counterpart of response_body_writer)."""
    key, iv = response_body_key_iv(header)
    return BodyReader(
        header.security,
        key,
        iv,
        header.option,
        packet=header.command == COMMAND_UDP,
        request_key=header.body_key,
        request_iv=header.body_iv,
    )
