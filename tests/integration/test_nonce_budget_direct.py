"""A direct VMess connection (no mux, no tunnel) against its writer's nonces, with real
revproxy processes: a client (dokodemo-door -> VMess outbound) and a server (VMess inbound ->
freedom to the backend). REVPROXY_NONCE_LIMIT lowers the 2**16 chunks a writer may seal, so
that megabytes stand for gigabytes: the server's relay reads the backend one chunk's worth at
a time, so a download needs about one chunk per 64 KiB and one of twice the limit times 32 KiB
(what reading 64 KiB at a time, a full chunk and a scrap, allowed) completes; one larger than
the limit times the largest chunk is cut, never carried on a reused nonce."""

from __future__ import annotations

from tests.integration.conftest import USER_ID, free_port, start_end, wait_served
from tests.integration.test_nonce_budget import NONCE_LIMIT, whole_then_cut

OLD_CHUNK = 32 * 1024  # what a chunk carried on average when the relay read 64 KiB a time


def server_config(port: int) -> dict:
    return {"log": {"loglevel": "warning"}, "server": {"workers": 1},
            "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "vmess",
                          "settings": {"clients": [{"id": USER_ID}]}}],
            "outbounds": [{"protocol": "freedom"}]}


def client_config(port: int, server_port: int, backend: int) -> dict:
    return {"log": {"loglevel": "warning"}, "server": {"workers": 1},
            "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
                          "settings": {"address": "127.0.0.1", "port": backend,
                                       "network": "tcp"}}],
            "outbounds": [{"protocol": "vmess", "settings": {"vnext": [
                {"address": "127.0.0.1", "port": server_port,
                 "users": [{"id": USER_ID, "security": "aes-128-gcm"}]}]}}]}


def test_a_direct_download_seals_a_chunk_per_read_and_never_wraps(backend, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("REVPROXY_NONCE_LIMIT", str(NONCE_LIMIT))  # the children inherit it
    public, vmess = free_port(), free_port()
    server = start_end("revproxy", "server", server_config(vmess), tmp_path)
    client = start_end("revproxy", "client", client_config(public, vmess, backend), tmp_path)
    try:
        wait_served(public, procs=(server, client))
        size = 24 * 2**20
        assert size > NONCE_LIMIT * OLD_CHUNK * 1.4
        whole_then_cut(public, size)
        wait_served(public, procs=(server, client))  # the next connection is served
        assert server.alive() and client.alive()
    finally:
        client.stop()
        server.stop()
