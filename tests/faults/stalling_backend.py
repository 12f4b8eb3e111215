"""The integration backend (tests/integration/backend.py) plus one stalling path, for the fault
tests: ``POST /stall`` reads nothing of its body and holds the connection until the other side
goes away, as a backend that stops reading an upload does.

Run: python -m tests.faults.stalling_backend PORT_FILE   (binds 127.0.0.1:0, writes the port)
"""

from __future__ import annotations

import os
import socket
import sys
import time

from tests.integration.backend import Handler, Server

HOLD = 120.0  # seconds a stalled request is held at most
TCP_ESTABLISHED = 1


def established(sock: socket.socket) -> bool:
    """The connection's TCP state, read without consuming anything (first byte of tcp_info)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


class StallingHandler(Handler):
    def do_POST(self):
        if self.path != "/stall":
            super().do_POST()
            return
        deadline = time.monotonic() + HOLD
        while time.monotonic() < deadline and established(self.connection):
            time.sleep(0.1)
        self.close_connection = True


def main() -> None:
    server = Server(("127.0.0.1", 0), StallingHandler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
