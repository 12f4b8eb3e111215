"""An inbound's ``sockopt`` on its listener is set by the master, at bind time: workers that
drop privileges (``server.user``) could not set SO_MARK, which needs CAP_NET_ADMIN."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys

import psutil
import pytest

from tests.integration.conftest import ROOT, Proc, free_port, start_end, wait_served
from tests.integration.test_master import running_workers
from tests.integration.test_server import bridge_with, portal_with, wait_for

MARK = 0x2A
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
PROBE = "import pprint, gevent, wsproto, revproxy.server.worker"


def python_for_nobody() -> tuple[str, str] | None:
    """An interpreter whose workers can still import once they are nobody, and the
    PYTHONPATH it needs: ours, else the system's with our packages (ours may live where
    nobody can read, such as under /root)."""
    packages = os.pathsep.join([*site.getsitepackages(), str(ROOT)])
    for python, path in ((sys.executable, os.environ.get("PYTHONPATH", "")),
                         ("/usr/bin/python3", packages)):
        if not os.path.exists(python):
            continue
        probe = subprocess.run([*AS_NOBODY, "env", f"PYTHONPATH={path}", python, "-c", PROBE],
                               capture_output=True, timeout=30, cwd="/")
        if probe.returncode == 0:
            return python, path
    return None


def listener_line(port: int) -> str:
    """``ss``'s line for the TCP listener on ``port`` (its extended details included)."""
    result = subprocess.run(["ss", "-tlnHe", f"sport = :{port}"], capture_output=True,
                            text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                    reason="dropping privileges and SO_MARK need root (and setpriv)")
def test_workers_of_another_user_serve_a_marked_listener(backend, tmp_path, monkeypatch):
    found = python_for_nobody()
    if found is None:
        pytest.fail("no Python that the user nobody can run revproxy with")
    python, path = found
    public, tunnel = free_port(), free_port()
    config = portal_with(tmp_path, public, tunnel, 2, user="nobody")
    config["inbounds"][0]["streamSettings"] = {"sockopt": {"mark": MARK}}
    (tmp_path / "portal.json").write_text(json.dumps(config))
    monkeypatch.setenv("PYTHONPATH", path)
    portal = Proc("portal", [python, "-m", "revproxy", "run", "-c",
                             str(tmp_path / "portal.json")], tmp_path)
    monkeypatch.undo()
    bridge = start_end("revproxy", "bridge", bridge_with(tmp_path, backend, tunnel, 1),
                       tmp_path)
    try:
        wait_served(public, procs=(portal, bridge))
        workers = wait_for(lambda: (found := running_workers(tmp_path / "portal.pid"))
                           and len(found) == 2 and found, "2 running workers")
        assert {psutil.Process(w["pid"]).username() for w in workers} == {"nobody"}
        assert psutil.Process(portal.pid).username() == "root"
        line = listener_line(public)
        assert f"fwmark:{MARK:#x}" in line, line
        assert "fwmark" not in listener_line(tunnel)  # no sockopt there
        assert "EPERM" not in portal.output() and "Traceback" not in portal.output()
    finally:
        bridge.stop()
        portal.stop()
