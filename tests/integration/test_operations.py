"""Operations for real: V2Ray's stats API queried with Debian's ``v2ctl`` (against revproxy
and against V2Ray, the same counter names), a real Prometheus scraping the metrics endpoint
during a load run, the systemd notification sequence on a real datagram socket, and
``revproxy status|reload|stop -c`` finding the master of the shipped examples."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.conftest import (
    ROOT,
    USER_ID,
    free_port,
    needs_v2ray,
    request,
    start_end,
    wait_served,
)

TIMEOUT = 60
V2CTL = shutil.which("v2ctl")
PROMETHEUS = shutil.which("prometheus")
EMAIL = "bridge@example.org"
POLICY = {"levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}},
          "system": {"statsInboundUplink": True, "statsInboundDownlink": True,
                     "statsOutboundUplink": True, "statsOutboundDownlink": True}}


def wait_for(predicate, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def portal_with_api(public: int, tunnel: int, api: int, **server) -> dict:
    """The documented portal plus V2Ray's documented API set-up: a dokodemo-door inbound
    tagged "api" routed to the api tag."""
    config = portal_config(USER_ID, public, tunnel, loglevel="info")
    config["inbounds"][1]["settings"]["clients"][0]["email"] = EMAIL
    config["inbounds"].append({"tag": "api", "listen": "127.0.0.1", "port": api,
                               "protocol": "dokodemo-door",
                               "settings": {"address": "127.0.0.1"}})  # V2Ray's own, no port
    config["routing"]["rules"].insert(0, {"type": "field", "inboundTag": ["api"],
                                          "outboundTag": "api"})
    config["api"] = {"tag": "api", "services": ["StatsService", "LoggerService"]}
    config["stats"] = {}
    config["policy"] = POLICY
    if server:
        config["server"] = server
    return config


def v2ctl(api: int, method: str, request_text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([V2CTL, "api", f"--server=127.0.0.1:{api}", method, request_text],
                          capture_output=True, text=True, timeout=TIMEOUT)


def query(api: int, pattern: str = "", reset: bool = False) -> dict[str, int]:
    """v2ctl's QueryStats output (protobuf text) as name -> value."""
    done = v2ctl(api, "StatsService.QueryStats",
                 f'pattern: "{pattern}" reset: {"true" if reset else "false"}')
    assert done.returncode == 0, done.stdout + done.stderr
    found = {}
    name = None
    for line in done.stdout.splitlines():  # stat: <, name: "...", value: N, >
        line = line.strip()
        if line.startswith("name: "):
            name = json.loads(line[6:])
            found[name] = 0
        elif line.startswith("value: ") and name is not None:
            found[name] = int(line[7:])
    return found


def get_raw(port: int, path: str) -> tuple[bytes, bytes]:
    """One request over a plain socket: (what was sent, what came back)."""
    sent = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(sent)
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    return sent, b"".join(chunks)


@pytest.mark.skipif(V2CTL is None and not os.environ.get("CI"), reason="v2ctl not installed")
@needs_v2ray
def test_v2ctl_queries_revproxy_and_v2ray_alike(backend, tmp_path):
    public, tunnel, api = free_port(), free_port(), free_port()
    access = tmp_path / "access.log"
    config = portal_with_api(public, tunnel, api, workers=2)
    config["log"]["access"] = str(access)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp_path)
    portal = start_end("revproxy", "portal", config, tmp_path)
    try:
        wait_served(public, procs=(bridge, portal))
        time.sleep(1.5)  # the workers publish every second: wait_served's bytes first
        query(api, reset=True)  # from here on, only what this test moves
        size = 300_000
        sent, answer = get_raw(public, f"/blob/{size}")
        assert answer.startswith(b"HTTP/1.1 200") and len(answer) > size
        # the workers publish their counters every second
        stats = wait_for(lambda: (lambda s: s.get("inbound>>>external>>>traffic>>>downlink")
                                  == len(answer) and s)(query(api)), "the counters")
        assert stats["inbound>>>external>>>traffic>>>uplink"] == len(sent)
        # the tunnel carried it, VMess and mux framing added
        assert len(answer) < stats["inbound>>>interconn>>>traffic>>>uplink"] < len(answer) * 1.1
        assert stats["user>>>bridge@example.org>>>traffic>>>uplink"] \
            == stats["inbound>>>interconn>>>traffic>>>uplink"]
        one = v2ctl(api, "StatsService.GetStats",
                    'name: "inbound>>>external>>>traffic>>>downlink" reset: true')
        assert one.returncode == 0 and f"value: {len(answer)}" in one.stdout, one.stdout
        assert query(api, "external>>>traffic>>>downlink") == {
            "inbound>>>external>>>traffic>>>downlink": 0}
        sys_stats = v2ctl(api, "StatsService.GetSysStats", "")
        assert sys_stats.returncode == 0 and "Uptime:" in sys_stats.stdout, sys_stats.stdout
        missing = v2ctl(api, "StatsService.GetStats", 'name: "nope" reset: false')
        assert missing.returncode != 0 and "nope not found." in missing.stdout + missing.stderr
        assert v2ctl(api, "LoggerService.RestartLogger", "").returncode == 0
        revproxy_names = set(query(api))
        line = next(x for x in access.read_text().splitlines() if f"/blob/{size}" not in x
                    and "accepted" in x and "[external -> portal]" in x)
        assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d 127\.0\.0\.1:\d+ accepted "
                            r"tcp:127\.0\.0\.1:80 \[external -> portal\]", line), line
    finally:
        portal.stop()
        bridge.stop()
    # The same configuration served by V2Ray (its API on the same inbound): the same names.
    v2ray = start_end("v2ray", "v2ray-portal", portal_with_api(public, tunnel, api), tmp_path)
    bridge = start_end("revproxy", "bridge2", bridge_config(USER_ID, backend, tunnel), tmp_path)
    try:
        wait_served(public, procs=(bridge, v2ray))
        get_raw(public, "/")
        v2ray_names = wait_for(lambda: (lambda s: len(s) == len(revproxy_names) and s)(
            set(query(api))), "V2Ray's counters")
        assert v2ray_names == revproxy_names
    finally:
        v2ray.stop()
        bridge.stop()


def prometheus_query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]["result"]


FAMILIES = (
    "revproxy_build_info", "revproxy_generation", "revproxy_reloads_total",
    "revproxy_reloads_refused_total", "revproxy_worker_respawns_total",
    "revproxy_master_cpu_seconds_total", "revproxy_master_resident_memory_bytes",
    "revproxy_master_open_fds", "revproxy_workers", "revproxy_worker_cpu_seconds_total",
    "revproxy_worker_resident_memory_bytes", "revproxy_worker_open_fds",
    "revproxy_worker_connections", "revproxy_worker_sessions_total",
    "revproxy_worker_generation", "revproxy_worker_start_time_seconds",
    "revproxy_worker_heartbeat_age_seconds", "revproxy_worker_handshake_failures_total",
    "revproxy_worker_replays_refused_total", "revproxy_worker_handoffs_sent_total",
    "revproxy_worker_handoffs_received_total", "revproxy_handshake_failures_total",
    "revproxy_replays_refused_total", "revproxy_handoffs_sent_total",
    "revproxy_handoffs_received_total", "revproxy_inbound_bytes_total",
    "revproxy_inbound_sessions_total", "revproxy_outbound_bytes_total",
    "revproxy_outbound_sessions_total", "revproxy_user_bytes_total",
    "revproxy_user_sessions_total", "revproxy_tunnels", "revproxy_tunnel_active_sessions",
    "revproxy_tunnel_sessions_total", "revproxy_tunnel_bytes_total",
    "revproxy_tunnel_throughput_bytes_per_second", "revproxy_tunnel_draining",
    "revproxy_tunnel_age_seconds", "revproxy_tunnel_last_heard_seconds",
)


@pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"),
                    reason="prometheus not installed")
def test_prometheus_scrapes_every_worker_during_load(backend, tmp_path):
    public, tunnel, api, metrics, prom = (free_port() for _ in range(5))
    config = portal_with_api(public, tunnel, api, workers=2, metrics=f"127.0.0.1:{metrics}")
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, backend, tunnel), tmp_path)
    portal = start_end("revproxy", "portal", config, tmp_path)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: revproxy\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    server = subprocess.Popen(
        [PROMETHEUS or "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_served(public, procs=(bridge, portal))
        base = _sessions(prom, required=False)
        requests, size = 40, 50_000
        for _ in range(requests):
            status, body = request(public, path=f"/blob/{size}")
            assert status == 200 and len(body) == size
        moved = requests * size
        wait_for(lambda: _sessions(prom) >= base + requests, "a scrape after the load")
        names = {series["metric"]["__name__"] for series in
                 prometheus_query(prom, '{__name__=~"revproxy_.*"}')}
        assert set(FAMILIES) <= names, set(FAMILIES) - names
        down = prometheus_query(
            prom, 'revproxy_inbound_bytes_total{tag="external",direction="down"}')
        assert moved < float(down[0]["value"][1]) < moved * 1.05
        portal_down = prometheus_query(
            prom, 'revproxy_outbound_bytes_total{tag="portal",direction="down"}')
        assert float(portal_down[0]["value"][1]) > moved
        workers = prometheus_query(prom, "revproxy_worker_resident_memory_bytes")
        assert len({s["metric"]["pid"] for s in workers}) == 2  # one series per worker
        served = prometheus_query(prom, "sum(revproxy_worker_sessions_total)")
        assert float(served[0]["value"][1]) >= requests
        tunnels = prometheus_query(prom, 'sum(revproxy_tunnel_bytes_total{direction="down"})')
        assert float(tunnels[0]["value"][1]) > moved  # what the portal received, in frames
        report = json.loads(revproxy("status", "--json", "--pid", str(portal.pid)).stdout)
        assert sorted(h["title"].split(" ")[1] for h in report["helpers"]) == ["api",
                                                                                "metrics"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()
        portal.stop()
        bridge.stop()


def _sessions(prom: int, required: bool = True) -> float:
    try:
        found = prometheus_query(prom, 'revproxy_inbound_sessions_total{tag="external"}')
    except OSError:
        if required:
            return 0.0
        return wait_for(lambda: _sessions(prom), "Prometheus's first scrape")
    if not found:
        return 0.0 if required else wait_for(lambda: _sessions(prom), "a first scrape")
    return float(found[0]["value"][1])


def test_notify_sequence_on_a_real_socket(backend, tmp_path):
    """Type=notify: READY=1 once the workers serve, RELOADING=1 then READY=1 around a HUP,
    STOPPING=1 on TERM; the socket stands in for systemd's."""
    public, tunnel = free_port(), free_port()
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(TIMEOUT)
    config = portal_config(USER_ID, public, tunnel)
    config["server"] = {"workers": 2}
    (tmp_path / "portal.json").write_text(json.dumps(config))
    log = open(tmp_path / "portal.log", "wb")
    master = subprocess.Popen([sys.executable, "-m", "revproxy", "run", "-c",
                               str(tmp_path / "portal.json")], stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                              env={**os.environ, "NOTIFY_SOCKET": path})
    try:
        def message() -> dict[str, str]:
            data, sender = sock.recvfrom(4096)
            return dict(line.split("=", 1) for line in data.decode().splitlines())

        ready = message()
        assert ready["READY"] == "1" and ready["MAINPID"] == str(master.pid)
        assert ready["STATUS"] == "2 workers running, generation 1"
        with socket.create_connection(("127.0.0.1", public), timeout=10):
            pass  # the workers accept
        master.send_signal(signal.SIGHUP)
        reloading = message()
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert message() == {"READY": "1", "STATUS": "2 workers running, generation 2",
                             "MAINPID": str(master.pid)}
        master.send_signal(signal.SIGTERM)
        assert message() == {"STOPPING": "1", "STATUS": "stopping"}
        assert master.wait(TIMEOUT) == 0
    finally:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait(10)
        log.close()
        sock.close()


def _busy(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def revproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "revproxy", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=TIMEOUT)


def test_status_reload_stop_find_the_shipped_examples_by_config(tmp_path):
    """conf/portal.yaml and conf/bridge.yaml set no pidFile: the commands find the master
    by the configuration it was started with (relative or absolute path alike)."""
    if any(_busy(port) for port in (8080, 10240)):
        pytest.skip("the examples' ports 8080/10240 are in use")
    portal = start_yaml("portal", tmp_path)
    try:
        status = wait_for(lambda: (lambda done: done.returncode == 0 and done)(
            revproxy("status", "--json", "-c", "conf/portal.yaml")), "revproxy status")
        report = json.loads(status.stdout)
        assert report["master"]["pid"] == portal.pid
        absolute = revproxy("status", "-c", str(ROOT / "conf" / "portal.yaml"))
        assert absolute.returncode == 0 and f"pid {portal.pid}" in absolute.stdout
        assert revproxy("reload", "-c", "conf/portal.yaml").stdout == \
            f"reload requested (pid {portal.pid})\n"
        wait_for(lambda: json.loads(revproxy("status", "--json", "-c", "conf/portal.yaml")
                                    .stdout or "{}").get("generation") == 2, "the reload")
        assert revproxy("stop", "-c", "conf/portal.yaml").returncode == 0
        assert portal.wait(TIMEOUT) == 0
        gone = revproxy("status", "-c", "conf/portal.yaml")
        assert gone.returncode == 1 and "no revproxy runs with conf/portal.yaml" in gone.stderr
    finally:
        if portal.poll() is None:
            os.killpg(portal.pid, signal.SIGKILL)
            portal.wait(10)


def start_yaml(name: str, tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "revproxy", "run", "-c",
                             f"conf/{name}.yaml"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)


# -- the visitor's address at the backend ------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX_PROXY_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format visitor '$proxy_protocol_addr:$proxy_protocol_port via $remote_addr "$request"';
    access_log {tmp}/nginx-access.log visitor;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "hello from nginx\\n"; }}
    }}
}}
"""
HAPROXY_CONF = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend public
    bind 127.0.0.1:{port}
    default_backend portal
backend portal
    server portal 127.0.0.1:{upstream} send-proxy-v2
"""


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{what} did not start")
            time.sleep(0.1)


@pytest.fixture
def nginx_pp(tmp_path):
    """nginx that takes a PROXY header on every connection and logs the address in it."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (scripts/test installs it)")
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    tmp.chmod(0o755)
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_PROXY_CONF.format(tmp=tmp, port=port))
    log = open(tmp / "nginx.out", "wb")
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e",
                             str(tmp / "nginx-startup.log")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc, "nginx")
        yield port, tmp / "nginx-access.log"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()


def visit(port: int, source: str = "127.0.0.1") -> tuple[str, bytes]:
    """One request from ``source`` (a loopback address of our choosing): (our address, body)."""
    with socket.socket() as conn:
        conn.settimeout(TIMEOUT)
        conn.bind((source, 0))
        conn.connect(("127.0.0.1", port))
        conn.sendall(b"GET /visit HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
        host, local_port = conn.getsockname()[:2]
    return f"{host}:{local_port}", b"".join(chunks)


def visitors_logged(log: Path) -> list[str]:
    return [line.split(" ")[0] for line in log.read_text().splitlines() if "/visit" in line]


@pytest.mark.parametrize("bridge_kind", ["revproxy", pytest.param("v2ray", marks=needs_v2ray)])
@pytest.mark.parametrize("version", [1, 2])
def test_the_backend_sees_the_visitor_through_a_bridge(nginx_pp, tmp_path, bridge_kind,
                                                       version):
    nginx, access = nginx_pp
    public, tunnel = free_port(), free_port()
    config = portal_config(USER_ID, public, tunnel)
    config["reverse"]["portals"][0]["proxyProtocol"] = version
    config["server"] = {"workers": 2}
    portal = start_end("revproxy", "portal", config, tmp_path)
    bridge = start_end(bridge_kind, "bridge", bridge_config(USER_ID, nginx, tunnel), tmp_path)
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):  # several, so both workers
            address, answer = wait_for(lambda s=source: _try_visit(public, s), "a visit")
            assert answer.endswith(b"hello from nginx\n"), answer
            wait_for(lambda a=address: a in visitors_logged(access), f"{address} in the log")
    finally:
        portal.stop()
        bridge.stop()


def _try_visit(port: int, source: str) -> tuple[str, bytes] | None:
    try:
        address, answer = visit(port, source)
    except OSError:
        return None
    return (address, answer) if answer.startswith(b"HTTP/1.1 200") else None


@pytest.mark.skipif(not os.path.exists(HAPROXY) and not os.environ.get("CI"),
                    reason="haproxy is not installed (scripts/test installs it)")
def test_haproxy_in_front_of_the_portal_passes_its_client_on(nginx_pp, tmp_path):
    """HAProxy (send-proxy-v2) -> portal (acceptProxyProtocol, proxyProtocol 1) -> tunnel ->
    bridge -> nginx: nginx logs HAProxy's client, not HAProxy."""
    nginx, access = nginx_pp
    public, tunnel, front = free_port(), free_port(), free_port()
    config = portal_config(USER_ID, public, tunnel)
    config["inbounds"][0]["streamSettings"] = {"network": "tcp",
                                               "tcpSettings": {"acceptProxyProtocol": True}}
    config["reverse"]["portals"][0]["proxyProtocol"] = 1
    portal = start_end("revproxy", "portal", config, tmp_path)
    bridge = start_end("revproxy", "bridge", bridge_config(USER_ID, nginx, tunnel), tmp_path)
    (tmp_path / "haproxy.cfg").write_text(HAPROXY_CONF.format(port=front, upstream=public))
    log = open(tmp_path / "haproxy.log", "wb")
    haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(front, haproxy, "haproxy")
        address, answer = wait_for(lambda: _try_visit(front, "127.0.0.5"), "a visit")
        assert answer.endswith(b"hello from nginx\n"), answer
        wait_for(lambda: address in visitors_logged(access), f"{address} in nginx's log")
    finally:
        os.killpg(haproxy.pid, signal.SIGTERM)
        haproxy.wait(20)
        log.close()
        portal.stop()
        bridge.stop()
