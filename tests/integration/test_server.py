"""The multi-process server for real: titles, status, signals, reload, worker loss,
cross-worker hand-off, shared replay filter and traffic-weighted balancing."""

from __future__ import annotations

import array
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from revproxy.demo import bridge_config, portal_config
from tests.integration.backend import blob_sha256
from tests.integration.conftest import (
    ROOT,
    USER_ID,
    free_port,
    request,
    start_end,
    wait_served,
)
from tests.integration.test_bad_input import answer_of, tunnel_header

TIMEOUT = 60


def portal_with(tmp, public, tunnel, workers, **server):
    config = portal_config(USER_ID, public, tunnel, loglevel="info")
    config["server"] = {"workers": workers, "pidFile": str(tmp / "portal.pid"),
                        "stateFile": str(tmp / "portal.state"), **server}
    return config


def bridge_with(tmp, backend, tunnel, workers, min_tunnels=None, max_tunnels=None):
    config = bridge_config(USER_ID, backend, tunnel, loglevel="info")
    config["server"] = {"workers": workers, "pidFile": str(tmp / "bridge.pid"),
                        "stateFile": str(tmp / "bridge.state")}
    if min_tunnels:
        config["reverse"]["bridges"][0]["minTunnels"] = min_tunnels
    if max_tunnels:
        config["reverse"]["bridges"][0]["maxTunnels"] = max_tunnels
    return config


def status(pidfile) -> dict:
    result = subprocess.run([sys.executable, "-m", "revproxy", "status", "--json", "--pidfile",
                             str(pidfile)], capture_output=True, text=True, timeout=TIMEOUT,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def worker_pids(pidfile) -> set[int]:
    if not pidfile.exists():  # the master is still starting
        return set()
    return {w["pid"] for w in status(pidfile)["workers"] if w["state"] == "running"}


class Loop(threading.Thread):
    """Sequential GET requests to the public port until stopped; counts outcomes."""

    def __init__(self, port: int, limit: int = 100_000) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.limit = limit
        self.ok = 0
        self.failed: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set() and self.ok + len(self.failed) < self.limit:
            try:
                code, body = request(self.port, timeout=30)
                if code == 200 and body.startswith(b"hello"):
                    self.ok += 1
                else:
                    self.failed.append(f"status {code}")
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(repr(exc))

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(TIMEOUT)


@contextlib.contextmanager
def running(tmp, backend, portal_workers, bridge_workers, **bridge_options):
    """A portal and a bridge, served end to end; yields (public port, portal, bridge)."""
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_with(tmp, public, tunnel, portal_workers),
                       tmp)
    bridge = start_end("revproxy", "bridge",
                       bridge_with(tmp, backend, tunnel, bridge_workers, **bridge_options), tmp)
    try:
        wait_served(public, procs=(portal, bridge))
        yield public, portal, bridge
    finally:
        bridge.stop()
        portal.stop()


@pytest.fixture
def pair(backend, tmp_path):
    """A 2-worker portal and a 2-worker bridge; yields (public port, portal, bridge, tmp)."""
    with running(tmp_path, backend, 2, 2) as (public, portal, bridge):
        yield public, portal, bridge, tmp_path


def test_titles_and_status(pair):
    public, portal, bridge, tmp = pair
    report = wait_for(lambda: (r := status(tmp / "portal.pid")) and len(r["tunnels"]) >= 2 and r,
                      "the bridge's two tunnels in the portal's table")
    assert report["master"]["pid"] == portal.pid
    children = {p.pid for p in psutil.Process(portal.pid).children()}
    assert {w["pid"] for w in report["workers"]} == children and len(children) == 2
    assert all(w["state"] == "running" and w["rss"] > 0 for w in report["workers"])
    assert all(t["role"] == "portal" and t["tag"] == "portal" for t in report["tunnels"])
    bridge_report = status(tmp / "bridge.pid")
    assert len(bridge_report["tunnels"]) >= 2
    assert {t["role"] for t in bridge_report["tunnels"]} == {"bridge"}

    title = psutil.Process(portal.pid).cmdline()[0]
    # The kernel may keep only as much of the title as the original command line's room.
    assert title.startswith("revproxy: master [/")
    assert f"revproxy: master [{tmp / 'portal.json'}]".startswith(title.rstrip()), title
    wait_for(lambda: "[portal: " in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                    text=True).stdout, "worker titles")
    titles = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "revproxy: worker 1/2 gen 1 [portal: " in titles
    assert "revproxy: worker 2/2 gen 1 [bridge: " in titles or \
        "revproxy: worker 1/2 gen 1 [bridge: " in titles

    human = subprocess.run([sys.executable, "-m", "revproxy", "status", "--pidfile",
                            str(tmp / "portal.pid")], capture_output=True, text=True,
                           timeout=TIMEOUT, cwd=ROOT)
    assert human.returncode == 0 and "TUNNEL" in human.stdout


def test_killed_worker_is_replaced(pair):
    public, portal, bridge, tmp = pair
    before = worker_pids(tmp / "portal.pid")
    loop = Loop(public)
    loop.start()
    time.sleep(1)
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (p := worker_pids(tmp / "portal.pid")) and len(p) == 2
                     and victim not in p and p, "a replacement worker")
    time.sleep(2)
    loop.finish()
    assert len(after - before) == 1
    assert loop.ok > 20
    # Sequential requests: only the one in flight on the dead worker may fail.
    assert len(loop.failed) <= 2, loop.failed
    wait_served(public, timeout=10, procs=(portal, bridge))


def test_reload_drops_nothing_and_adds_an_inbound(pair, backend):
    public, portal, bridge, tmp = pair
    loop = Loop(public, limit=2500)
    loop.start()
    time.sleep(0.5)
    config = json.loads((tmp / "portal.json").read_text())
    extra = free_port()
    config["inbounds"].append({**config["inbounds"][0], "tag": "external2", "port": extra})
    config["routing"]["rules"][0]["inboundTag"].append("external2")
    (tmp / "portal.json").write_text(json.dumps(config))
    portal.signal(signal.SIGHUP)
    wait_served(extra, procs=(portal, bridge))
    time.sleep(1)
    bridge.signal(signal.SIGHUP)  # the bridge side reloads too
    loop.join(240)
    assert loop.ok + len(loop.failed) >= 2000
    assert loop.failed == []
    report = status(tmp / "portal.pid")
    assert report["generation"] == 2
    assert {w["generation"] for w in report["workers"]} == {2}


def test_reload_with_broken_config_keeps_serving(pair):
    public, portal, bridge, tmp = pair
    (tmp / "portal.json").write_text('{"inbounds": [ {"port": "abc"} ]}')
    portal.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in portal.output(), "the reload error in the log")
    assert "portal.json" in portal.output().split("reload refused", 1)[1].splitlines()[0]
    wait_served(public, timeout=10, procs=(portal, bridge))
    assert status(tmp / "portal.pid")["generation"] == 1


def test_term_during_download_completes_then_exits_0(pair):
    public, portal, bridge, tmp = pair
    size = 50 * 2**20
    conn = http.client.HTTPConnection("127.0.0.1", public, timeout=TIMEOUT)
    conn.request("GET", f"/blob/{size}")
    response = conn.getresponse()
    first = response.read(1 << 20)
    portal.signal(signal.SIGTERM)
    digest = hashlib.sha256(first)
    received = len(first)
    time.sleep(0.5)
    while data := response.read(1 << 20):
        digest.update(data)
        received += len(data)
    conn.close()
    assert received == size and digest.hexdigest() == blob_sha256(size)
    assert portal.popen.wait(TIMEOUT) == 0


def test_ttin_ttou_change_worker_count(pair):
    public, portal, bridge, tmp = pair
    portal.signal(signal.SIGTTIN)
    wait_for(lambda: len(worker_pids(tmp / "portal.pid")) == 3, "a third worker")
    for left in (2, 1):  # one at a time: the kernel merges pending signals of one kind
        portal.signal(signal.SIGTTOU)
        wait_for(lambda n=left: len(status(tmp / "portal.pid")["workers"]) == n,
                 f"{left} workers left")
    wait_served(public, timeout=20, procs=(portal, bridge))


def test_usr1_reopens_rotated_log(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    log_path = tmp_path / "error.log"
    config = portal_with(tmp_path, public, tunnel, 2)
    config["log"]["error"] = str(log_path)
    portal = start_end("revproxy", "portal", config, tmp_path)
    try:
        wait_for(lambda: log_path.exists() and "running" in log_path.read_text(), "log lines")
        os.rename(log_path, tmp_path / "error.log.1")
        portal.signal(signal.SIGUSR1)
        wait_for(log_path.exists, "a new log file")
        portal.signal(signal.SIGTTIN)  # something for master and a worker to log
        wait_for(lambda: "running" in log_path.read_text(), "fresh lines in the new log")
    finally:
        portal.stop()


def test_replay_to_another_worker_is_refused(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_with(tmp_path, public, tunnel, 4), tmp_path)
    try:
        wait_for(lambda: len(worker_pids(tmp_path / "portal.pid")) == 4, "4 workers")
        sealed, _ = tunnel_header()
        with socket.create_connection(("127.0.0.1", tunnel), timeout=10) as genuine:
            genuine.sendall(sealed)
            assert genuine.recv(65536), "the genuine handshake got no answer"
            # The kernel spreads these over the 4 workers: none may accept the replay.
            for _ in range(12):
                assert answer_of(tunnel, sealed) == b""
    finally:
        portal.stop()


def test_one_tunnel_serves_four_portal_workers(backend, tmp_path):
    with running(tmp_path, backend, 4, 1, min_tunnels=1, max_tunnels=1) as (public, portal, _):
        wait_for(lambda: len(worker_pids(tmp_path / "portal.pid")) == 4, "4 workers")
        assert len(status(tmp_path / "portal.pid")["tunnels"]) == 1
        results = []

        def visit(i):
            try:
                code, body = request(public, path=f"/?n={i}", timeout=TIMEOUT)
                results.append(code == 200 and body.startswith(b"hello") or code)
            except (OSError, http.client.HTTPException) as exc:
                results.append(repr(exc))

        threads = [threading.Thread(target=visit, args=(i,)) for i in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert results.count(True) == 200, [r for r in results if r is not True]

        def accepting() -> set[int]:
            return {w["pid"] for w in status(tmp_path / "portal.pid")["workers"]
                    if w["total_sessions"] > 0}

        # (workers publish their counts once a second)
        assert wait_for(lambda: len(accepting()) >= 2, "the hand-off path exercised", 5)
        assert "is lost" not in portal.output() and "refused" not in portal.output()


def test_short_requests_avoid_the_busy_tunnel(backend, tmp_path):
    with running(tmp_path, backend, 1, 1, min_tunnels=2, max_tunnels=2) as (public, _, _):
        wait_for(lambda: len(status(tmp_path / "portal.pid")["tunnels"]) == 2, "2 tunnels")
        conn = http.client.HTTPConnection("127.0.0.1", public, timeout=TIMEOUT)
        conn.request("GET", f"/blob/{64 * 2**30}")
        response = conn.getresponse()
        reading = threading.Event()
        reading.set()

        def drain():  # keep the bulk download flowing, about 40 MB/s: busy, but not so long
            # that the tunnel's cipher wears out and it is rotated under the test
            while reading.is_set() and response.read(1 << 20):
                time.sleep(0.025)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        time.sleep(2.5)  # the bulk tunnel's throughput shows in the table
        before = {t["id"]: t for t in status(tmp_path / "portal.pid")["tunnels"]}
        busy = max(before.values(), key=lambda t: t["active_sessions"])["id"]
        assert before[busy]["throughput"] > 1e6
        for _ in range(20):
            code, _ = request(public, timeout=TIMEOUT)
            assert code == 200
        after = {t["id"]: t for t in status(tmp_path / "portal.pid")["tunnels"]}
        reading.clear()
        conn.close()
        idle = next(i for i in after if i != busy)
        assert after[busy]["total_sessions"] == before[busy]["total_sessions"]
        assert after[idle]["total_sessions"] >= before[idle]["total_sessions"] + 20


def test_master_never_imports_gevent():
    code = ("import sys, revproxy.cli, revproxy.server.supervisor, revproxy.server.statetable, "
            "revproxy.server.status; sys.exit('gevent' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=TIMEOUT).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_worker_that_cannot_boot_halts_the_master(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    config = portal_with(tmp_path, public, tunnel, 2, user="no-such-user-revproxy")
    portal = start_end("revproxy", "portal", config, tmp_path)
    try:
        assert portal.popen.wait(TIMEOUT) == 1
        log = portal.output()
        assert "cannot start" in log and "no-such-user-revproxy" in log
        assert "could not boot; halting" in log
        assert "Traceback" not in log
    finally:
        portal.stop()


# -- the hand-off channel (issue 11): only the server's own workers can use it

def handoff_endpoints(portal, count: int) -> dict[int, str]:
    """worker pid -> the Unix socket it receives hand-offs on, once ``count`` workers run."""
    def found():
        endpoints = {}
        for child in psutil.Process(portal.pid).children():
            for conn in child.net_connections(kind="unix"):
                if conn.laddr:
                    endpoints[child.pid] = conn.laddr
        return len(endpoints) == count and endpoints
    return wait_for(found, f"{count} hand-off endpoints")


NOBODY_PROBE = """
import socket, sys
for path in sys.argv[1:]:
    if path.startswith("@"):  # an abstract name
        path = "\\0" + path[1:]
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            if kind == socket.SOCK_DGRAM:
                sock.sendto(b"hello", path)
            else:
                sock.connect(path)
            print(repr(path), kind, "reached")
        except OSError as exc:
            print(repr(path), kind, exc.errno)
        sock.close()
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                    reason="becoming nobody needs root and setpriv")
def test_another_user_cannot_reach_the_hand_off_channel(backend, tmp_path):
    public, tunnel = free_port(), free_port()
    portal = start_end("revproxy", "portal", portal_with(tmp_path, public, tunnel, 2), tmp_path)
    try:
        endpoints = handoff_endpoints(portal, 2)
        paths = list(endpoints.values())
        assert all(path.startswith("/") for path in paths), "an abstract name is squattable"
        directory = os.path.dirname(paths[0])
        assert {os.path.dirname(path) for path in paths} == {directory}
        assert os.stat(directory).st_mode & 0o777 == 0o700
        # the names workers used to bind: nobody there any more
        old = [f"@revproxy-handoff-{pid}" for pid in endpoints]
        probe = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             "/usr/bin/python3", "-c", NOBODY_PROBE, *paths, *old],
            capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
        assert probe.returncode == 0, probe.stderr
        lines = probe.stdout.splitlines()
        assert len(lines) == 3 * (len(paths) + len(old))
        denied = [line for line in lines if line.endswith(" 13")]  # EACCES
        refused = [line for line in lines if line.endswith(" 111")]  # ECONNREFUSED
        assert len(denied) == 3 * len(paths), lines
        assert len(refused) == 3 * len(old), lines
        assert not [line for line in lines if "reached" in line]
        assert portal.alive()
    finally:
        portal.stop()
    assert not os.path.exists(directory), "the master leaves its directory behind"


def test_strangers_with_our_uid_are_refused_and_serving_goes_on(backend, tmp_path):
    from revproxy.server.handoff import Handoff

    with running(tmp_path, backend, 2, 1) as (public, portal, _):
        endpoints = handoff_endpoints(portal, 2)
        before = {pid: psutil.Process(pid).num_fds() for pid in endpoints}
        meta = Handoff(1, "portal", "tcp", "127.0.0.1", 80, "192.0.2.1:1").encode()
        pipes = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger, \
                socket.create_connection(("127.0.0.1", public)) as visitor:
            for path in endpoints.values():
                for _ in range(20):
                    pipe_r, pipe_w = os.pipe()
                    pipes.append(pipe_r)
                    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe_w]))]
                    stranger.sendmsg([meta], fds, 0, path)  # a non-socket descriptor
                    os.close(pipe_w)
                stranger.sendto(b"\x01garbage", path)
                stranger.sendmsg([meta], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [visitor.fileno()] * 3))], 0, path)
            # Every received pipe end is closed: each read sees the end of the pipe.
            for pipe_r in pipes:
                assert wait_for(lambda fd=pipe_r: os.read(fd, 1) == b"", "a closed pipe")
                os.close(pipe_r)
            # The socket sent along was not taken: it is not reset, nothing arrives on it.
            visitor.settimeout(0.5)
            with pytest.raises(TimeoutError):
                visitor.recv(100)
        for _ in range(10):
            code, body = request(public, timeout=TIMEOUT)
            assert code == 200 and body.startswith(b"hello")
        after = {pid: psutil.Process(pid).num_fds() for pid in endpoints}
        assert set(after) == set(before)  # no worker died or was replaced
        assert all(after[pid] <= before[pid] + 4 for pid in after), (before, after)
        log = portal.output()
        assert "hand-off refused: from pid" in log and "not a sibling" in log
        assert "Traceback" not in log and "died" not in log

