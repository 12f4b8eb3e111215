"""The site on one hidden host of the high-availability scenarios: it answers ``GET /`` with its
host's name (so a visitor learns which bridge host served it) and ``GET /blob/N`` with N bytes.

Run: ``python -m bench.hasite NAME PORT [ADDRESS]`` (default address 127.0.0.1; port 0 picks
one and prints it on the first line of standard output).
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BLOCK = bytes(range(256)) * 256  # 64 KiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = b""  # set on the subclass made in main()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/blob/"):
            size = int(self.path[6:])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while size > 0:
                piece = _BLOCK[:size]
                self.wfile.write(piece)
                size -= len(piece)
            return
        body = self.name + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main(argv: list[str]) -> None:
    name, port = argv[0], int(argv[1])
    address = argv[2] if len(argv) > 2 else "127.0.0.1"
    handler = type("NamedHandler", (Handler,), {"name": name.encode()})
    server = Server((address, port), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
