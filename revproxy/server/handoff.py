"""Passing an accepted visitor socket to the worker that owns the chosen tunnel.

Each worker binds a Unix datagram socket in the abstract namespace, named after its pid. A
hand-off is one datagram: a small JSON header, the visitor's first payload, and the socket
itself as SCM_RIGHTS ancillary data. The receiver gets a real socket it can relay as if it had
accepted it.
"""

from __future__ import annotations

import array
import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAX_DATAGRAM = 200_000
_LEN = struct.Struct("!I")


def address_of(pid: int) -> str:
    return f"\0revproxy-handoff-{pid}"


@dataclass(frozen=True, slots=True)
class Handoff:
    """What travels with a handed-off visitor socket."""

    tunnel_id: int
    portal_tag: str
    network: str
    address: str
    port: int
    source: str
    first_payload: bytes

    def encode(self) -> bytes:
        head = json.dumps([self.tunnel_id, self.portal_tag, self.network, self.address,
                           self.port, self.source]).encode()
        return _LEN.pack(len(head)) + head + self.first_payload

    @classmethod
    def decode(cls, data: bytes) -> Handoff:
        """Raises ValueError on anything malformed."""
        if len(data) < _LEN.size:
            raise ValueError("hand-off too short")
        (size,) = _LEN.unpack_from(data)
        try:
            tunnel_id, tag, network, address, port, source = json.loads(
                data[_LEN.size:_LEN.size + size])
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"bad hand-off header: {exc}") from None
        return cls(int(tunnel_id), str(tag), str(network), str(address), int(port), str(source),
                   bytes(data[_LEN.size + size:]))


def bind_endpoint(pid: int, socket_factory: Callable[..., socket.socket]) -> socket.socket:
    """This worker's receiving end (``socket_factory`` is gevent's socket in workers)."""
    sock = socket_factory(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_DATAGRAM * 4)
    sock.bind(address_of(pid))
    return sock


def send(endpoint: socket.socket, pid: int, handoff: Handoff, visitor: socket.socket,
         sleep: Callable[[float], None], patience: float = 2.0) -> None:
    """Send ``visitor`` to worker ``pid``; raises OSError if that worker is gone or does not
    take it within ``patience`` seconds.

    The receiver's queue is short (net.unix.max_dgram_qlen) and a full queue does not make
    the sender's socket unwritable, so waiting for writability cannot work: retry with
    growing sleeps instead.
    """
    fds = array.array("i", [visitor.fileno()])
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
    message = [handoff.encode()]
    delay = 0.0005
    waited = 0.0
    while True:
        try:
            endpoint.sendmsg(message, ancillary, socket.MSG_DONTWAIT, address_of(pid))
            return
        except BlockingIOError:
            if waited >= patience:
                raise TimeoutError(f"worker {pid} is not taking hand-offs") from None
        sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.05)


def receive(endpoint: socket.socket) -> tuple[Handoff | None, int | None]:
    """One hand-off: (metadata, the received fd); either may be None when malformed."""
    data, ancdata, _flags, _addr = endpoint.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4 * 4))
    fd = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for extra in fds[1:]:
                socket.close(extra)
            if fds:
                fd = fds[0]
    try:
        return Handoff.decode(data), fd
    except ValueError:
        return None, fd
