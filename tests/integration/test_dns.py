"""The ``dns`` section for real: a revproxy whose freedom outbound resolves with
``domainStrategy`` "UseIPv4" and whose routing resolves with "IPOnDemand", asking a real
dnsmasq on loopback (UDP) and a DNS-over-HTTPS server run here (RFC 8484 POST, TLS with a
certificate made for the test, trusted through ``SSL_CERT_FILE``)."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from tests.dnsmasq import dnsmasq, queries
from tests.integration.conftest import free_port, request, start_end


class DoHServer:
    """Answers A queries for ``names`` (name -> IPv4), nothing for the rest."""

    def __init__(self, names: dict[str, str], cert: Path, key: Path) -> None:
        self.asked: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                query = dns.message.from_wire(body)
                name = query.question[0].name.to_text().rstrip(".")
                outer.asked.append(name)
                response = dns.message.make_response(query)
                if name in names and query.question[0].rdtype == dns.rdatatype.A:
                    response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A",
                                                               names[name]))
                wire = response.to_wire()
                self.send_response(200)
                self.send_header("Content-Type", "application/dns-message")
                self.send_header("Content-Length", str(len(wire)))
                self.end_headers()
                self.wfile.write(wire)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def doh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DoHServer]:
    key, cert = tmp_path / "doh-key.pem", tmp_path / "doh-cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the revproxy started below trusts it
    server = DoHServer({"doh.test": "127.0.0.1"}, cert, key)
    yield server
    server.close()


def served(port: int, timeout: float = 5.0) -> bool:
    try:
        status, body = request(port, timeout=timeout)
    except OSError:
        return False
    return status == 200 and body.startswith(b"hello")


def test_freedom_and_routing_resolve_with_the_dns_section(tmp_path: Path, backend: int,
                                                          doh: DoHServer) -> None:
    log = tmp_path / "dnsmasq.log"
    names = [("site.test", "127.0.0.1"), ("blocked.test", "127.0.0.2"), ("gone.test", "")]
    with dnsmasq(names, log) as dns_port:
        ports = {name: free_port() for name in ("site", "blocked", "gone", "doh", "hosts")}

        def inbound(name: str, address: str) -> dict:
            return {"tag": name, "listen": "127.0.0.1", "port": ports[name],
                    "protocol": "dokodemo-door", "settings": {"address": address,
                                                              "port": backend}}

        config = {
            "log": {"loglevel": "info"},
            # (as in V2Ray, a server's empty answer is final: the DoH one, which knows only
            # doh.test, comes after dnsmasq and is asked first for doh.test alone)
            "dns": {"servers": [
                {"address": "127.0.0.1", "port": dns_port, "expectIps": ["127.0.0.0/8"]},
                {"address": f"https://localhost:{doh.port}/dns-query",
                 "domains": ["full:doh.test"]}],
                "hosts": {"domain:alias.test": "site.test"}},
            "inbounds": [inbound("site", "site.test"), inbound("blocked", "blocked.test"),
                         inbound("gone", "gone.test"), inbound("doh", "doh.test"),
                         inbound("hosts", "www.alias.test")],
            "outbounds": [{"tag": "direct", "protocol": "freedom",
                           "settings": {"domainStrategy": "UseIPv4"}},
                          {"tag": "block", "protocol": "blackhole"}],
            "routing": {"domainStrategy": "IPOnDemand", "rules": [
                {"type": "field", "ip": ["127.0.0.2/32"], "outboundTag": "block"}]},
            "server": {"workers": 1},
        }
        proc = start_end("revproxy", "dns", config, tmp_path)
        try:
            deadline = time.monotonic() + 30
            while not served(ports["site"], timeout=2):
                assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
                time.sleep(0.2)
            assert served(ports["hosts"])  # hosts: a name standing for another
            assert not served(ports["blocked"])  # resolved on demand: an ip rule blocks it
            assert not served(ports["gone"])  # NXDOMAIN: freedom dials the name, which fails
            assert served(ports["doh"]), proc.output()[-3000:]
        finally:
            proc.stop()
        output = proc.output()
        assert "[site -> direct]" in output and "[blocked -> block]" in output, output[-3000:]
        asked = queries(log)
        assert "site.test" in asked and "blocked.test" in asked and "gone.test" in asked
        assert "doh.test" not in asked  # its preferred server, the DoH one, answered
        assert "doh.test" in doh.asked
