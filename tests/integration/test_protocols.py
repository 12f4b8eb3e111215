"""VLESS, Shadowsocks, SOCKS and HTTP proxy with real processes on loopback:

- V2Ray 4.34 as the client of revproxy's inbounds, and revproxy as the client of V2Ray's
  (every protocol, every Shadowsocks method, with accounts where the protocol has them);
- real clients: curl through revproxy's SOCKS (5 with a host name, 4a) and HTTP inbounds
  (absolute URI, CONNECT, Basic auth and 407), ss-local from shadowsocks-libev against the
  Shadowsocks inbound, plain HTTP to the VLESS inbound served by its fallback;
- reverse proxying: a portal's SOCKS and HTTP inbounds reach a host only the bridge's freedom
  knows, through tunnels carried by VLESS or Shadowsocks, revproxy and V2Ray at either end;
- bad input at each new inbound: only the offender is closed, the server keeps serving.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from tests.integration.backend import PAGE, blob_sha256
from tests.integration.conftest import (
    USER_ID,
    Proc,
    free_port,
    needs_v2ray,
    request,
    start_end,
    wait_served,
)
from tests.integration.test_transport import SERVER_NAME, make_certs, stream_settings

SS_METHODS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "none")
SS_LIBEV_NAMES = {"chacha20-poly1305": "chacha20-ietf-poly1305"}
PROTOCOLS = ("socks", "http", "vless", *(f"ss-{method}" for method in SS_METHODS))
ACCOUNT = {"user": "alice", "pass": "s3cret"}
PASSWORD = "ss-password"
HIDDEN = "hidden.internal"  # a name only the bridge's freedom resolves (to 127.0.0.1)
DOMAIN = "reverse.example"
BLOB = 3 * 2**20
SS_LOCAL = shutil.which("ss-local")
# One worker is enough here; a lingering session (UDP has no end) must not slow the teardown.
SERVER = {"workers": 1, "gracefulTimeout": 1}
CURL = shutil.which("curl")

needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")
needs_ss_local = pytest.mark.skipif(SS_LOCAL is None, reason="shadowsocks-libev not installed")


def inbound(protocol: str, port: int, tag: str | None = None) -> dict:
    """A server inbound of ``protocol`` (one of PROTOCOLS) on 127.0.0.1:``port``; the same
    JSON serves revproxy and V2Ray."""
    if protocol == "socks":
        settings: dict = {"auth": "password", "accounts": [ACCOUNT]}
    elif protocol == "http":
        settings = {"accounts": [ACCOUNT]}
    elif protocol == "vless":
        settings = {"clients": [{"id": USER_ID}], "decryption": "none"}
    else:
        settings = {"method": protocol[3:], "password": PASSWORD}
        protocol = "shadowsocks"
    return {"tag": tag or f"in-{port}", "listen": "127.0.0.1", "port": port,
            "protocol": protocol, "settings": settings}


def outbound(protocol: str, port: int, tag: str, address: str = "127.0.0.1") -> dict:
    """A client outbound of ``protocol`` to ``address``:``port``."""
    if protocol in ("socks", "http"):
        settings: dict = {"servers": [{"address": address, "port": port, "users": [ACCOUNT]}]}
    elif protocol == "vless":
        settings = {"vnext": [{"address": address, "port": port,
                               "users": [{"id": USER_ID, "encryption": "none"}]}]}
    else:
        settings = {"servers": [{"address": address, "port": port, "method": protocol[3:],
                                 "password": PASSWORD}]}
        protocol = "shadowsocks"
    return {"tag": tag, "protocol": protocol, "settings": settings}


def server_config(ports: dict[str, int], extra_inbounds: list | None = None) -> dict:
    """Every protocol's inbound on its port, straight out through freedom."""
    return {
        "log": {"loglevel": "warning"},
        "server": SERVER,
        "inbounds": [inbound(name, port) for name, port in ports.items()]
        + (extra_inbounds or []),
        "outbounds": [{"protocol": "freedom"}],
    }


def client_config(ports: dict[str, int], public: dict[str, int], backend: int) -> dict:
    """A dokodemo-door per protocol (``public``) to the backend, each through that
    protocol's outbound to the server's port."""
    return {
        "log": {"loglevel": "warning"},
        "server": SERVER,
        "inbounds": [
            {"tag": f"door-{name}", "listen": "127.0.0.1", "port": public[name],
             "protocol": "dokodemo-door",
             "settings": {"address": "127.0.0.1", "port": backend, "network": "tcp"}}
            for name in ports],
        "outbounds": [outbound(name, port, f"out-{name}") for name, port in ports.items()],
        "routing": {"rules": [
            {"type": "field", "inboundTag": [f"door-{name}"], "outboundTag": f"out-{name}"}
            for name in ports]},
    }


def v2ray_json(config: dict) -> dict:
    """V2Ray does not know revproxy's own ``server`` section."""
    return {key: value for key, value in config.items() if key != "server"}


def wait_all(ports, procs: tuple[Proc, ...]) -> None:
    for port in ports:
        wait_served(port, procs=procs)


def wait_listening(port: int, procs: tuple[Proc, ...], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on {port}")


def check_page_and_blob(port: int) -> None:
    status, body = request(port, timeout=30)
    assert (status, body) == (200, PAGE)
    status, body = request(port, path=f"/blob/{BLOB}", timeout=60)
    assert status == 200 and hashlib.sha256(body).hexdigest() == blob_sha256(BLOB)
    upload = b"u" * (BLOB // 3)
    status, body = request(port, method="POST", path="/sha256", body=upload, timeout=60)
    assert (status, body.decode()) == (200, hashlib.sha256(upload).hexdigest())


# -- V2Ray as the client of revproxy, and the other way round --------------------------------

@pytest.fixture(scope="module")
def revproxy_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocols-server")
    ports = {name: free_port() for name in PROTOCOLS}
    proc = start_end("revproxy", "server", server_config(ports), tmp)
    for port in ports.values():
        wait_listening(port, (proc,))
    yield ports, proc
    proc.stop()


@pytest.fixture(scope="module")
def v2ray_client_of_revproxy(revproxy_server, backend, tmp_path_factory):
    ports, server = revproxy_server
    tmp = tmp_path_factory.mktemp("protocols-v2ray-client")
    public = {name: free_port() for name in ports}
    client = start_end("v2ray", "client", v2ray_json(client_config(ports, public, backend)), tmp)
    wait_all(public.values(), (client, server))
    yield public
    client.stop()


@needs_v2ray
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_v2ray_client_through_revproxy_inbound(v2ray_client_of_revproxy, protocol):
    check_page_and_blob(v2ray_client_of_revproxy[protocol])


@pytest.fixture(scope="module")
def revproxy_client_of_v2ray(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocols-v2ray-server")
    ports = {name: free_port() for name in PROTOCOLS}
    server = start_end("v2ray", "server", v2ray_json(server_config(ports)), tmp)
    public = {name: free_port() for name in ports}
    client = start_end("revproxy", "client", client_config(ports, public, backend), tmp)
    wait_all(public.values(), (client, server))
    yield public
    client.stop()
    server.stop()


@needs_v2ray
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_revproxy_client_through_v2ray_inbound(revproxy_client_of_v2ray, protocol):
    check_page_and_blob(revproxy_client_of_v2ray[protocol])


# -- Real clients against revproxy's inbounds ------------------------------------------------

def curl(*args: str) -> subprocess.CompletedProcess:
    assert CURL is not None
    return subprocess.run([CURL, "-sS", "-m", "20", *args], capture_output=True, timeout=30)


@needs_curl
def test_curl_socks5_hostname_and_socks4a(revproxy_server, backend):
    ports, _ = revproxy_server
    proxy = f"alice:s3cret@127.0.0.1:{ports['socks']}"
    done = curl("--socks5-hostname", proxy, f"http://localhost:{backend}/")
    assert done.stdout == PAGE, done.stderr
    refused = curl("--socks5-hostname", f"alice:wrong@127.0.0.1:{ports['socks']}",
                   f"http://localhost:{backend}/")
    assert refused.returncode != 0 and refused.stdout == b""


@needs_curl
def test_curl_http_proxy_absolute_uri_connect_and_auth(revproxy_server, backend):
    ports, _ = revproxy_server
    proxy = f"http://alice:s3cret@127.0.0.1:{ports['http']}"
    url = f"http://localhost:{backend}/"
    assert curl("-x", proxy, url).stdout == PAGE
    assert curl("-p", "-x", proxy, url).stdout == PAGE  # CONNECT
    # Two requests on one kept-alive connection, and an upload.
    both = curl("-x", proxy, url, url)
    assert both.stdout == PAGE * 2
    posted = curl("-x", proxy, "--data-binary", "x" * 70000, f"http://localhost:{backend}/sha256")
    assert posted.stdout.decode() == hashlib.sha256(b"x" * 70000).hexdigest()
    denied = curl("-o", "/dev/null", "-w", "%{http_code}", "-x",
                  f"http://127.0.0.1:{ports['http']}", url)
    assert denied.stdout == b"407"


@needs_ss_local
@pytest.mark.parametrize("method", SS_METHODS[:3])
def test_ss_local_against_revproxy(revproxy_server, backend, tmp_path, method):
    ports, _ = revproxy_server
    local = free_port()
    assert SS_LOCAL is not None
    ss = Proc("ss-local", [SS_LOCAL, "-s", "127.0.0.1", "-p", str(ports[f"ss-{method}"]),
                           "-l", str(local), "-k", PASSWORD,
                           "-m", SS_LIBEV_NAMES.get(method, method)], tmp_path)
    try:
        wait_listening(local, (ss,))
        done = curl("--socks5-hostname", f"127.0.0.1:{local}",
                    f"http://localhost:{backend}/blob/{BLOB}")
        assert hashlib.sha256(done.stdout).hexdigest() == blob_sha256(BLOB), done.stderr
    finally:
        ss.stop()


@pytest.fixture(scope="module")
def vless_with_fallback(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vless-fallback")
    port = free_port()
    vless = inbound("vless", port)
    vless["settings"]["fallbacks"] = [{"dest": backend}]
    proc = start_end("revproxy", "vless", {"server": SERVER, "inbounds": [vless],
                                           "outbounds": [{"protocol": "freedom"}]}, tmp)
    wait_listening(port, (proc,))
    yield port, proc
    proc.stop()


def test_vless_fallback_serves_what_is_no_vless(vless_with_fallback):
    port, _ = vless_with_fallback
    assert request(port) == (200, PAGE)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("protocols-certs"))


@pytest.fixture(scope="module")
def vless_tls_with_fallbacks(backend, certs, tmp_path_factory):
    """A VLESS+TLS inbound whose fallbacks are chosen by ALPN: "h2" goes to a port where
    nothing listens, anything else to the backend."""
    tmp = tmp_path_factory.mktemp("vless-tls-fallback")
    port = free_port()
    vless = inbound("vless", port)
    vless["settings"]["fallbacks"] = [{"dest": backend}, {"alpn": "h2", "dest": free_port()}]
    vless["streamSettings"] = stream_settings("tls", certs, server=True)
    vless["streamSettings"]["tlsSettings"]["alpn"] = ["h2", "http/1.1"]
    proc = start_end("revproxy", "vless-tls", {"server": SERVER, "inbounds": [vless],
                                               "outbounds": [{"protocol": "freedom"}]}, tmp)
    wait_listening(port, (proc,))
    yield port, proc
    proc.stop()


@needs_curl
def test_vless_tls_fallback_by_alpn(vless_tls_with_fallbacks, certs):
    port, proc = vless_tls_with_fallbacks
    url = f"https://{SERVER_NAME}:{port}/"
    pin = ["--cacert", str(certs.ca), "--resolve", f"{SERVER_NAME}:{port}:127.0.0.1"]
    assert curl(*pin, "--http1.1", url).stdout == PAGE
    refused = curl(*pin, "--http2", url)  # ALPN h2: its fallback has nothing behind it
    assert refused.returncode != 0 and refused.stdout == b""
    assert proc.alive()


# -- Reverse proxy: a portal's SOCKS and HTTP inbounds reach the bridge's hidden network -----

def portal(tunnel: str, tunnel_port: int, socks_port: int, http_port: int,
           stream: dict | None = None) -> dict:
    tunnel_in = inbound(tunnel, tunnel_port, tag="interconn")
    if stream:
        tunnel_in["streamSettings"] = stream
    return {
        "log": {"loglevel": "warning"},
        "server": SERVER,
        "reverse": {"portals": [{"tag": "portal", "domain": DOMAIN}]},
        "inbounds": [
            tunnel_in,
            {"tag": "socks-in", "listen": "127.0.0.1", "port": socks_port, "protocol": "socks",
             "settings": {"auth": "noauth"}},
            {"tag": "http-in", "listen": "127.0.0.1", "port": http_port, "protocol": "http",
             "settings": {}},
        ],
        "routing": {"rules": [
            {"type": "field", "inboundTag": ["interconn", "socks-in", "http-in"],
             "outboundTag": "portal"}]},
    }


def bridge(tunnel: str, tunnel_port: int, stream: dict | None = None) -> dict:
    """The bridge's freedom sends every host to 127.0.0.1 (port kept): "hidden.internal"
    exists for it alone."""
    tunnel_out = outbound(tunnel, tunnel_port, "interconn")
    if stream:
        tunnel_out["streamSettings"] = stream
    return {
        "log": {"loglevel": "warning"},
        "server": SERVER,
        "reverse": {"bridges": [{"tag": "bridge", "domain": DOMAIN}]},
        "outbounds": [
            {"tag": "hidden-network", "protocol": "freedom",
             "settings": {"redirect": "127.0.0.1:0"}},
            tunnel_out,
        ],
        "routing": {"rules": [
            {"type": "field", "inboundTag": ["bridge"], "domain": [f"full:{DOMAIN}"],
             "outboundTag": "interconn"},
            {"type": "field", "inboundTag": ["bridge"], "outboundTag": "hidden-network"},
        ]},
    }


REVERSE = [
    pytest.param(("revproxy", "v2ray", "vless", "tcp"), id="revproxy_portal-v2ray_bridge-vless"),
    pytest.param(("revproxy", "revproxy", "ss-aes-256-gcm", "tcp"),
                 id="revproxy_portal-revproxy_bridge-shadowsocks"),
    pytest.param(("v2ray", "revproxy", "vless", "tcp"), id="v2ray_portal-revproxy_bridge-vless"),
    pytest.param(("v2ray", "revproxy", "ss-chacha20-poly1305", "tcp"),
                 id="v2ray_portal-revproxy_bridge-shadowsocks"),
    pytest.param(("revproxy", "v2ray", "vless", "ws+tls"),
                 id="revproxy_portal-v2ray_bridge-vless-ws+tls"),
    pytest.param(("v2ray", "revproxy", "vless", "ws+tls"),
                 id="v2ray_portal-revproxy_bridge-vless-ws+tls"),
    pytest.param(("revproxy", "v2ray", "ss-aes-128-gcm", "tls"),
                 id="revproxy_portal-v2ray_bridge-shadowsocks-tls"),
]


@pytest.fixture(scope="module", params=REVERSE)
def reverse_site(request, certs, tmp_path_factory):
    portal_kind, bridge_kind, tunnel, transport = request.param
    tmp = tmp_path_factory.mktemp("protocols-reverse")
    tunnel_port, socks_port, http_port = free_port(), free_port(), free_port()
    server_stream = client_stream = None
    if transport != "tcp":
        server_stream = stream_settings(transport, certs, server=True)
        client_stream = stream_settings(transport, certs, server=False)
    config = portal(tunnel, tunnel_port, socks_port, http_port, server_stream)
    portal_proc = start_end(portal_kind, "portal",
                            v2ray_json(config) if portal_kind == "v2ray" else config, tmp)
    config = bridge(tunnel, tunnel_port, client_stream)
    bridge_proc = start_end(bridge_kind, "bridge",
                            v2ray_json(config) if bridge_kind == "v2ray" else config, tmp)
    procs = (portal_proc, bridge_proc)
    wait_listening(socks_port, procs)
    yield socks_port, http_port, procs
    bridge_proc.stop()
    portal_proc.stop()


def through_tunnel(args: list[str], procs: tuple[Proc, ...], expect: bytes) -> None:
    """Retry while the bridge's first tunnel comes up."""
    deadline = time.monotonic() + 30
    while True:
        done = curl(*args)
        if done.stdout == expect:
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in procs)
            pytest.fail(f"curl {args}: {done.stderr!r}\n{logs}")
        time.sleep(0.3)


@needs_v2ray
@needs_curl
def test_portal_socks_and_http_reach_the_hidden_host(reverse_site, backend):
    socks_port, http_port, procs = reverse_site
    url = f"http://{HIDDEN}:{backend}/"
    through_tunnel(["--socks5-hostname", f"127.0.0.1:{socks_port}", url], procs, PAGE)
    through_tunnel(["-x", f"http://127.0.0.1:{http_port}", url], procs, PAGE)
    through_tunnel(["-p", "-x", f"http://127.0.0.1:{http_port}", url], procs, PAGE)
    blob = curl("--socks5-hostname", f"127.0.0.1:{socks_port}", f"http://{HIDDEN}:{backend}"
                f"/blob/{BLOB}")
    assert hashlib.sha256(blob.stdout).hexdigest() == blob_sha256(BLOB)


# -- Bad input -------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\x00",
    b"\x05",
    b"\x05\x01\x02\x01\x05alice\x01x",  # socks: wrong password
    b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 3000,  # socks4: endless user id
    b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70000,  # endless head
    b"CONNECT a:b:c HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello start
    b"\x00" + uuid.UUID(USER_ID).bytes + b"\x00\x09",  # vless: bad command
    b"\x00" + uuid.uuid4().bytes + b"\x00\x01\x00\x50\x01\x7f\x00\x00\x01",  # unknown user
    bytes(range(256)) * 8,
]


def poke(port: int, payload: bytes) -> None:
    """Send ``payload`` and close; the server must cope."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # the server may cut an endless header short


@needs_v2ray
def test_bad_input_closes_only_the_offender(revproxy_server, v2ray_client_of_revproxy):
    ports, server = revproxy_server
    for port in ports.values():
        for payload in GARBAGE:
            poke(port, payload)
        # A handshake cut short and left open is closed by the server's deadline.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in ports.values()]
    try:
        for sock in idle:
            sock.sendall(b"\x05")
        for sock in idle:
            sock.settimeout(15)
            assert sock.recv(100) in (b"", b"\x05\xff")  # closed (socks: no method offered)
    finally:
        for sock in idle:
            sock.close()
    for name in PROTOCOLS:
        assert request(v2ray_client_of_revproxy[name], timeout=30) == (200, PAGE)
    assert server.alive()
    assert "Traceback" not in server.output()


# -- UDP over VLESS ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def udp_echo():
    """A UDP echo server on loopback (a thread of the test process)."""
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(b"echo:" + data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


@needs_v2ray
def test_v2ray_udp_through_revproxy_vless(revproxy_server, udp_echo, tmp_path):
    """V2Ray's dokodemo-door takes datagrams and sends them with the VLESS UDP command;
    revproxy's VLESS inbound unframes them and its freedom carries them to the echo server."""
    ports, server = revproxy_server
    door = free_port()
    config = {
        "log": {"loglevel": "warning"},
        "inbounds": [{"tag": "door", "listen": "127.0.0.1", "port": door,
                      "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1", "port": udp_echo, "network": "udp"}}],
        "outbounds": [outbound("vless", ports["vless"], "out")],
    }
    client = start_end("v2ray", "udp-client", config, tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1)
            answers = set()
            deadline = time.monotonic() + 20
            while len(answers) < 3 and time.monotonic() < deadline:
                for n in range(3):
                    sock.sendto(b"ping%d" % n + b"x" * 1500, ("127.0.0.1", door))
                try:
                    while True:
                        answers.add(sock.recv(65535))
                except TimeoutError:
                    pass
        assert answers == {b"echo:ping%d" % n + b"x" * 1500 for n in range(3)}, client.output()
    finally:
        client.stop()
    assert server.alive()
