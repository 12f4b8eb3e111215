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
    V2RAY,
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
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
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
