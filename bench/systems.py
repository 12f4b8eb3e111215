"""The three systems under test on loopback: the nginx backend itself ("direct"), a V2Ray
portal + bridge pair and a revproxy portal + bridge pair, both relaying to that backend."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

from bench.procs import Child, free_port, wait_served

ROOT = Path(__file__).resolve().parents[1]
SMALL = "/small.html"
BIG = "/big.bin"
SMALL_SIZE = 1024

NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {docroot};
        location / {{ }}
    }}
}}
"""


class Backend:
    """nginx with its own prefix and config in ``tmp``, serving a 1 KiB page and a big file."""

    name = "direct"
    template = NGINX_CONF  # the config, formatted by start(); a subclass may add locations

    def __init__(self, tmp: Path, size: int, workers: str = "auto") -> None:
        self.tmp = tmp / "nginx"
        self.size = size
        self.workers = workers
        self.port = 0
        self.child: Child | None = None

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        docroot = self.tmp / "www"
        docroot.mkdir(parents=True)
        (docroot / SMALL.lstrip("/")).write_bytes(b"x" * (SMALL_SIZE - 1) + b"\n")
        with open(docroot / BIG.lstrip("/"), "wb") as big:
            big.truncate(self.size)  # sparse: no disk I/O
        with open(docroot / BIG.lstrip("/"), "rb", buffering=0) as big:
            block = bytearray(8 * 2**20)
            while big.readinto(block):  # into the page cache now, not during the first run
                pass
        # nginx workers run as an unprivileged user when started as root: let them read.
        for path in (self.tmp.parent, self.tmp, docroot):
            path.chmod(0o755)
        for path in docroot.iterdir():
            path.chmod(0o644)
        self.port = free_port()
        conf = self.tmp / "nginx.conf"
        conf.write_text(self.template.format(workers=self.workers, tmp=self.tmp,
                                             port=self.port, docroot=docroot))
        argv = [nginx, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "startup.log")]
        self.child = Child("nginx", argv, log=self.tmp / "nginx.out")
        wait_served(self.port, SMALL, SMALL_SIZE, [self.child])

    @property
    def public_port(self) -> int:
        return self.port

    def children(self) -> list[Child]:
        return [self.child] if self.child else []

    def stop(self) -> None:
        if self.child:
            self.child.stop()
            self.child = None


TRANSPORTS = ("tcp", "http", "ws", "tls", "ws+tls")
SERVER_NAME = "bench.test"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for SERVER_NAME: (certificate, key) PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if not cert_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return cert_path, key_path


def stream_settings(transport: str, directory: Path, *, server: bool) -> dict | None:
    """The bridge-portal link's ``streamSettings`` (``--transport``), alike for both systems;
    None for plain TCP."""
    if transport == "tcp":
        return None
    settings: dict = {"network": "ws" if transport.startswith("ws") else "tcp"}
    if settings["network"] == "ws":
        settings["wsSettings"] = {"path": "/tunnel"}
    if transport == "http":
        settings["tcpSettings"] = {"header": {"type": "http"}}
    if transport.endswith("tls"):
        cert, key = make_certificate(directory)
        settings["security"] = "tls"
        settings["tlsSettings"] = (
            {"certificates": [{"certificateFile": str(cert), "keyFile": str(key)}]} if server
            else {"serverName": SERVER_NAME,
                  "certificates": [{"certificateFile": str(cert), "usage": "verify"}]})
    return settings


class Ends:
    """A portal + bridge pair (``kind`` "v2ray" or "revproxy") in front of the backend, linked
    over ``transport`` (one of TRANSPORTS)."""

    def __init__(self, kind: str, tmp: Path, backend_port: int, *, security: str = "auto",
                 workers: int | None = None, transport: str = "tcp") -> None:
        self.name = kind
        self.kind = kind
        self.tmp = tmp / kind
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.backend_port = backend_port
        self.security = security
        self.workers = workers
        self.transport = transport
        self.public_port = 0
        self.portal: Child | None = None
        self.bridge: Child | None = None
        self.starts = 0

    def _configs(self) -> tuple[dict, dict]:
        from revproxy.demo import bridge_config, portal_config

        user_id = str(uuid.uuid4())
        self.public_port, tunnel_port = free_port(), free_port()
        portal = portal_config(user_id, self.public_port, tunnel_port)
        bridge = bridge_config(user_id, self.backend_port, tunnel_port, security=self.security)
        certificates = self.tmp.parent / "certificates"
        for config, index, server in ((portal["inbounds"], 1, True),
                                      (bridge["outbounds"], 1, False)):
            settings = stream_settings(self.transport, certificates, server=server)
            if settings is not None:
                config[index]["streamSettings"] = settings
        for role, config in (("portal", portal), ("bridge", bridge)):
            # Same for both systems: warnings only, no per-connection access log. V2Ray needs
            # "none" for that; revproxy logs no access lines at "warning" unless given a path
            # (and would take "none" for a file name).
            config["log"] = {"loglevel": "warning"}
            if self.kind == "v2ray":
                config["log"]["access"] = "none"
            else:
                # Its state table lives in our temp dir, never in /run.
                server: dict = {"stateFile": str(self.tmp / f"{role}.state")}
                if self.workers is not None:
                    server["workers"] = self.workers
                config["server"] = server
        return portal, bridge

    def _argv(self, config_path: Path) -> list[str]:
        if self.kind == "v2ray":
            return [shutil.which("v2ray") or "/usr/bin/v2ray", "-config", str(config_path)]
        return [sys.executable, "-m", "revproxy", "run", "-c", str(config_path)]

    def start(self) -> float:
        """Start portal then bridge; returns the seconds until a request came through."""
        self.starts += 1
        portal, bridge = self._configs()
        started = time.monotonic()
        children = []
        for role, config in (("portal", portal), ("bridge", bridge)):
            path = self.tmp / f"{role}.json"
            path.write_text(json.dumps(config, indent=2))
            log = self.tmp / f"{role}-{self.starts}.log"
            # revproxy: INT is the fast stop (TERM would wait for sessions to finish).
            stop = signal.SIGINT if self.kind == "revproxy" else signal.SIGTERM
            child = Child(f"{self.kind}-{role}", self._argv(path), log=log, cwd=self.tmp,
                          stop_signal=stop)
            children.append(child)
        self.portal, self.bridge = children
        wait_served(self.public_port, SMALL, SMALL_SIZE, children)
        return time.monotonic() - started

    def children(self) -> list[Child]:
        return [c for c in (self.portal, self.bridge) if c is not None]

    def memory(self) -> dict[str, int]:
        """Summed :meth:`Child.memory` of portal and bridge (both process trees)."""
        total = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
        for child in self.children():
            for key, value in child.memory().items():
                total[key] += value
        return total

    def check_alive(self) -> None:
        for child in self.children():
            if not child.alive():
                raise RuntimeError(f"{child.name} died:\n{child.tail()}")

    def stop(self) -> None:
        for child in (self.bridge, self.portal):
            if child is not None:
                child.stop()
        self.portal = self.bridge = None

