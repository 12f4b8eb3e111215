"""Bad input at the VMess port and inside tunnels: only the offender is closed, the server
keeps serving; broken configs give one line per problem and exit status 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from revproxy.demo import bridge_config, portal_config
from revproxy.mux.frame import FrameDecoder
from revproxy.proxy.vmess.body import BodyReader, BodyWriter
from revproxy.proxy.vmess.crypto import cmd_key
from revproxy.proxy.vmess.header import (
    COMMAND_TCP,
    SECURITY_AES128_GCM,
    ResponseDecoder,
    new_request_header,
    response_body_key_iv,
    seal_request,
)
from tests.integration.conftest import ROOT, USER_ID, free_port, start_end, wait_served

DOMAIN = "test.v2fly.org"


@pytest.fixture(scope="module")
def site(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_config(USER_ID, public, tunnel), tmp)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp)
    wait_served(public, procs=(portal, bridge))
    yield public, tunnel, portal
    bridge.stop()
    portal.stop()


def answer_of(port: int, payload: bytes, half_close: bool = True) -> bytes:
    """What the server sends back before closing, for ``payload`` (bounded wait)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except TimeoutError:
            pytest.fail("server neither answered nor closed")
        return b"".join(chunks)


def tunnel_header() -> tuple[bytes, object]:
    header = new_request_header(COMMAND_TCP, DOMAIN, 0, SECURITY_AES128_GCM)
    return seal_request(cmd_key(USER_ID), header, int(time.time())), header


@pytest.mark.parametrize("garbage", [os.urandom(1), os.urandom(64), os.urandom(5000)])
def test_random_bytes_get_no_answer(site, garbage):
    public, tunnel, portal = site
    assert answer_of(tunnel, garbage) == b""
    wait_served(public, timeout=10, procs=(portal,))


def test_truncated_header_gets_no_answer(site):
    public, tunnel, portal = site
    sealed, _ = tunnel_header()
    for cut in (10, 16, 40, len(sealed) - 1):
        assert answer_of(tunnel, sealed[:cut]) == b""
    wait_served(public, timeout=10, procs=(portal,))


def test_replayed_header_is_refused(site):
    public, tunnel, portal = site
    sealed, header = tunnel_header()
    with socket.create_connection(("127.0.0.1", tunnel), timeout=10) as first:
        first.sendall(sealed)
        assert first.recv(65536), "the genuine handshake got no answer"
        assert answer_of(tunnel, sealed) == b""
    wait_served(public, timeout=10, procs=(portal,))


def test_malformed_mux_frames_close_only_that_tunnel(site):
    public, tunnel, portal = site
    sealed, header = tunnel_header()
    with socket.create_connection(("127.0.0.1", tunnel), timeout=10) as fake_bridge:
        fake_bridge.sendall(sealed)
        # The portal opens its control session at once: read up to the first frame.
        response = ResponseDecoder(header)
        key, iv = response_body_key_iv(header)
        body = BodyReader(header.security, key, iv, header.option)
        frames = []
        data = fake_bridge.recv(65536)
        while not response.feed(data):
            data = fake_bridge.recv(65536)
        pending = response.rest
        decoder = FrameDecoder()
        while not frames:
            for payload in body.feed(pending):
                frames.extend(decoder.feed(payload))
            if not frames:
                pending = fake_bridge.recv(65536)
        assert frames[0].status == 1 and frames[0].address == "reverse.internal.v2fly.org"
        writer = BodyWriter(header.security, header.body_key, header.body_iv, header.option)
        fake_bridge.sendall(writer.seal(b"\x00\x04\x00\x01\x09\x00"))  # status 9: unknown
        fake_bridge.settimeout(10)
        try:
            while fake_bridge.recv(65536):
                pass
        except TimeoutError:
            pytest.fail("the portal kept the malformed tunnel open")
    # The real bridge's tunnel still serves.
    wait_served(public, timeout=10, procs=(portal,))


BROKEN = {
    "not-json.json": ("{ this is not json", "not-json.json:"),
    "bad-uuid.yaml": (
        "inbounds:\n  - port: 1024\n    protocol: vmess\n    settings:\n"
        "      clients:\n        - id: abc\n",
        'bad-uuid.yaml: inbounds[0].settings.clients[0].id:',
    ),
    "bad-port.json": (
        '{"inbounds": [{"port": "abc", "protocol": "dokodemo-door",'
        ' "settings": {"address": "127.0.0.1", "port": 80}}]}',
        "bad-port.json: inbounds[0].port:",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_config_one_line_exit_2(name, tmp_path):
    text, prefix = BROKEN[name]
    path = tmp_path / name
    path.write_text(text)
    for command in ("check", "run"):
        result = subprocess.run([sys.executable, "-m", "revproxy", command, "-c", str(path)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith(name + ":") for line in lines), result.stderr
        assert lines[0].startswith(prefix), result.stderr


def test_missing_config_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "revproxy", "check", "-c",
                             str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "nope.yaml" in result.stderr


def test_shipped_configs_pass_check():
    for name in ("portal.yaml", "bridge.yaml", "v2ray-portal.json", "v2ray-bridge.json"):
        result = subprocess.run([sys.executable, "-m", "revproxy", "check", "-c",
                                 str(ROOT / "conf" / name)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        if name == "v2ray-portal.json":  # the document's id, on every address: a warning
            assert result.stdout.strip() == "configuration OK (1 warning)"
            assert "published example id" in result.stderr + result.stdout
        else:
            assert result.stdout.strip() == "configuration OK"
