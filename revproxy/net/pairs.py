"""Carrying a visitor that cannot move to another worker as it is: a connected pair of
sockets per visitor, one end for the other worker, the other relayed here.

Only a bare TCP socket or a UDP source's own socket can be handed to a sibling worker. Any
other stream (a TLS or WebSocket transport, a SOCKS/HTTP/VMess/VLESS/Shadowsocks inbound
after its handshake, a SOCKS or Shadowsocks UDP session) is *carried*: ``Carrier`` makes a
pair of connected sockets, the ``far`` end goes to the sibling (to which it looks like an
accepted visitor) and ``relay`` moves bytes between the visitor's stream and the ``near``
end with net/relay.py (its buffers, idle limits and reset propagation). The cost is one
more hop through the kernel, only for visitors whose tunnel is in a sibling.

- Byte streams ride a TCP connection over loopback (a listener made for that one
  connection, closed once it is accepted), not a Unix socket pair: a Unix socket cannot say
  that it was cut (its peer reads an orderly end of stream either way), and a cut on either
  side must reach the other as a reset. The relay here resets ``near`` when the visitor is
  cut; the sibling resets ``far`` when its tunnel session is, and the relay here passes that
  reset on to the visitor's socket.
- Datagram sessions (``datagrams``) ride a Unix SOCK_SEQPACKET pair: each message is one
  datagram, boundaries kept both ways. Datagrams have no half-close: the sibling closing its
  end ends the session here at once, and this end closing ends the sibling's read side.

Traffic is counted once, here, on the visitor's own connection: the sibling serves a carried
visitor's end through ``UncountedStream`` (the hand-off says it is carried).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from gevent.socket import wait_read, wait_write

from revproxy.net.relay import relay
from revproxy.net.stream import SocketStream, Stream, tune_socket
from revproxy.policy import SessionPolicy

CONNECT_WAIT = 2.0  # seconds for the loopback connection (it is made at once, normally)
_ATTEMPTS = 4  # strangers that may race us to the listener before we give up


class CarriedSocket(socket.socket):
    """The far end of a carried visitor, as the receiving worker holds it: its bytes were
    counted by the worker that carries it."""

    __slots__ = ()


class UncountedStream(SocketStream):
    """A carried visitor's end as a stream that counts nothing (the sending worker counts
    the visitor's traffic on its own connection): the byte counters read 0 and ignore what
    is added to them."""

    __slots__ = ()

    @property
    def bytes_received(self) -> int:
        return 0

    @bytes_received.setter
    def bytes_received(self, _value: int) -> None:
        pass

    @property
    def bytes_sent(self) -> int:
        return 0

    @bytes_sent.setter
    def bytes_sent(self, _value: int) -> None:
        pass


def visitor_stream(visitor: socket.socket) -> SocketStream:
    """The stream a worker serves a handed-over stream visitor's socket through."""
    return UncountedStream(visitor) if isinstance(visitor, CarriedSocket) else \
        SocketStream(visitor)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a new TCP connection over loopback: (near, far), non-blocking."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    near = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(_ATTEMPTS)
        listener.setblocking(False)
        near.setblocking(False)
        code = near.connect_ex(listener.getsockname())
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, f"loopback connection: {errno.errorcode.get(code, code)}")
        if code:
            wait_write(near.fileno(), CONNECT_WAIT, TimeoutError("loopback connection"))
            code = near.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, "loopback connection failed")
        ours = near.getsockname()
        for _ in range(_ATTEMPTS):
            try:
                far, peer = listener.accept()
            except BlockingIOError:
                wait_read(listener.fileno(), CONNECT_WAIT, TimeoutError("loopback accept"))
                continue
            if peer == ours:
                far.setblocking(False)
                tune_socket(near)
                tune_socket(far)
                return near, far
            far.close()  # a local stranger raced us to the listener
        raise OSError(errno.ECONNREFUSED, "loopback connection not accepted")
    except BaseException:
        near.close()
        raise
    finally:
        listener.close()


class _PacketEnd(SocketStream):
    """The near end of a datagram pair: its end of stream is the end of the session."""

    __slots__ = ()

    def recv(self) -> bytes:
        data = SocketStream.recv(self)
        if not data:
            raise ConnectionAbortedError("the carried session ended")
        return data


class Carrier:
    """The pair of one carried visitor (see the module docstring). ``far`` goes to the
    sibling; once it is there, ``relay`` serves the visitor. ``close`` if it never is."""

    __slots__ = ("near", "far", "datagrams")

    def __init__(self, datagrams: bool) -> None:
        if datagrams:
            near, far = socket.socketpair(socket.AF_UNIX,
                                          socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            near.setblocking(False)
        else:
            near, far = _tcp_pair()
        self.datagrams = datagrams
        self.near: socket.socket = near
        # (a CarriedSocket: the hand-off tells the sibling that it is carried)
        self.far: socket.socket = CarriedSocket(fileno=far.detach())
        self.far.setblocking(False)

    def relay(self, stream: Stream, policy: SessionPolicy,
              on_done: Callable[[], None] | None = None) -> None:
        """The sibling holds ``far``: close our copy and relay ``stream`` ⇄ ``near`` until
        done (returns then), then call ``on_done``."""
        self.far.close()
        near = _PacketEnd(self.near) if self.datagrams else SocketStream(self.near)
        relay(stream, near, policy, on_done=on_done)

    def close(self) -> None:
        self.far.close()
        self.near.close()
