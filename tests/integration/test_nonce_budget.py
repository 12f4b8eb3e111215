"""One session's bytes against a tunnel writer's nonces, with a revproxy portal and bridge.

A VMess writer seals at most 2**16 chunks and never wraps its nonce counter: past that its
tunnel ends. Bulk data is sealed in near-maximal chunks, so one session moves ~4 GiB. Here
REVPROXY_NONCE_LIMIT lowers the limit so that megabytes stand for gigabytes: a download
larger than the limit times the old ~34 KB chunk completes; one larger than the limit times
the largest chunk is cut (never carried on a reused nonce), and the next visitors are served
by a new tunnel."""

from __future__ import annotations

import hashlib
import http.client

import pytest

from revproxy.demo import bridge_config, portal_config
from revproxy.proxy.vmess.body import MAX_WRITE_PAYLOAD
from tests.integration.backend import PAGE, blob_sha256
from tests.integration.conftest import USER_ID, free_port, request, start_end, wait_served

NONCE_LIMIT = 512
OLD_CHUNK = 34 * 1024  # what a chunk carried under bulk when sockets were read 64 KiB a time


def download(port: int, size: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/blob/{size}")
        return conn.getresponse().read()
    finally:
        conn.close()


def whole_then_cut(port: int, size: int) -> None:
    """A download of ``size`` bytes arrives whole; one larger than the nonce limit times the
    largest chunk is cut, never carried on a reused nonce."""
    body = download(port, size)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == blob_sha256(size)
    too_big = 40 * 2**20
    assert too_big > NONCE_LIMIT * MAX_WRITE_PAYLOAD
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        download(port, too_big)


def test_one_session_outlasts_the_old_nonce_budget_and_never_wraps(backend, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("REVPROXY_NONCE_LIMIT", str(NONCE_LIMIT))  # the children inherit it
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_config(USER_ID, public, tunnel), tmp_path)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp_path)
    try:
        wait_served(public, procs=(portal, bridge))
        size = 20 * 2**20
        assert size > NONCE_LIMIT * OLD_CHUNK
        whole_then_cut(public, size)

        wait_served(public, procs=(portal, bridge))  # a new tunnel serves
        assert request(public) == (200, PAGE)
        assert portal.alive() and bridge.alive()
    finally:
        bridge.stop()
        portal.stop()
