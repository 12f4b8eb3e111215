"""systemd's readiness protocol (``Type=notify``) without libsystemd: one datagram of
``KEY=VALUE`` lines to the Unix socket named by ``$NOTIFY_SOCKET`` (a name starting with
"@" is in the abstract namespace). The master says READY=1 once its workers serve,
RELOADING=1 then READY=1 around a reload, STOPPING=1 as it stops. Gevent-free."""

from __future__ import annotations

import os
import socket
import time

SEND_TIMEOUT = 1.0  # a wedged service manager must not stall the master's loop


class Notifier:
    """Sends to ``$NOTIFY_SOCKET`` as read at creation; does nothing without one."""

    def __init__(self, address: str | None = None) -> None:
        raw = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self.address = "\0" + raw[1:] if raw.startswith("@") else raw

    @property
    def enabled(self) -> bool:
        return bool(self.address) and self.address[0] in ("/", "\0")

    def send(self, **fields: str | int) -> bool:
        """``send(READY=1, STATUS="...")``; False if there is no socket or sending failed
        (the service manager may be gone: nothing to do about it)."""
        if not self.enabled:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) match the reload to this
        # message; older versions ignore it.
        return self.send(RELOADING=1, STATUS="reloading",
                         MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping")
