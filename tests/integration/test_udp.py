"""UDP end to end: ``dig`` through a portal's dokodemo-door UDP inbound, across the reverse
tunnel as mux UDP sessions, out of the bridge's freedom to a real DNS server (dnsmasq on
loopback), with revproxy and V2Ray on either end; and bad datagrams on the way in."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.conftest import (
    USER_ID,
    Proc,
    free_port,
    needs_v2ray,
    start_end,
    wait_served,
)

DIG = shutil.which("dig")
DNSMASQ = shutil.which("dnsmasq", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
pytestmark = [
    needs_v2ray,
    pytest.mark.skipif(DIG is None or DNSMASQ is None,
                       reason="dig (dnsutils) and dnsmasq are needed (scripts/test installs them)"),
]

NAME = "test.internal"
ADDRESS = "10.1.2.3"
COMBOS = [pytest.param((bridge, portal), id=f"{bridge}_bridge-{portal}_portal")
          for bridge, portal in itertools.product(("revproxy", "v2ray"), repeat=2)]


def free_udp_port() -> int:
    """A port free for both TCP and UDP on loopback (the dokodemo-door takes both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dnsmasq")
    port = free_udp_port()
    proc = Proc("dnsmasq", [str(DNSMASQ), "--no-daemon", f"--port={port}",
                            "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                            "--no-hosts", f"--address=/{NAME}/{ADDRESS}",
                            f"--pid-file={tmp / 'dnsmasq.pid'}"], tmp)
    deadline = time.monotonic() + 10
    while dig(port, timeout=1) != ADDRESS:
        if not proc.alive() or time.monotonic() > deadline:
            pytest.fail(f"dnsmasq does not answer:\n{proc.output()[-2000:]}")
        time.sleep(0.1)
    yield port
    proc.stop()


def dig(port: int, name: str = NAME, timeout: int = 3) -> str:
    """One A query over UDP with dig; its short answer ("" if none came)."""
    result = subprocess.run(
        [str(DIG), "@127.0.0.1", "-p", str(port), name, "A", "+short", "+notcp", "+tries=1",
         f"+time={timeout}"], capture_output=True, text=True, timeout=timeout + 10)
    return result.stdout.strip() if result.returncode == 0 else ""


def udp_portal_config(public: int, tunnel: int, udp_public: int, dns: int) -> dict:
    """The document's portal with one more inbound: UDP to the DNS server, by the bridge."""
    config = portal_config(USER_ID, public, tunnel)
    config["inbounds"].append(
        {"tag": "dns-in", "listen": "127.0.0.1", "port": udp_public,
         "protocol": "dokodemo-door",
         "settings": {"address": "127.0.0.1", "port": dns, "network": "udp"}})
    config["routing"]["rules"].append(
        {"type": "field", "inboundTag": ["dns-in"], "outboundTag": "portal"})
    return config


def udp_bridge_config(backend: int, tunnel: int) -> dict:
    """The document's bridge; UDP sessions go to a freedom without redirect."""
    config = bridge_config(USER_ID, backend, tunnel)
    config["outbounds"].append({"tag": "direct", "protocol": "freedom", "settings": {}})
    config["routing"]["rules"].insert(
        1, {"type": "field", "inboundTag": ["bridge"], "network": "udp",
            "outboundTag": "direct"})
    return config


@pytest.fixture(scope="module", params=COMBOS)
def udp_port(request, backend, dns_port, tmp_path_factory):
    bridge_kind, portal_kind = request.param
    tmp = tmp_path_factory.mktemp("udp")
    public, tunnel, udp_public = free_port(), free_port(), free_udp_port()
    portal = start_end(portal_kind, "portal",
                       udp_portal_config(public, tunnel, udp_public, dns_port), tmp)
    bridge = start_end(bridge_kind, "bridge", udp_bridge_config(backend, tunnel), tmp)
    wait_served(public, procs=(portal, bridge))
    yield udp_public, (portal, bridge)
    bridge.stop()
    portal.stop()


def test_dig_through_the_tunnel(udp_port):
    port, procs = udp_port
    assert dig(port) == ADDRESS, "\n".join(p.output()[-2000:] for p in procs)


def test_many_sources_at_once(udp_port):
    port, _ = udp_port
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: dig(port, timeout=5), range(16)))
    assert answers.count(ADDRESS) >= 15  # UDP: one may be lost, not more


def test_bad_datagrams_do_not_stop_it(udp_port):
    port, procs = udp_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\xff" * 4000, ("127.0.0.1", port))  # too large for a mux UDP frame
        sock.sendto(b"", ("127.0.0.1", port))
        for size in (1, 17, 512, 2048, 2049, 9000):
            sock.sendto(bytes(range(256)) * (size // 256) + b"x" * (size % 256),
                        ("127.0.0.1", port))
    time.sleep(0.5)
    assert all(proc.alive() for proc in procs)
    assert dig(port) == ADDRESS  # the tunnel survived: the next source is served


SS_TUNNEL = shutil.which("ss-tunnel")


@pytest.mark.skipif(SS_TUNNEL is None, reason="ss-tunnel (shadowsocks-libev) is not installed")
@pytest.mark.parametrize("method", ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305"])
def test_dig_through_ss_tunnel_to_the_shadowsocks_inbound(method, dns_port, tmp_path):
    """shadowsocks-libev's ss-tunnel (UDP relay) -> revproxy's Shadowsocks inbound UDP ->
    freedom -> dnsmasq."""
    ss_port, local = free_udp_port(), free_udp_port()
    server = start_end("revproxy", "ss-server", {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": ss_port, "protocol": "shadowsocks",
                      "settings": {"method": method, "password": "pw", "udp": True}}],
        "outbounds": [{"protocol": "freedom"}]}, tmp_path)
    tunnel = Proc("ss-tunnel", [str(SS_TUNNEL), "-s", "127.0.0.1", "-p", str(ss_port),
                                "-l", str(local), "-k", "pw", "-m", method,
                                "-L", f"127.0.0.1:{dns_port}", "-u"], tmp_path)
    try:
        deadline = time.monotonic() + 15
        answer = ""
        while answer != ADDRESS and time.monotonic() < deadline:
            answer = dig(local, timeout=1)
        assert answer == ADDRESS, server.output()[-2000:] + tunnel.output()[-2000:]
    finally:
        tunnel.stop()
        server.stop()


def test_dig_through_v2ray_to_the_socks_inbound_udp(dns_port, tmp_path):
    """Stock V2Ray as the client of revproxy's SOCKS5 UDP: V2Ray's dokodemo-door (UDP) ->
    its socks outbound (UDP ASSOCIATE) -> revproxy's SOCKS inbound (``udp``) -> freedom ->
    dnsmasq."""
    socks, local = free_port(), free_udp_port()
    server = start_end("revproxy", "socks-server", {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": socks, "protocol": "socks",
                      "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}}],
        "outbounds": [{"protocol": "freedom"}]}, tmp_path)
    client = start_end("v2ray", "v2ray-client", {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": local, "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": dns_port,
                                   "network": "udp"}}],
        "outbounds": [{"protocol": "socks", "settings": {"servers": [
            {"address": "127.0.0.1", "port": socks}]}}]}, tmp_path)
    try:
        deadline = time.monotonic() + 15
        answer = ""
        while answer != ADDRESS and time.monotonic() < deadline:
            answer = dig(local, timeout=1)
        assert answer == ADDRESS, server.output()[-2000:] + client.output()[-2000:]
        with ThreadPoolExecutor(4) as pool:  # more sources: one association each
            answers = list(pool.map(lambda _: dig(local, timeout=3), range(8)))
        assert answers.count(ADDRESS) >= 7, server.output()[-2000:] + client.output()[-2000:]
    finally:
        client.stop()
        server.stop()
