"""Transports for real: the bridge-portal link over WebSocket, WebSocket+TLS, TCP+TLS and TCP
with V2Ray's HTTP header, between revproxy and the real v2ray binary in both directions and
between two revproxy ends; the same link through nginx terminating TLS in front of the
portal's WebSocket inbound; bad input at each transport's port, answered as V2Ray answers it;
certificates: missing at check time, renewed at reload."""

from __future__ import annotations

import datetime
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.conftest import (
    ROOT,
    USER_ID,
    Proc,
    free_port,
    needs_v2ray,
    start_end,
    wait_served,
)

# The interop checks (GET, 50 MB down, 10 MB up, 100 at once) run here as they run for plain
# TCP, on this module's ``public_port``.
from tests.integration.test_interop import (  # noqa: F401
    test_100_concurrent_connections,
    test_download_50mb,
    test_small_get,
    test_upload_10mb,
)

pytestmark = needs_v2ray

SERVER_NAME = "test.local"
WS_PATH = "/tunnel"
TRANSPORTS = ("ws", "ws+tls", "tls", "http")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, name: str = SERVER_NAME, serial: int = 1) -> Certs:
    """A test CA and a certificate it signed for ``name`` and 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "revproxy test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(serial)
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(serial + 1000)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    certs = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    for path in (directory, certs.ca, certs.cert, certs.key):  # nginx workers read them too
        path.chmod(0o755 if path.is_dir() else 0o644)
    return certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def stream_settings(transport: str, certs: Certs, *, server: bool) -> dict:
    """``streamSettings`` of the portal's tunnel inbound (``server``) or the bridge's VMess
    outbound, the same for revproxy and V2Ray."""
    settings: dict = {"network": "ws" if transport.startswith("ws") else "tcp"}
    if settings["network"] == "ws":
        # The client's path has a query string, which a server ignores.
        settings["wsSettings"] = {"path": WS_PATH if server else WS_PATH + "?ed=2048",
                                  "headers": {"Host": SERVER_NAME}}
    if transport == "http":
        settings["tcpSettings"] = {"header": {
            "type": "http",
            "request": {"path": ["/a", "/b"], "headers": {"Host": ["a.example", "b.example"],
                                                          "User-Agent": ["test"]}},
            "response": {"headers": {"Content-Type": ["text/html"]}}}}
    if transport.endswith("tls"):
        settings["security"] = "tls"
        if server:
            settings["tlsSettings"] = {"certificates": [
                {"certificateFile": str(certs.cert), "keyFile": str(certs.key)}]}
        else:
            settings["tlsSettings"] = {"serverName": SERVER_NAME, "certificates": [
                {"certificateFile": str(certs.ca), "usage": "verify"}]}
    return settings


def portal_with(transport: str, certs: Certs, public: int, tunnel: int) -> dict:
    config = portal_config(USER_ID, public, tunnel)
    config["inbounds"][1]["streamSettings"] = stream_settings(transport, certs, server=True)
    return config


def bridge_with(transport: str, certs: Certs, backend: int, tunnel: int) -> dict:
    config = bridge_config(USER_ID, backend, tunnel, security="aes-128-gcm")
    config["outbounds"][1]["streamSettings"] = stream_settings(transport, certs, server=False)
    return config


# -- the interop matrix -----------------------------------------------------------------------

COMBOS = [
    pytest.param((bridge, portal, transport), id=f"{transport}-{bridge}_bridge-{portal}_portal")
    for transport in TRANSPORTS
    for bridge, portal in (("revproxy", "v2ray"), ("v2ray", "revproxy"), ("revproxy", "revproxy"))
]


@pytest.fixture(scope="module", params=COMBOS)
def public_port(request, backend, certs, tmp_path_factory):
    bridge_kind, portal_kind, transport = request.param
    tmp = tmp_path_factory.mktemp("transport")
    public, tunnel = free_port(), free_port()
    portal = start_end(portal_kind, "portal", portal_with(transport, certs, public, tunnel), tmp)
    bridge = start_end(bridge_kind, "bridge", bridge_with(transport, certs, backend, tunnel),
                       tmp)
    wait_served(public, procs=(portal, bridge))
    yield public
    bridge.stop()
    portal.stop()


# -- behind nginx ----------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location {path} {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, certs: Certs, upstream: int) -> tuple[Proc, int]:
    """nginx terminating TLS on a free port and proxying WS_PATH to ``upstream``, as its
    WebSocket proxying documentation configures it."""
    tmp.chmod(0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, name=SERVER_NAME, cert=certs.cert,
                                      key=certs.key, path=WS_PATH, upstream=upstream))
    proc = Proc("nginx", [NGINX, "-p", str(tmp), "-c", str(conf), "-e",
                          str(tmp / "nginx-startup.log")], tmp)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or not proc.alive():
                pytest.fail(f"nginx did not start: {proc.output()}")
            time.sleep(0.1)


NGINX_COMBOS = [pytest.param(pair, id=f"{pair[0]}_bridge-{pair[1]}_portal") for pair in
                (("revproxy", "revproxy"), ("v2ray", "revproxy"), ("revproxy", "v2ray"))]


@pytest.fixture(scope="module", params=NGINX_COMBOS)
def behind_nginx(request, backend, certs, tmp_path_factory):
    """portal (ws inbound, no TLS) <- nginx (TLS, WebSocket proxy) <- bridge (wss://)."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/test installs it)")
    bridge_kind, portal_kind = request.param
    tmp = tmp_path_factory.mktemp("nginx")
    public, tunnel = free_port(), free_port()
    portal = start_end(portal_kind, "portal", portal_with("ws", certs, public, tunnel), tmp)
    nginx, tls_port = start_nginx(tmp, certs, tunnel)
    bridge = start_end(bridge_kind, "bridge", bridge_with("ws+tls", certs, backend, tls_port),
                       tmp)
    wait_served(public, procs=(portal, bridge, nginx))
    yield public
    bridge.stop()
    nginx.stop()
    portal.stop()


def test_through_nginx(behind_nginx):
    test_small_get(behind_nginx)
    test_download_50mb(behind_nginx)
    test_upload_10mb(behind_nginx)
    test_100_concurrent_connections(behind_nginx)


# -- bad input at each transport's port ------------------------------------------------------

BIG_HEADER = b"GET " + WS_PATH.encode() + b" HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 7000 + b"\r\n\r\n"
UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
TLS_GARBAGE = b"\x16\x03\x01\x00\x05hello"
# Per transport: (what is sent, whether through TLS first). Each is sent to a revproxy and a
# V2Ray portal configured alike; the answers must be the same (Date aside).
PROBES = {
    "ws": [
        (b"GET /wrong HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (b"GET /wrong HTTP/1.0\r\n\r\n", False),
        (b"GET /tunnel HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (b"POST /tunnel HTTP/1.1\r\nHost: a\r\n" + UPGRADE + KEY + b"\r\n", False),
        (b"GET /tunnel HTTP/1.1\r\nHost: a\r\n" + UPGRADE + b"\r\n", False),
        (b"GET /tunnel HTTP/1.1\r\nHost: a\r\n" + UPGRADE.replace(b"13", b"8") + KEY
         + b"\r\n", False),
        (b"GET /tunnel HTTP/1.1\r\n\r\n", False),
        (b"garbage\r\n\r\n", False),
        (BIG_HEADER, False),
        (b"GET /wrong HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n"
         b"Connection: close\r\n\r\n", False),
    ],
    "ws+tls": [
        (b"GET /tunnel HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (TLS_GARBAGE, False),
        (b"GET /wrong HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET /tunnel HTTP/1.1\r\nHost: a\r\n\r\n", True),
    ],
    "tls": [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (TLS_GARBAGE, False),
    ],
    "http": [
        (b"GET /wrong HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (b"garbage\r\n\r\n", False),
        (b"GET /a HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 2000, False),
    ],
}


def probe(port: int, data: bytes, through_tls: bool, certs: Certs,
          wait: float = 1.5) -> tuple[bytes, bool]:
    """What a server answers to ``data`` within ``wait`` s of silence, Date lines blanked,
    and whether it closed; a TLS alert counts as closing."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if through_tls:
            context = ssl.create_default_context(cafile=str(certs.ca))
            context.set_alpn_protocols(["http/1.1"])
            sock = context.wrap_socket(sock, server_hostname=SERVER_NAME)
        sock.sendall(data)
        sock.settimeout(wait)
        chunks, closed = [], False
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            closed = True
        except TimeoutError:
            pass
        except OSError:  # reset, TLS alert
            closed = True
    finally:
        sock.close()
    answer = b"".join(chunks)
    if answer.startswith(b"\x15\x03"):  # a TLS alert: the server closes
        return b"", True
    lines = [b"Date: -" if line.startswith(b"Date: ") else line
             for line in answer.split(b"\r\n")]
    return b"\r\n".join(lines), closed


@pytest.fixture(scope="module", params=TRANSPORTS)
def two_portals(request, backend, certs, tmp_path_factory):
    """A revproxy portal with its bridge (to show it keeps serving) and a V2Ray portal with the
    same tunnel inbound: (transport, public port, revproxy tunnel port, V2Ray tunnel port)."""
    transport = request.param
    tmp = tmp_path_factory.mktemp("bad")
    public, tunnel, v2ray_public, v2ray_tunnel = (free_port() for _ in range(4))
    procs = [start_end("revproxy", "portal", portal_with(transport, certs, public, tunnel), tmp),
             start_end("revproxy", "bridge", bridge_with(transport, certs, backend, tunnel),
                       tmp),
             start_end("v2ray", "v2ray-portal",
                       portal_with(transport, certs, v2ray_public, v2ray_tunnel), tmp)]
    wait_served(public, procs=tuple(procs[:2]))
    yield transport, public, tunnel, v2ray_tunnel
    for proc in procs:
        proc.stop()


def test_bad_input_is_answered_as_v2ray_answers_it(two_portals, certs):
    from concurrent.futures import ThreadPoolExecutor

    transport, public, ours, theirs = two_portals
    probes = PROBES[transport]
    with ThreadPoolExecutor(len(probes) * 2) as pool:
        answers = list(pool.map(lambda job: probe(job[0], *job[1], certs),
                                [(port, p) for p in probes for port in (ours, theirs)]))
    for i, (data, _) in enumerate(probes):
        assert answers[2 * i] == answers[2 * i + 1], f"{transport}: {data[:40]!r}"
    wait_served(public, timeout=10)


def test_garbage_where_a_header_is_expected_is_closed(two_portals, certs):
    """TLS bytes at a plain port: closed (V2Ray's WebSocket server answers 400 after its 4 s
    header timeout; its HTTP-header server never closes)."""
    transport, public, ours, _ = two_portals
    if transport.endswith("tls"):
        pytest.skip("a TLS port")
    answer, closed = probe(ours, TLS_GARBAGE, False, certs, wait=10)
    assert closed
    assert answer in (b"", b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; "
                           b"charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
    wait_served(public, timeout=10)


# -- certificates: checked at check time, reloaded with the configuration ---------------------

def test_a_missing_certificate_is_one_line_and_exit_2(certs, tmp_path):
    config = portal_with("ws+tls", certs, free_port(), free_port())
    config["inbounds"][1]["streamSettings"]["tlsSettings"]["certificates"][0][
        "certificateFile"] = str(tmp_path / "gone.pem")
    path = tmp_path / "portal.json"
    path.write_text(json.dumps(config))
    for command in ("check", "run"):
        result = subprocess.run([sys.executable, "-m", "revproxy", command, "-c", str(path)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f'portal.json: inbounds[1].streamSettings.tlsSettings.certificates[0]'
            f'.certificateFile: cannot read "{tmp_path / "gone.pem"}": No such file or '
            f'directory'], command


def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def test_reload_serves_a_renewed_certificate(tmp_path):
    first = make_certs(tmp_path / "live")
    config = portal_with("tls", first, free_port(), free_port())
    tunnel = config["inbounds"][1]["port"]
    portal = start_end("revproxy", "portal", config, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                before = served_certificate(tunnel)
                break
            except OSError:
                if time.monotonic() > deadline or not portal.alive():
                    pytest.fail(f"the portal did not start:\n{portal.output()}")
                time.sleep(0.2)
        assert before == ssl.PEM_cert_to_DER_cert(first.cert.read_text())
        renewed = make_certs(tmp_path / "renewed", serial=7)
        for name in ("cert.pem", "key.pem"):  # renewed in place, as certbot does
            (tmp_path / "live" / name).write_bytes((tmp_path / "renewed" / name).read_bytes())
        portal.signal(signal.SIGHUP)
        # The old generation may take a few more connections while it retires.
        want = ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())
        deadline = time.monotonic() + 30
        while [served_certificate(tunnel) for _ in range(5)] != [want] * 5:
            assert time.monotonic() < deadline, portal.output()[-3000:]
            time.sleep(0.2)
    finally:
        portal.stop()
