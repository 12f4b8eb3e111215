"""Real processes on loopback for integration tests: backend, revproxy and v2ray ends."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
V2RAY = shutil.which("v2ray")
USER_ID = "27848739-7e62-4138-9fd3-098a63964b6b"

needs_v2ray = pytest.mark.skipif(
    V2RAY is None and not os.environ.get("CI"), reason="v2ray binary not installed"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A child process whose output goes to a log file, stopped at teardown."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        # A session of its own, so that the whole server (master and workers) can be
        # signalled at once, as an operator's kill of the process group would.
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=ROOT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def signal_all(self, signum: int) -> None:
        """Signal every process of this server (its process group)."""
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.signal_all(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.signal_all(signal.SIGKILL)  # nothing of it may outlive the test
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_end(kind: str, name: str, config: dict, tmp: Path) -> Proc:
    """Start one end (``revproxy`` or ``v2ray``) with ``config`` written as JSON."""
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config, indent=2))
    if kind == "v2ray":
        if V2RAY is None:
            pytest.fail("v2ray is not installed (scripts/test installs it)")
        argv = [V2RAY, "-config", str(path)]
    else:
        argv = [sys.executable, "-m", "revproxy", "run", "-c", str(path)]
    return Proc(name, argv, tmp)


def request(port: int, method: str = "GET", path: str = "/", body: bytes | None = None,
            timeout: float = 60.0, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_served(port: int, timeout: float = 30.0, procs: tuple[Proc, ...] = ()) -> float:
    """Poll the public port until the backend's page comes back; returns the seconds waited."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        for proc in procs:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        try:
            status, body = request(port, timeout=3)
            if status == 200 and body.startswith(b"hello"):
                return time.monotonic() - start
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in procs)
    pytest.fail(f"not served within {timeout} s ({last!r})\n{logs}")


@pytest.fixture(scope="session")
def backend(tmp_path_factory) -> int:
    tmp = tmp_path_factory.mktemp("backend")
    port_file = tmp / "port"
    proc = Proc("backend", [sys.executable, str(HERE / "backend.py"), str(port_file)], tmp)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if time.monotonic() > deadline or not proc.alive():
            pytest.fail(f"backend did not start: {proc.output()}")
        time.sleep(0.05)
    yield int(port_file.read_text())
    proc.stop()
