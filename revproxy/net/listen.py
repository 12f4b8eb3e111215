"""Listening TCP sockets and bound UDP sockets, bound by the master before it forks
(gevent-free: the master imports this module).

Listening sockets travel to the workers keyed by their inbound's index; an inbound's UDP
socket (dokodemo-door with ``network`` "udp") under ``udp_listener_key(index)``.

An inbound's ``sockopt`` (``ListenerOptions``) is set here too, at bind time, as V2Ray 4.34
sets it before binding (transport/internet/sockopt_linux.go): SO_MARK and IP_TRANSPARENT
need CAP_NET_ADMIN, which workers that drop privileges no longer have."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol

BACKLOG = 2048
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
TCP_FASTOPEN = getattr(socket, "TCP_FASTOPEN", 23)
FASTOPEN_QUEUE = 256  # pending Fast Open requests a listener takes


class Sockopt(Protocol):
    """What the configuration's ``sockopt`` says (``SockoptConfig`` is one)."""

    @property
    def mark(self) -> int: ...
    @property
    def tcp_fast_open(self) -> bool | None: ...
    @property
    def tproxy(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    """An inbound's ``sockopt`` on its listening socket: SO_MARK (0: none), TCP Fast Open
    (None: the system's default), IP_TRANSPARENT (``tproxy`` other than "off")."""

    mark: int = 0
    fast_open: bool | None = None
    transparent: bool = False

    @classmethod
    def of(cls, sockopt: Sockopt) -> ListenerOptions | None:
        """The options ``sockopt`` sets on a listener; None when it sets none."""
        options = cls(sockopt.mark, sockopt.tcp_fast_open, sockopt.tproxy != "off")
        return None if options == cls() else options


def set_option(sock: socket.socket, level: int, option: int, value: int, key: str,
               name: str, privileged: bool) -> None:
    """``setsockopt``, its error naming the ``sockopt`` key and, when it is one, the
    capability the option needs."""
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        need = " (it needs CAP_NET_ADMIN)" if privileged else ""
        raise OSError(exc.errno, f"sockopt.{key}: cannot set {name}{need}: "
                                 f"{exc.strerror or exc}") from None


def set_listener_options(sock: socket.socket, options: ListenerOptions | None,
                         previous: ListenerOptions | None = None) -> None:
    """Set ``options`` on a listening socket whose options were ``previous`` (a reload may
    change them on a socket it keeps: what was set and is no more is cleared)."""
    new, old = options or ListenerOptions(), previous or ListenerOptions()
    if new.mark != old.mark:
        set_option(sock, socket.SOL_SOCKET, SO_MARK, new.mark, "mark", "SO_MARK", True)
    if new.fast_open is not None and new.fast_open != old.fast_open:
        set_option(sock, socket.IPPROTO_TCP, TCP_FASTOPEN,
                   FASTOPEN_QUEUE if new.fast_open else 0, "tcpFastOpen", "TCP Fast Open",
                   False)
    if new.transparent != old.transparent:
        set_option(sock, socket.SOL_IP, IP_TRANSPARENT, int(new.transparent), "tproxy",
                   "IP_TRANSPARENT", True)


def bind_listener(listen: str, port: int, backlog: int = BACKLOG,
                  options: ListenerOptions | None = None) -> socket.socket:
    """A listening TCP socket, ``options`` set before it binds. Accepted connections
    inherit its TCP_NODELAY and SO_KEEPALIVE (Linux copies both), which saves two system
    calls per connection. Raises OSError (naming the ``sockopt`` key it cannot set)."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    try:
        set_listener_options(sock, options)
        sock.bind((listen, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def udp_listener_key(index: int) -> int:
    """Where the UDP socket of inbound ``index`` goes among the listeners (negative: the
    TCP ones use the inbound indexes themselves)."""
    return -1 - index


def bind_datagram(listen: str, port: int) -> socket.socket:
    """A bound UDP socket (SO_REUSEADDR, as the TCP listener, so a restart rebinds at once)."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen, port))
    except OSError:
        sock.close()
        raise
    return sock
