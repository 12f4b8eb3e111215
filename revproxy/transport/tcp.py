"""Socket options (``sockopt``) on outgoing and listening TCP sockets, as V2Ray 4.34 sets
them on Linux (transport/internet/sockopt_linux.go): ``mark`` is SO_MARK, ``tcpFastOpen``
TCP_FASTOPEN_CONNECT on outgoing sockets and TCP_FASTOPEN on listeners, ``tproxy``
IP_TRANSPARENT. SO_MARK and IP_TRANSPARENT need CAP_NET_ADMIN: without it the error says so.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from revproxy.transport.settings import SockoptSettings

SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
TCP_FASTOPEN = getattr(socket, "TCP_FASTOPEN", 23)
TCP_FASTOPEN_CONNECT = 30
FASTOPEN_QUEUE = 256  # pending Fast Open requests a listener takes


def _set(sock: socket.socket, level: int, option: int, value: int, key: str,
         name: str, privileged: bool) -> None:
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        need = " (it needs CAP_NET_ADMIN)" if privileged else ""
        raise OSError(exc.errno, f"sockopt.{key}: cannot set {name}{need}: "
                                 f"{exc.strerror or exc}") from None


def _options(sockopt: SockoptSettings, fast_open: int,
             fast_open_value: int) -> Callable[[socket.socket], None] | None:
    if not sockopt.mark and sockopt.tcp_fast_open is None and sockopt.tproxy == "off":
        return None

    def apply(sock: socket.socket) -> None:
        if sockopt.mark:
            _set(sock, socket.SOL_SOCKET, SO_MARK, sockopt.mark, "mark", "SO_MARK", True)
        if sockopt.tcp_fast_open is not None:
            _set(sock, socket.IPPROTO_TCP, fast_open,
                 fast_open_value if sockopt.tcp_fast_open else 0, "tcpFastOpen",
                 "TCP Fast Open", False)
        if sockopt.tproxy != "off":
            _set(sock, socket.SOL_IP, IP_TRANSPARENT, 1, "tproxy", "IP_TRANSPARENT", True)

    return apply


def outgoing_options(sockopt: SockoptSettings) -> Callable[[socket.socket], None] | None:
    """What to do to an outgoing socket before it connects (None: nothing)."""
    return _options(sockopt, TCP_FASTOPEN_CONNECT, 1)


def listener_options(sockopt: SockoptSettings) -> Callable[[socket.socket], None] | None:
    """What to do to a listening socket (None: nothing)."""
    return _options(sockopt, TCP_FASTOPEN, FASTOPEN_QUEUE)
