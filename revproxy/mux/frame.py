"""Sans-IO codec for Mux.Cool frames as V2Ray 4.34/v5 writes and reads them (common/mux/frame.go).

Encoders return ready-to-send bytes; :class:`FrameDecoder` turns a byte stream into :class:`Frame`
objects and raises :class:`MuxError` wherever V2Ray would drop the whole mux connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

STATUS_NEW = 1
STATUS_KEEP = 2
STATUS_END = 3
STATUS_KEEPALIVE = 4

OPTION_DATA = 0x01
OPTION_ERROR = 0x02

NETWORK_TCP = 1
NETWORK_UDP = 2

MAX_METADATA = 512
MAX_PAYLOAD = 0xFFFF
#: V2Ray splits stream payloads into frames of at most this size; so do we.
MAX_STREAM_PAYLOAD = 8 * 1024

ADDR_IPV4 = 1
ADDR_DOMAIN = 2
ADDR_IPV6 = 3

_U16 = struct.Struct(">H")
# metaLen | sessionID | status | option
_HEAD = struct.Struct(">HHBB")
# sessionID | status | option, read at the start of the metadata
_META = struct.Struct(">HBB")
# network | port | addrType, right after the first four metadata bytes of a New frame
_TARGET = struct.Struct(">BHB")
# metaLen | sessionID | status | option | network | port
_NEW_HEAD = struct.Struct(">HHBBBH")
# metaLen=4 | sessionID | Keep | Data | length
_KEEP_HEAD = struct.Struct(">HHBBH")

_MAPPED_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"
# V2Ray's isValidDomain (common/protocol/address.go) accepts exactly these characters.
_DOMAIN_RE = re.compile(rb"[0-9A-Za-z._-]+")
_DOMAIN_IP_START = frozenset(b"[0123456789")


class MuxError(Exception):
    """Protocol violation: the whole mux connection must be closed.

    ``frames`` holds the complete frames decoded before the violation in the same
    :meth:`FrameDecoder.feed` call, so a caller may still deliver them before closing.
    """

    def __init__(self, message: str, frames: list[Frame] | None = None) -> None:
        super().__init__(message)
        self.frames: list[Frame] = frames if frames is not None else []


@dataclass(slots=True)
class Frame:
    """One decoded frame; ``network``/``address``/``port`` are set on New frames only."""

    session_id: int
    status: int
    option: int
    network: int | None = None
    address: str | None = None
    port: int | None = None
    payload: bytes | None = None  # present iff option has OPTION_DATA


# ---------------------------------------------------------------------------------------------
# Encoding


@lru_cache(maxsize=512)
def _encode_address(address: str) -> bytes:
    """``addrType | addr`` for an IPv4/IPv6 literal or a domain V2Ray will accept."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raw = address.encode("ascii", "replace")
        if not 0 < len(raw) <= 255 or not _DOMAIN_RE.fullmatch(raw):
            raise ValueError(f"address {address!r}: not an IP nor a domain V2Ray accepts") from None
        return bytes((ADDR_DOMAIN, len(raw))) + raw
    if ip.version == 4:
        return bytes((ADDR_IPV4,)) + ip.packed
    if ip.scope_id:
        raise ValueError(f"address {address!r}: scoped IPv6 addresses cannot be sent")
    return bytes((ADDR_IPV6,)) + ip.packed


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} out of range 0..65535")


def encode_new(
    session_id: int,
    network: int,
    address: str,
    port: int,
    payload: bytes | memoryview | None = None,
) -> bytes:
    """A New frame opening ``session_id`` to ``address:port``; a payload (even empty) sets Data.

    Raises ValueError for arguments V2Ray could not send or would refuse.
    """
    if network != NETWORK_TCP and network != NETWORK_UDP:
        raise ValueError(f"network {network} is neither NETWORK_TCP nor NETWORK_UDP")
    _check_u16("session_id", session_id)
    _check_u16("port", port)
    addr = _encode_address(address)
    meta_len = 7 + len(addr)
    if payload is None:
        return _NEW_HEAD.pack(meta_len, session_id, STATUS_NEW, 0, network, port) + addr
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise ValueError(f"payload of {size} bytes does not fit one frame")
    head = _NEW_HEAD.pack(meta_len, session_id, STATUS_NEW, OPTION_DATA, network, port)
    return b"".join((head, addr, _U16.pack(size), payload))


def encode_keep(session_id: int, payload: bytes | memoryview) -> bytes:
    """One Keep frame carrying ``payload`` (at most 65535 bytes; V2Ray writes ≤ 8 KiB)."""
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise ValueError(f"payload of {size} bytes does not fit one frame")
    return _KEEP_HEAD.pack(4, session_id, STATUS_KEEP, OPTION_DATA, size) + payload


def encode_keep_chunks(
    session_id: int, data: bytes | memoryview, max_payload: int = MAX_STREAM_PAYLOAD
) -> bytes:
    """As many Keep frames as needed to carry ``data``, joined into one bytes object.

    Empty ``data`` gives ``b""`` (nothing to send). ``max_payload`` must be 1..65535.
    """
    if not 0 < max_payload <= MAX_PAYLOAD:
        raise ValueError(f"max_payload {max_payload} out of range 1..65535")
    size = len(data)
    if size <= max_payload:
        if not size:
            return b""
        return _KEEP_HEAD.pack(4, session_id, STATUS_KEEP, OPTION_DATA, size) + data
    view = memoryview(data)
    pack = _KEEP_HEAD.pack
    full_head = pack(4, session_id, STATUS_KEEP, OPTION_DATA, max_payload)
    parts: list[bytes | memoryview] = []
    append = parts.append
    last = size - max_payload
    pos = 0
    while pos < last:
        append(full_head)
        append(view[pos : pos + max_payload])
        pos += max_payload
    append(pack(4, session_id, STATUS_KEEP, OPTION_DATA, size - pos))
    append(view[pos:])
    return b"".join(parts)


def encode_end(session_id: int, error: bool = False) -> bytes:
    """An End frame closing ``session_id``; ``error`` sets the Error option (abort, not EOF)."""
    return _HEAD.pack(4, session_id, STATUS_END, OPTION_ERROR if error else 0)


_KEEPALIVE = _HEAD.pack(4, 0, STATUS_KEEPALIVE, 0)


def encode_keepalive() -> bytes:
    """A KeepAlive frame (session 0, no data); V2Ray never sends one but reads and discards it."""
    return _KEEPALIVE


# revproxy's per-session flow control rides in KeepAlive frames with data, which V2Ray reads and
# discards (common/mux/server.go and client.go, handleStatusKeepAlive): a *signal* is the magic
# and one byte. HELLO (session 0) says "I honour PAUSE and RESUME"; PAUSE asks the peer to stop
# sending on a session, RESUME to go on (mux/connection.py).
FLOW_MAGIC = b"revproxy-flow/1:"
FLOW_HELLO = 0
FLOW_PAUSE = 1
FLOW_RESUME = 2


def encode_flow(session_id: int, signal: int) -> bytes:
    """A KeepAlive frame carrying a flow-control ``signal`` for ``session_id``."""
    _check_u16("session_id", session_id)
    if not FLOW_HELLO <= signal <= FLOW_RESUME:
        raise ValueError(f"unknown flow signal {signal}")
    data = FLOW_MAGIC + bytes((signal,))
    return _HEAD.pack(4, session_id, STATUS_KEEPALIVE, OPTION_DATA) + _U16.pack(len(data)) + data


def decode_flow(payload: bytes) -> int | None:
    """The flow-control signal a KeepAlive frame's data carries; None for any other data
    (discarded, as V2Ray discards it)."""
    if len(payload) != len(FLOW_MAGIC) + 1 or not payload.startswith(FLOW_MAGIC):
        return None
    signal = payload[-1]
    return signal if signal <= FLOW_RESUME else None


# ---------------------------------------------------------------------------------------------
# Decoding


def _ip_text(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntoa(raw)
    if raw[:12] == _MAPPED_V4_PREFIX:  # V2Ray turns IPv4-mapped IPv6 into IPv4
        return socket.inet_ntoa(raw[12:])
    return str(ipaddress.IPv6Address(raw))


def _domain_text(raw: bytes) -> str:
    """A wire domain as V2Ray reads it: IP literals become IPs, other names must be plain ASCII.

    Anything outside ``[0-9A-Za-z._-]`` (non-ASCII, invalid UTF-8, IDNA U-labels) is refused
    with MuxError, as V2Ray refuses it and drops the connection; names are never re-decoded.
    """
    if not raw:
        raise MuxError("empty domain name")
    if raw[0] in _DOMAIN_IP_START:
        text = raw.decode("latin-1")
        if text[0] == "[" and text[-1] == "]":
            text = text[1:-1]
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            if ip.version == 4:
                return str(ip)
            if not ip.scope_id:
                return str(ip.ipv4_mapped or ip)
    if _DOMAIN_RE.fullmatch(raw) is None:
        raise MuxError(f"invalid domain name {raw!r}")
    return raw.decode("ascii")


def _parse_target(meta: bytes) -> tuple[int, str, int]:
    """``(network, address, port)`` of a New frame; ``meta`` is its whole metadata."""
    if len(meta) < 8:
        raise MuxError(f"New frame metadata too short ({len(meta)} bytes)")
    network, port, addr_type = _TARGET.unpack_from(meta, 4)
    if network != NETWORK_TCP and network != NETWORK_UDP:
        raise MuxError(f"unknown network type {network}")
    if addr_type == ADDR_IPV4:
        raw = meta[8:12]
        if len(raw) != 4:
            raise MuxError("truncated IPv4 address")
        address = _ip_text(raw)
    elif addr_type == ADDR_IPV6:
        raw = meta[8:24]
        if len(raw) != 16:
            raise MuxError("truncated IPv6 address")
        address = _ip_text(raw)
    elif addr_type == ADDR_DOMAIN:
        if len(meta) < 9:
            raise MuxError("truncated domain length")
        end = 9 + meta[8]
        if len(meta) < end:
            raise MuxError("truncated domain name")
        address = _domain_text(meta[9:end])
    else:
        raise MuxError(f"unknown address type {addr_type}")
    # Bytes after the address are ignored, as V2Ray ignores them.
    return network, address, port


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get back complete frames.

    Metadata longer than needed is accepted and the extra bytes ignored, as V2Ray does (v2fly v5
    uses the same layout; its Keep frames carry no address). An unknown status is a
    :class:`MuxError`: V2Ray's client and server both stop reading and close the mux connection
    on it, without skipping its data. After a MuxError the decoder raises again on every feed.
    """

    __slots__ = ("_buf", "_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back for the next feed."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """All frames completed by ``data``; the caller may reuse ``data``'s buffer afterwards."""
        if self._error is not None:
            raise MuxError(self._error)
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data  # parse in place; only an incomplete tail gets copied
        frames: list[Frame] = []
        try:
            with memoryview(src) as view:
                pos = self._parse(view, frames)
                if src is not buf and pos < len(view):
                    buf[:] = view[pos:]
        except MuxError as exc:
            self._error = str(exc)
            buf.clear()
            exc.frames = frames
            raise
        if src is buf:
            del buf[:pos]
        return frames

    @staticmethod
    def _parse(view: memoryview, frames: list[Frame]) -> int:
        """Append complete frames from ``view`` to ``frames``; return the offset consumed."""
        end = len(view)
        pos = 0
        append = frames.append
        unpack_u16 = _U16.unpack_from
        unpack_meta = _META.unpack_from
        # Declared once, not assigned: set on New frames only (no cost per frame).
        network: int | None
        address: str | None
        port: int | None
        while end - pos >= 2:
            (meta_len,) = unpack_u16(view, pos)
            if meta_len > MAX_METADATA:
                raise MuxError(f"metadata length {meta_len} exceeds {MAX_METADATA}")
            if meta_len < 4:
                raise MuxError(f"metadata length {meta_len} is shorter than 4")
            meta_start = pos + 2
            meta_end = meta_start + meta_len
            if meta_end > end:
                break
            session_id, status, option = unpack_meta(view, meta_start)
            if status == STATUS_NEW:
                network, address, port = _parse_target(view[meta_start:meta_end].tobytes())
            elif STATUS_KEEP <= status <= STATUS_KEEPALIVE:
                network = address = port = None
            else:
                raise MuxError(f"unknown frame status {status}")
            if option & OPTION_DATA:
                data_start = meta_end + 2
                if data_start > end:
                    break
                data_end = data_start + unpack_u16(view, meta_end)[0]
                if data_end > end:
                    break
                payload = view[data_start:data_end].tobytes()
                pos = data_end
            else:
                payload = None
                pos = meta_end
            append(Frame(session_id, status, option, network, address, port, payload))
        return pos
