"""A small real web server standing for the hidden host's site in integration tests.

GET /            -> a short page
GET /blob/N      -> N deterministic bytes (see ``blob_bytes``), streamed
POST /sha256     -> the hex SHA-256 of the request body
Run: python backend.py PORT_FILE   (binds 127.0.0.1:0, writes the port to PORT_FILE)
"""

from __future__ import annotations

import hashlib
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = b"hello from the hidden host\n"
_BLOCK = hashlib.sha256(b"revproxy").digest() * 2048  # 64 KiB repeating pattern


def blob_chunks(size: int):
    """The bytes of /blob/<size>, in 64 KiB pieces (a counter keeps them from repeating)."""
    sent = 0
    index = 0
    while sent < size:
        piece = index.to_bytes(8, "big") + _BLOCK[8:]
        piece = piece[: size - sent]
        yield piece
        sent += len(piece)
        index += 1


def blob_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in blob_chunks(size):
        digest.update(piece)
    return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_GET(self):
        if self.path.startswith("/blob/"):
            size = int(self.path[6:])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for piece in blob_chunks(size):
                self.wfile.write(piece)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def do_POST(self):
        remaining = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        while remaining:
            data = self.rfile.read(min(remaining, 65536))
            if not data:
                break
            digest.update(data)
            remaining -= len(data)
        body = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main() -> None:
    server = Server(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
