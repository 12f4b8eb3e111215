"""The reverse tunnel carried by VLESS and Shadowsocks over every transport, at both ends.

Each case is one protocol (VLESS; Shadowsocks aes-128-gcm; Shadowsocks chacha20-poly1305 on
one transport) over one transport (tcp, tcp with the HTTP header, ws, tls, ws+tls) with one
pairing (revproxy bridge and V2Ray portal, V2Ray bridge and revproxy portal, revproxy at both
ends). Through the portal's public port: a GET, a 5 MB download and a 2 MB upload compared by
SHA-256, and 20 GETs at once. (VMess has the same matrix in test_transport.py.)

V2Ray 4.34 allows every one of these combinations: both protocols are ordinary proxies whose
connections come from the inbound worker and go out through ``internet.Dialer``, which apply
``streamSettings`` whatever the protocol (its Shadowsocks client dials with the dialer it is
handed, its server takes the worker's TCP connections), so there is no combination for
revproxy to refuse.

The three pairings of one protocol and transport start together and serve all the checks of
their cases, to keep the file short on two cores.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.backend import PAGE, blob_sha256
from tests.integration.conftest import (
    Proc,
    free_port,
    needs_v2ray,
    start_end,
    wait_served,
)
from tests.integration.test_protocols import inbound, outbound, v2ray_json
from tests.integration.test_transport import Certs, make_certs, stream_settings

pytestmark = needs_v2ray

TRANSPORTS = ("tcp", "http", "ws", "tls", "ws+tls")
GROUPS = [
    *((protocol, transport) for protocol in ("vless", "ss-aes-128-gcm")
      for transport in TRANSPORTS),
    ("ss-chacha20-poly1305", "ws+tls"),
]
PAIRINGS = {  # id -> (bridge, portal)
    "revproxy_bridge-v2ray_portal": ("revproxy", "v2ray"),
    "v2ray_bridge-revproxy_portal": ("v2ray", "revproxy"),
    "revproxy_bridge-revproxy_portal": ("revproxy", "revproxy"),
}
DOWNLOAD = 5 * 2**20
UPLOAD = 2 * 2**20
CONCURRENT = 20
# Two workers, so that a visitor and the tunnel serving it may be on different workers; a short
# graceful stop for the teardown.
SERVER = {"workers": 2, "gracefulTimeout": 1}


def portal_json(protocol: str, transport: str, certs: Certs, public: int, tunnel: int) -> dict:
    """The V2Ray document's portal, its tunnel inbound speaking ``protocol`` over
    ``transport``."""
    config = portal_config("unused", public, tunnel)
    tunnel_in = inbound(protocol, tunnel, tag="interconn")
    tunnel_in["streamSettings"] = stream_settings(transport, certs, server=True)
    config["inbounds"][1] = tunnel_in
    return config


def bridge_json(protocol: str, transport: str, certs: Certs, backend: int, tunnel: int) -> dict:
    """The V2Ray document's bridge, its tunnel outbound speaking ``protocol`` over
    ``transport``."""
    config = bridge_config("unused", backend, tunnel)
    tunnel_out = outbound(protocol, tunnel, "interconn")
    tunnel_out["streamSettings"] = stream_settings(transport, certs, server=False)
    config["outbounds"][1] = tunnel_out
    return config


def start(kind: str, name: str, config: dict, tmp) -> Proc:
    if kind == "v2ray":
        return start_end(kind, name, v2ray_json(config), tmp)
    return start_end(kind, name, {**config, "server": SERVER}, tmp)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("matrix-certs"))


@pytest.fixture(scope="module", params=[pytest.param(g, id=f"{g[0]}-{g[1]}") for g in GROUPS])
def group(request, backend, certs, tmp_path_factory):
    """The three pairings of one protocol and transport, started together: pairing id ->
    the portal's public port, or why it was not served."""
    protocol, transport = request.param
    procs: list[Proc] = []
    ends: dict[str, tuple[int, tuple[Proc, Proc]]] = {}
    for pairing, (bridge_kind, portal_kind) in PAIRINGS.items():
        tmp = tmp_path_factory.mktemp(f"matrix-{protocol}-{transport}-{pairing}")
        public, tunnel = free_port(), free_port()
        portal = start(portal_kind, "portal",
                       portal_json(protocol, transport, certs, public, tunnel), tmp)
        bridge = start(bridge_kind, "bridge",
                       bridge_json(protocol, transport, certs, backend, tunnel), tmp)
        procs += (portal, bridge)
        ends[pairing] = (public, (portal, bridge))
    served: dict[str, int | str] = {}
    try:
        for pairing, (public, pair) in ends.items():
            try:
                wait_served(public, timeout=60, procs=pair)
                served[pairing] = public
            except pytest.fail.Exception as failure:  # only this pairing's cases fail
                served[pairing] = str(failure)
        yield served
    finally:
        for proc in procs:  # all at once, then wait for each
            if proc.alive():
                proc.signal_all(signal.SIGCONT)
                proc.popen.terminate()
        for proc in procs:
            proc.stop()


@pytest.fixture(params=list(PAIRINGS))
def public_port(request, group) -> int:
    """The public port of one case's portal, served through its bridge's tunnels."""
    served = group[request.param]
    if isinstance(served, str):
        pytest.fail(served, pytrace=False)
    return served


def test_get(public_port):
    conn = http.client.HTTPConnection("127.0.0.1", public_port, timeout=30)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, PAGE)
    finally:
        conn.close()


def test_download(public_port):
    conn = http.client.HTTPConnection("127.0.0.1", public_port, timeout=60)
    try:
        conn.request("GET", f"/blob/{DOWNLOAD}")
        response = conn.getresponse()
        assert response.status == 200
        digest, received = hashlib.sha256(), 0
        while data := response.read(1 << 20):
            digest.update(data)
            received += len(data)
    finally:
        conn.close()
    assert received == DOWNLOAD
    assert digest.hexdigest() == blob_sha256(DOWNLOAD)


def test_upload(public_port):
    body = os.urandom(UPLOAD)
    conn = http.client.HTTPConnection("127.0.0.1", public_port, timeout=60)
    try:
        conn.request("POST", "/sha256", body=body)
        response = conn.getresponse()
        assert response.status == 200
        assert response.read().decode() == hashlib.sha256(body).hexdigest()
    finally:
        conn.close()


def test_concurrent_gets(public_port):
    """20 connections open at once, each with its request sent before any answer is read."""
    clients = [socket.create_connection(("127.0.0.1", public_port), timeout=60)
               for _ in range(CONCURRENT)]
    try:
        for n, sock in enumerate(clients):
            sock.sendall(f"GET /?n={n} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                         .encode())
        answers = []
        for sock in clients:
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
            answers.append(b"".join(chunks))
    finally:
        for sock in clients:
            sock.close()
    good = [a for a in answers if a.startswith(b"HTTP/1.1 200") and a.endswith(PAGE)]
    assert len(good) == CONCURRENT
