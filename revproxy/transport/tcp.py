"""Socket options (``sockopt``) on outgoing TCP sockets, as V2Ray 4.34 sets them on Linux
(transport/internet/sockopt_linux.go): ``mark`` is SO_MARK, ``tcpFastOpen``
TCP_FASTOPEN_CONNECT, ``tproxy`` IP_TRANSPARENT. SO_MARK and IP_TRANSPARENT need
CAP_NET_ADMIN: without it the error says so.

A listener's options are set where it is bound, by the master before it forks
(``revproxy.net.listen``): workers may have dropped the privileges they need.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from revproxy.net.listen import IP_TRANSPARENT, SO_MARK, Sockopt, set_option

TCP_FASTOPEN_CONNECT = 30


def outgoing_options(sockopt: Sockopt) -> Callable[[socket.socket], None] | None:
    """What to do to an outgoing socket before it connects (None: nothing)."""
    if not sockopt.mark and sockopt.tcp_fast_open is None and sockopt.tproxy == "off":
        return None

    def apply(sock: socket.socket) -> None:
        if sockopt.mark:
            set_option(sock, socket.SOL_SOCKET, SO_MARK, sockopt.mark, "mark", "SO_MARK", True)
        if sockopt.tcp_fast_open is not None:
            set_option(sock, socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT,
                       int(sockopt.tcp_fast_open), "tcpFastOpen", "TCP Fast Open", False)
        if sockopt.tproxy != "off":
            set_option(sock, socket.SOL_IP, IP_TRANSPARENT, 1, "tproxy", "IP_TRANSPARENT",
                       True)

    return apply
