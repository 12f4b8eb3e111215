"""Interop matrix: bridge ∈ {revproxy, v2ray} × portal ∈ {revproxy, v2ray} × VMess security,
with the V2Ray document's configs on loopback ports, a real backend and real HTTP clients."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import os
import socket

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.backend import PAGE, blob_sha256
from tests.integration.conftest import USER_ID, free_port, needs_v2ray, start_end, wait_served

pytestmark = needs_v2ray

COMBOS = [
    pytest.param((bridge, portal, security), id=f"{bridge}_bridge-{portal}_portal-{security}")
    for bridge, portal, security in itertools.product(
        ("revproxy", "v2ray"), ("revproxy", "v2ray"), ("aes-128-gcm", "chacha20-poly1305"))
]
DOWNLOAD = 50 * 2**20
UPLOAD = 10 * 2**20


@pytest.fixture(scope="module", params=COMBOS)
def public_port(request, backend, tmp_path_factory):
    bridge_kind, portal_kind, security = request.param
    tmp = tmp_path_factory.mktemp("interop")
    public, tunnel = free_port(), free_port()
    portal = start_end(portal_kind, "portal", portal_config(USER_ID, public, tunnel), tmp)
    bridge = start_end(bridge_kind, "bridge",
                       bridge_config(USER_ID, backend, tunnel, security=security), tmp)
    wait_served(public, procs=(portal, bridge))
    yield public
    bridge.stop()
    portal.stop()


def test_small_get(public_port):
    conn = http.client.HTTPConnection("127.0.0.1", public_port, timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == PAGE
    conn.close()


def test_download_50mb(public_port):
    conn = http.client.HTTPConnection("127.0.0.1", public_port, timeout=120)
    conn.request("GET", f"/blob/{DOWNLOAD}")
    response = conn.getresponse()
    assert response.status == 200
    digest = hashlib.sha256()
    received = 0
    while data := response.read(1 << 20):
        digest.update(data)
        received += len(data)
    conn.close()
    assert received == DOWNLOAD
    assert digest.hexdigest() == blob_sha256(DOWNLOAD)


def test_upload_10mb(public_port):
    body = os.urandom(UPLOAD)
    conn = http.client.HTTPConnection("127.0.0.1", public_port, timeout=120)
    conn.request("POST", "/sha256", body=body)
    response = conn.getresponse()
    assert response.status == 200
    assert response.read().decode() == hashlib.sha256(body).hexdigest()
    conn.close()


def test_100_concurrent_connections(public_port):
    clients = [socket.create_connection(("127.0.0.1", public_port), timeout=60)
               for _ in range(100)]
    try:
        for i, sock in enumerate(clients):
            sock.sendall(f"GET /?n={i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        answered = 0
        for sock in clients:
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
            response = b"".join(chunks)
            if response.startswith(b"HTTP/1.1 200") and response.endswith(PAGE):
                answered += 1
    finally:
        for sock in clients:
            sock.close()
    assert answered == 100
