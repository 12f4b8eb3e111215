"""Sniffing for real: curl's HTTP and TLS requests reach a dokodemo-door inbound whose fixed
destination is unreachable; the sniffed Host / server name becomes the destination, routing
picks by that domain, and freedom dials it (resolved by the ``dns`` section's hosts). An HTTP
proxy's plain requests are routed by ``protocol`` and ``attrs``."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, start_end

CURL = shutil.which("curl")
UNREACHABLE = "10.255.255.1"  # the inbounds' own destination: never dialed when sniffed


def serve(body: bytes, context: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[dict[str, int]]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=a.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    servers = {"http-a": serve(b"site a"), "http-b": serve(b"site b"),
               "tls-a": serve(b"tls a", context), "tls-b": serve(b"tls b", context)}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.shutdown()
        server.server_close()


def curl(*args: str) -> tuple[int, str]:
    assert CURL is not None
    done = subprocess.run([CURL, "-sS", "--max-time", "20", *args], capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_sniffed_domains_route_and_are_dialed(tmp_path: Path, sites: dict[str, int]) -> None:
    http_in, tls_in, proxy_in = free_port(), free_port(), free_port()
    config = {
        "log": {"loglevel": "info"},
        "dns": {"hosts": {"a.test": "127.0.0.1", "b.test": "127.0.0.1"}},
        "inbounds": [
            {"tag": "sniff-http", "listen": "127.0.0.1", "port": http_in,
             "protocol": "dokodemo-door",
             "settings": {"address": UNREACHABLE, "port": sites["http-a"]},
             "sniffing": {"enabled": True, "destOverride": ["http"]}},
            {"tag": "sniff-tls", "listen": "127.0.0.1", "port": tls_in,
             "protocol": "dokodemo-door",
             "settings": {"address": UNREACHABLE, "port": sites["tls-a"]},
             "sniffing": {"enabled": True, "destOverride": ["tls"]}},
            {"tag": "proxy", "listen": "127.0.0.1", "port": proxy_in, "protocol": "http"},
        ],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom", "settings": {"domainStrategy": "UseIPv4"}},
            {"tag": "to-b", "protocol": "freedom",
             "settings": {"redirect": f"127.0.0.1:{sites['http-b']}"}},
            {"tag": "to-tls-b", "protocol": "freedom",
             "settings": {"redirect": f"127.0.0.1:{sites['tls-b']}"}},
            {"tag": "block", "protocol": "blackhole"},
        ],
        "routing": {"rules": [
            {"type": "field", "inboundTag": ["sniff-http"], "domain": ["full:b.test"],
             "outboundTag": "to-b"},
            {"type": "field", "inboundTag": ["sniff-tls"], "domain": ["full:b.test"],
             "protocol": ["tls"], "outboundTag": "to-tls-b"},
            {"type": "field", "inboundTag": ["proxy"], "protocol": ["http"],
             "attrs": "attrs[':path'].startswith('/blocked') and attrs[':method'] == 'GET'",
             "outboundTag": "block"},
        ]},
        "server": {"workers": 1},
    }
    proc = start_end("revproxy", "sniffing", config, tmp_path)
    try:
        for _ in range(100):
            code, body = curl("-H", "Host: a.test", f"http://127.0.0.1:{http_in}/")
            if code == 0:
                break
            assert proc.alive(), proc.output()
            __import__("time").sleep(0.2)
        assert (code, body) == (0, "site a"), proc.output()[-2000:]
        assert curl("-H", "Host: b.test:8080", f"http://127.0.0.1:{http_in}/") == (0, "site b")
        assert curl("-k", "--resolve", f"a.test:{tls_in}:127.0.0.1",
                    f"https://a.test:{tls_in}/") == (0, "tls a")
        assert curl("-k", "--resolve", f"b.test:{tls_in}:127.0.0.1",
                    f"https://b.test:{tls_in}/") == (0, "tls b")
        page = f"http://a.test:{sites['http-a']}"
        assert curl("-x", f"http://127.0.0.1:{proxy_in}", f"{page}/open") == (0, "site a")
        code, body = curl("-x", f"http://127.0.0.1:{proxy_in}", f"{page}/blocked/x")
        assert body != "site a"
    finally:
        proc.stop()
    log = proc.output()
    assert "sniffed domain: b.test" in log
    assert "failed to open connection" not in log
