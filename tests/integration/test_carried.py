"""Visitors that cannot move to another worker as they are (SOCKS5 UDP associations, a TLS
inbound's connections) are carried to the sibling that holds the tunnels (net/pairs.py).

A 3-worker portal whose bridge holds 2 tunnels, none of them in worker 1, which reads the UDP
sockets (so every SOCKS UDP association is there) and accepts its share of TCP visitors:
each must be served through a sibling's tunnel.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.dnsmasq import dnsmasq
from tests.integration.backend import blob_sha256
from tests.integration.conftest import (
    USER_ID,
    Proc,
    free_port,
    needs_v2ray,
    start_end,
    wait_served,
)
from tests.integration.test_operations import POLICY, V2CTL, query
from tests.integration.test_server import status, wait_for, worker_pids
from tests.integration.test_transport import SERVER_NAME, make_certs

NAME = "carried.internal"
ADDRESS = "10.9.8.7"
TIMEOUT = 60
SS_PASSWORD = "carried"
DIG = shutil.which("dig")
SS_TUNNEL = shutil.which("ss-tunnel")


def portal_config_with(tmp, public: int, tunnel: int, socks: int, tls: int, disguised: int,
                       api: int, ss: int, certs) -> dict:
    config = portal_config(USER_ID, public, tunnel, loglevel="info")
    config["server"] = {"workers": 3, "pidFile": str(tmp / "portal.pid"),
                        "stateFile": str(tmp / "portal.state")}
    config["inbounds"] += [
        {"tag": "socks-in", "listen": "127.0.0.1", "port": socks, "protocol": "socks",
         "settings": {"auth": "noauth", "udp": True, "ip": "127.0.0.1"}},
        {"tag": "tls-in", "listen": "127.0.0.1", "port": tls, "protocol": "dokodemo-door",
         "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"},
         "streamSettings": {"security": "tls", "tlsSettings": {"certificates": [
             {"certificateFile": str(certs.cert), "keyFile": str(certs.key)}]}}},
        {"tag": "disguised-in", "listen": "127.0.0.1", "port": disguised,
         "protocol": "dokodemo-door",
         "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"},
         "streamSettings": {"network": "tcp", "tcpSettings": {"header": {"type": "http"}}}},
        {"tag": "ss-in", "listen": "127.0.0.1", "port": ss, "protocol": "shadowsocks",
         "settings": {"method": "aes-128-gcm", "password": SS_PASSWORD, "udp": True}},
    ]
    config["routing"]["rules"].append(
        {"type": "field", "inboundTag": ["socks-in", "tls-in", "disguised-in", "ss-in"],
         "outboundTag": "portal"})
    config["inbounds"].append({"tag": "api", "listen": "127.0.0.1", "port": api,
                               "protocol": "dokodemo-door", "settings": {"address": "127.0.0.1"}})
    config["routing"]["rules"].insert(0, {"type": "field", "inboundTag": ["api"],
                                          "outboundTag": "api"})
    config.update(api={"tag": "api", "services": ["StatsService"]}, stats={}, policy=POLICY)
    return config


def bridge_config_with(tmp, backend: int, tunnel: int) -> dict:
    """Two tunnels; UDP goes out through a freedom without redirect (to dnsmasq)."""
    config = bridge_config(USER_ID, backend, tunnel, loglevel="info")
    config["reverse"]["bridges"][0].update({"minTunnels": 2, "maxTunnels": 2})
    config["outbounds"].append({"tag": "direct", "protocol": "freedom", "settings": {}})
    config["routing"]["rules"].insert(
        1, {"type": "field", "inboundTag": ["bridge"], "network": "udp",
            "outboundTag": "direct"})
    return config


def dns_query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def socks_udp_lookup(socks: int, dns: int, ident: int, tries: int = 5) -> bytes:
    """One SOCKS5 UDP association (RFC 1928): an A query for NAME to dnsmasq through it;
    the answer's DNS message, or b"" if none came."""
    with socket.create_connection(("127.0.0.1", socks), timeout=10) as control:
        control.sendall(b"\x05\x01\x00")
        if control.recv(2) != b"\x05\x00":
            return b""
        control.sendall(b"\x05\x03\x00\x01" + bytes(4) + bytes(2))
        reply = control.recv(10)
        if len(reply) < 10 or reply[1] != 0 or reply[3] != 1:
            return b""
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            udp.settimeout(2)
            header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", dns)
            query = dns_query(NAME, ident)
            for _ in range(tries):  # UDP: a datagram may be lost, or wait for a tunnel
                udp.sendto(header + query, relay)
                try:
                    data = udp.recv(4096)
                except TimeoutError:
                    continue
                if data[:10] == header and data[10:12] == query[:2]:
                    return data[10:]
    return b""


def tls_connect(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return context.wrap_socket(raw, server_hostname=SERVER_NAME)


def tls_get(port: int, path: str = "/") -> bytes:
    with tls_connect(port) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: carried\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def carried(backend, tmp_path_factory):
    """(socks port, tls port, dns port, portal): a portal whose worker 1 holds no tunnel."""
    tmp = tmp_path_factory.mktemp("carried")
    certs = make_certs(tmp / "certs")
    public, tunnel, socks, tls, disguised, api, ss = (free_port() for _ in range(7))
    with dnsmasq([(NAME, ADDRESS)], tmp / "dnsmasq.log") as dns:
        portal = start_end("revproxy", "portal",
                           portal_config_with(tmp, public, tunnel, socks, tls, disguised,
                                              api, ss, certs), tmp)
        bridge = None
        try:
            wait_for(lambda: len(worker_pids(tmp / "portal.pid")) == 3, "3 portal workers")
            first = next(w["pid"] for w in status(tmp / "portal.pid")["workers"]
                         if w["index"] == 1 and w["state"] == "running")
            # Worker 1 is stopped while the bridge dials: the other two accept its tunnels.
            os.kill(first, signal.SIGSTOP)
            try:
                bridge = start_end("revproxy", "bridge",
                                   bridge_config_with(tmp, backend, tunnel), tmp)
                # (within the master's 10 s heartbeat limit, which a stopped worker misses)
                report = wait_for(lambda: (r := status(tmp / "portal.pid"))
                                  and len(r["tunnels"]) == 2 and r, "2 tunnels", 8)
            finally:
                os.kill(first, signal.SIGCONT)
            assert all(t["worker_pid"] != first for t in report["tunnels"]), report
            wait_served(public, procs=(portal, bridge))
            yield SimpleNamespace(socks=socks, tls=tls, disguised=disguised, api=api, ss=ss,
                                  dns=dns, portal=portal, bridge=bridge, tmp=tmp)
        finally:
            if bridge is not None:
                bridge.stop()
            portal.stop()


def test_socks_udp_associations_served_through_a_siblings_tunnel(carried):
    socks, dns, portal = carried.socks, carried.dns, carried.portal
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: socks_udp_lookup(socks, dns, 0x1000 + i), range(24)))
    served = [a for a in answers if socket.inet_aton(ADDRESS) in a]
    assert len(served) == 24, (f"{len(served)}/24 answered in {time.monotonic() - started:.1f}"
                               f" s\n{portal.output()[-3000:]}")
    assert "is lost" not in portal.output()


def test_tls_visitors_served_through_a_siblings_tunnel(carried):
    tls, portal = carried.tls, carried.portal
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: tls_get(tls), range(30)))
    ok = [a for a in answers if a.startswith(b"HTTP/1.1 200") and b"hello" in a]
    assert len(ok) == 30, portal.output()[-3000:]
    assert "no tunnel available" not in portal.output()


@needs_v2ray
@pytest.mark.skipif(DIG is None, reason="dig (dnsutils) is not installed")
def test_v2ray_socks_udp_client_through_the_portal(carried):
    """Stock V2Ray's socks outbound (UDP ASSOCIATE) as the client of the portal's SOCKS
    inbound: dig through V2Ray's dokodemo-door gets the answer from every source."""
    local = free_port()
    client = start_end("v2ray", "v2ray-client", {
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": local, "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": carried.dns,
                                   "network": "udp"}}],
        "outbounds": [{"protocol": "socks", "settings": {"servers": [
            {"address": "127.0.0.1", "port": carried.socks}]}}]}, carried.tmp)
    try:
        dig_until(local, client, "V2Ray")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: dig(local), range(12)))
        assert answers.count(ADDRESS) == 12, (answers, client.output()[-2000:],
                                              carried.portal.output()[-2000:])
    finally:
        client.stop()


def dig_until(port: int, proc, what: str) -> None:
    """Ask through ``port`` until the answer comes (``proc``, the client, is up)."""
    deadline = time.monotonic() + 15
    while dig(port) != ADDRESS:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: no answer\n{proc.output()[-2000:]}")
        time.sleep(0.2)


def dig(port: int) -> str:
    assert DIG is not None
    result = subprocess.run([DIG, "@127.0.0.1", "-p", str(port), NAME, "A", "+short",
                             "+notcp", "+tries=3", "+time=3"],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


@pytest.mark.skipif(SS_TUNNEL is None or DIG is None,
                    reason="ss-tunnel (shadowsocks-libev) and dig are needed")
def test_shadowsocks_udp_through_the_portal(carried):
    """shadowsocks-libev's ss-tunnel (UDP relay, one session per source) -> the portal's
    Shadowsocks inbound -> a sibling's tunnel -> dnsmasq: every source is answered."""
    assert SS_TUNNEL is not None
    local = free_port()
    tunnel = Proc("ss-tunnel", [SS_TUNNEL, "-s", "127.0.0.1", "-p", str(carried.ss),
                                "-l", str(local), "-k", SS_PASSWORD, "-m", "aes-128-gcm",
                                "-L", f"127.0.0.1:{carried.dns}", "-u"], carried.tmp)
    try:
        dig_until(local, tunnel, "ss-tunnel")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: dig(local), range(12)))
        assert answers.count(ADDRESS) == 12, (answers, carried.portal.output()[-2000:])
    finally:
        tunnel.stop()


def test_large_tls_downloads_arrive_whole(carried):
    size = 8 << 20
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: tls_get(carried.tls, f"/blob/{size}"), range(6)))
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        assert len(body) == size and hashlib.sha256(body).hexdigest() == blob_sha256(size)


def disguised_get(port: int, path: str) -> bytes:
    """A GET through the HTTP-disguised inbound: the disguise's request header first, then
    the request; the whole answer (the disguise's response header first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall("GET / HTTP/1.1\r\nHost: disguise\r\n\r\n"
                     f"GET {path} HTTP/1.1\r\nHost: carried\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks = []
        while data := conn.recv(1 << 20):
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.skipif(V2CTL is None, reason="v2ctl (Debian's v2ray) is not installed")
def test_traffic_of_carried_visitors_is_counted_once(carried):
    """The worker that accepted a carried visitor counts it, at its connection; the sibling
    serving the far end of its pair does not count it again."""
    key = "inbound>>>disguised-in>>>traffic>>>downlink"
    before = query(carried.api)
    size = 4 << 20
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: disguised_get(carried.disguised, f"/blob/{size}"),
                                range(12)))
    received = sum(len(a) for a in answers)
    assert received > 12 * size
    wait_for(lambda: query(carried.api).get(key, 0) - before.get(key, 0) >= received,
             "the counters", 10)
    time.sleep(2.5)  # (workers publish their counters every second)
    stats = query(carried.api)
    # (Twice as much if the sibling counted the far ends of the pairs too.)
    assert stats[key] - before.get(key, 0) == received, (stats, before, received)


def test_a_cut_tunnel_resets_carried_visitors(carried):
    """Last (it kills the bridge): downloads through the HTTP-disguised inbound (a wrapped
    stream: carried when its tunnel is in a sibling), cut by the tunnel's death, end in a
    reset, never in an orderly end of stream. (Not through TLS: its close sends a
    close_notify, which reads as an orderly end whoever carried the visitor.)"""
    conns = [socket.create_connection(("127.0.0.1", carried.disguised), timeout=TIMEOUT)
             for _ in range(9)]
    for conn in conns:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: disguise\r\n\r\n"  # the disguise
                     b"GET /blob/1000000000 HTTP/1.1\r\nHost: carried\r\n\r\n")
        assert conn.recv(65536)  # the download has begun
    carried.bridge.signal_all(signal.SIGKILL)
    endings = []
    for conn in conns:
        with conn:
            try:
                while conn.recv(1 << 20):
                    pass
                endings.append("orderly end")
            except ConnectionResetError as exc:
                endings.append(type(exc).__name__)
    assert "orderly end" not in endings, endings
