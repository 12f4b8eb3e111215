"""The Debian package, for real (issue 4): build it with scripts/build-deb, install it with
apt-get, run the installed /usr/bin/revproxy (Debian's /usr/bin/python3 and python3-* libraries,
not the venv) as a portal and a bridge on loopback the way revproxy.service runs it, then
remove and purge it and check that the system is clean again.

Needs root on Debian (CI is); elsewhere it is skipped. It installs the package's dependencies
(python3-gevent and friends) and leaves them installed, like the build dependencies that
scripts/build-deb installs; the package itself, its user, configs and logs are purged.
The steps that need the multi-process server (reload on HUP, ``revproxy status``) switch on
by themselves once ``revproxy.cli`` has ``cmd_status``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import revproxy.cli
from tests.integration.conftest import ROOT, USER_ID, Proc, free_port, wait_served

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/etc/debian_version").exists()
    or shutil.which("apt-get") is None,
    reason="builds and installs a Debian package: needs root on Debian",
)
needs_multiprocess = pytest.mark.skipif(
    not hasattr(revproxy.cli, "cmd_status"), reason="needs the multi-process server"
)

BIN = "/usr/bin/revproxy"
SYSTEM_PY = "/usr/bin/python3"
CONFIG = "/etc/revproxy/config.yaml"
UNITS = ("revproxy.service", "revproxy@.service")
# What the package or its maintainer scripts put on the system (units: /lib or /usr/lib).
PACKAGE_PATHS = ("/usr/bin/revproxy", "/usr/lib/python3/dist-packages/revproxy", "/etc/revproxy",
                 "/etc/logrotate.d/revproxy", "/var/log/revproxy", "/run/revproxy",
                 "/usr/share/doc/revproxy", "/usr/share/man/man1/revproxy.1.gz")
# A clean environment: no venv, PYTHONPATH or pyenv shims may leak into the installed program.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
APT_ENV = {**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}

# Runs a command under the seccomp filters that revproxy.service asks systemd for, read from
# the installed unit (see unit_confinement): SystemCallFilter= (an allow-list, EPERM for the
# rest), RestrictAddressFamilies= and MemoryDenyWriteExecute= (systemd's four rules). Built with
# libseccomp, which apt itself needs. systemd is not PID 1 in the containers this runs in, so
# this is how the test makes sure the hardening does not break the program.
SECCOMP_LAUNCHER = r"""
import ctypes, json, os, sys
spec = json.load(open(sys.argv[1]))
lib = ctypes.CDLL("libseccomp.so.2")
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EQ, GT, MASKED_EQ = 0x7FFF0000, 4, 6, 7
def errno(n):
    return 0x00050000 | n
def rule(ctx, action, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # names this kernel/architecture does not have are skipped, as systemd does
        arr = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
        assert lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr) == 0, name
filters = []
if spec["mdwe"]:
    ctx = lib.seccomp_init(ALLOW)
    rule(ctx, errno(1), "mmap", (2, MASKED_EQ, 6, 6))            # PROT_WRITE|PROT_EXEC
    rule(ctx, errno(1), "mprotect", (2, MASKED_EQ, 4, 4))        # PROT_EXEC
    rule(ctx, errno(1), "pkey_mprotect", (2, MASKED_EQ, 4, 4))
    rule(ctx, errno(1), "shmat", (2, MASKED_EQ, 0o100000, 0o100000))  # SHM_EXEC
    filters.append(ctx)
if spec["families"]:
    ctx = lib.seccomp_init(ALLOW)
    for family in range(max(spec["families"])):
        if family not in spec["families"]:
            rule(ctx, errno(97), "socket", (0, EQ, family, 0))   # EAFNOSUPPORT
    rule(ctx, errno(97), "socket", (0, GT, max(spec["families"]), 0))
    filters.append(ctx)
if spec["allow"]:  # last: once loaded, seccomp() itself is no longer allowed
    ctx = lib.seccomp_init(errno(1))
    for name in spec["allow"]:
        rule(ctx, ALLOW, name)
    filters.append(ctx)
for ctx in filters:
    assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[2], sys.argv[2:])
"""
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}


def syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group such as @system-service, nested groups expanded."""
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    seen.add(name)
    listing = sh("systemd-analyze", "syscall-filter", name).stdout.splitlines()[1:]
    calls: set[str] = set()
    for entry in (line.strip() for line in listing):
        if entry and not entry.startswith("#") and entry not in seen:
            calls |= syscall_group(entry, seen)
    return calls


def unit_confinement() -> dict:
    """The seccomp side of the installed revproxy.service, for SECCOMP_LAUNCHER."""
    unit = next(Path(d, UNITS[0]) for d in ("/lib/systemd/system", "/usr/lib/systemd/system")
                if Path(d, UNITS[0]).is_file())
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings.get("SystemCallErrorNumber", ["EPERM"]) == ["EPERM"]  # what we emulate
    allow: set[str] = set()
    if shutil.which("systemd-analyze"):
        for value in settings.get("SystemCallFilter", []):
            if value.startswith("~"):
                allow -= set().union(*(syscall_group(n) for n in value[1:].split()))
            else:
                allow |= set().union(*(syscall_group(n) for n in value.split()))
    families = [FAMILIES[f] for v in settings.get("RestrictAddressFamilies", [])
                for f in v.split()]
    return {"allow": sorted(allow), "families": sorted(families),
            "mdwe": settings.get("MemoryDenyWriteExecute") == ["yes"]}


def sh(*argv: str, check: bool = True, timeout: float = 300, env: dict | None = None,
       cwd: str = "/") -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env or CLEAN_ENV, cwd=cwd)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def dpkg_status(package: str = "revproxy") -> str:
    """'install ok installed', 'deinstall ok config-files', or '' when dpkg does not know it."""
    done = sh("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def purge_if_present() -> None:
    if dpkg_status() not in ("", "unknown ok not-installed"):
        sh("apt-get", "purge", "-y", "revproxy", env=APT_ENV)


def user_exists(name: str = "revproxy") -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def deb() -> Path:
    """dist/revproxy_<version>_all.deb, built once per session (unit tests skipped: the suite
    runs them itself, and the build-time run depends on Debian's pytest/hypothesis)."""
    env = {**APT_ENV, "DEB_BUILD_OPTIONS": "nocheck"}
    done = sh(str(ROOT / "scripts" / "build-deb"), env=env, cwd=str(ROOT), timeout=900)
    assert "lintian: 0 errors" in done.stderr, done.stderr
    path = ROOT / done.stdout.strip().splitlines()[-1]
    assert path.is_file() and path.name.endswith("_all.deb"), done.stdout
    return path


@pytest.fixture(scope="module")
def installed(deb: Path):
    """The package installed with apt-get (a leftover from an aborted run is purged first);
    purged at the end whatever happened in between."""
    purge_if_present()
    sh("apt-get", "install", "-y", f"./{deb.relative_to(ROOT)}", env=APT_ENV, cwd=str(ROOT))
    assert dpkg_status() == "install ok installed"
    yield deb
    stop_all_servers()
    purge_if_present()
    if user_exists():  # purge could not delete it (a failed test left a process behind)
        sh("deluser", "--quiet", "--system", "revproxy", check=False)
        sh("delgroup", "--quiet", "--system", "revproxy", check=False)


def runs_as_revproxy(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam("revproxy").pw_uid
    except (FileNotFoundError, KeyError):
        return False


class Servers:
    """Portal and bridge run from the installed package much as revproxy.service runs it: user
    revproxy, no new privileges, the unit's seccomp filters, a clean environment, working
    directory /. (The backend is the suite's own.)"""

    def __init__(self, backend_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="revproxy-deb-"))
        os.chmod(self.dir, 0o755)
        entry = pwd.getpwnam("revproxy")
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)  # pid and state files go here
        (self.dir / "seccomp.py").write_text(SECCOMP_LAUNCHER)
        (self.dir / "seccomp.json").write_text(json.dumps(unit_confinement()))
        self.public_port = free_port()
        vmess_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.descendants: set[int] = set()
        server = {"workers": 2, "gracefulTimeout": 5}
        self.configs = {
            "portal": {
                "log": {"loglevel": "info"},
                "server": {**server, "pidFile": str(self.dir / "portal.pid"),
                           "stateFile": str(self.dir / "portal.state")},
                "reverse": {"portals": [{"tag": "portal", "domain": "deb.test.invalid"}]},
                "inbounds": [
                    {"tag": "external", "listen": "127.0.0.1", "port": self.public_port,
                     "protocol": "dokodemo-door",
                     "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"}},
                    {"tag": "interconn", "listen": "127.0.0.1", "port": vmess_port,
                     "protocol": "vmess", "settings": {"clients": [{"id": USER_ID}]}},
                ],
                "routing": {"rules": [
                    {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
                    {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"},
                ]},
            },
            "bridge": {
                "log": {"loglevel": "info"},
                "server": {**server, "pidFile": str(self.dir / "bridge.pid"),
                           "stateFile": str(self.dir / "bridge.state")},
                "reverse": {"bridges": [{"tag": "bridge", "domain": "deb.test.invalid"}]},
                "outbounds": [
                    {"tag": "out", "protocol": "freedom",
                     "settings": {"redirect": f"127.0.0.1:{backend_port}"}},
                    {"tag": "interconn", "protocol": "vmess", "settings": {"vnext": [
                        {"address": "127.0.0.1", "port": vmess_port,
                         "users": [{"id": USER_ID}]}]}},
                ],
                "routing": {"rules": [
                    {"type": "field", "inboundTag": ["bridge"],
                     "domain": ["full:deb.test.invalid"], "outboundTag": "interconn"},
                    {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"},
                ]},
            },
        }
        for name, config in self.configs.items():
            path = self.dir / f"{name}.json"
            path.write_text(json.dumps(config, indent=2))
            os.chmod(path, 0o644)

    def config_path(self, name: str) -> str:
        return str(self.dir / f"{name}.json")

    def pidfile(self, name: str) -> str:
        return str(self.dir / f"{name}.pid")

    def start(self, name: str) -> Proc:
        argv = ["env", "-i", *(f"{k}={v}" for k, v in CLEAN_ENV.items()), "--chdir=/",
                "setpriv", "--reuid=revproxy", "--regid=revproxy", "--clear-groups",
                "--no-new-privs", SYSTEM_PY, str(self.dir / "seccomp.py"),
                str(self.dir / "seccomp.json"), BIN, "run", "-c", self.config_path(name)]
        # env, setpriv and the launcher exec: the Popen pid is the revproxy master's.
        proc = Proc(name, argv, self.dir)
        self.procs[name] = proc
        return proc

    def remember_descendants(self) -> None:
        psutil = pytest.importorskip("psutil")
        for proc in self.procs.values():
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            self.descendants.update(child.pid for child in children)

    def stop(self, name: str) -> int | None:
        proc = self.procs.pop(name)
        self.remember_descendants()
        if proc.alive() and hasattr(revproxy.cli, "cmd_stop"):
            sh(BIN, "stop", "--pidfile", self.pidfile(name))
            try:
                proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                pass
        return proc.stop()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for pid in self.descendants:  # workers a crashed master left behind: ours only
            if runs_as_revproxy(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.procs.values())


_started: list[Servers] = []


def stop_all_servers() -> None:
    """Before remove/purge: nothing may still run as the revproxy user."""
    while _started:
        _started.pop().close()


@pytest.fixture(scope="module")
def servers(installed, backend):
    servers = Servers(backend)
    _started.append(servers)
    # Started in this order so the first tunnel comes up at once (either order works).
    servers.start("portal")
    servers.start("bridge")
    yield servers
    stop_all_servers()


def worker_pids(master: int) -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {child.pid for child in psutil.Process(master).children()}


def status_json(servers: Servers, name: str) -> dict:
    done = sh(BIN, "status", "--pidfile", servers.pidfile(name), "--json")
    return json.loads(done.stdout)


# --- what the package installs --------------------------------------------------------------


def test_package_contents(installed) -> None:
    assert Path(BIN).read_text().startswith("#!/usr/bin/python3\n")
    where = sh(SYSTEM_PY, "-c", "import revproxy, gevent, cryptography, psutil, yaml, "
               "setproctitle; print(revproxy.__file__, gevent.__file__, cryptography.__file__, "
               "psutil.__file__, yaml.__file__, setproctitle.__file__)").stdout.split()
    assert where[0] == "/usr/lib/python3/dist-packages/revproxy/__init__.py"
    assert all(path.startswith("/usr/lib/python3/dist-packages/") for path in where), where

    conffiles = sh("dpkg-query", "-W", "-f=${Conffiles}", "revproxy").stdout
    assert f" {CONFIG} " in conffiles and " /etc/logrotate.d/revproxy " in conffiles
    depends = sh("dpkg-query", "-W", "-f=${Depends}", "revproxy").stdout
    for dep in ("python3-gevent", "python3-yaml", "python3-setproctitle", "python3-psutil",
                "python3-cryptography"):
        assert dep in depends
    for unit in UNITS:
        assert any(Path(d, unit).is_file() for d in ("/lib/systemd/system",
                                                     "/usr/lib/systemd/system")), unit
    assert Path("/usr/share/man/man1/revproxy.1.gz").is_file()

    user = pwd.getpwnam("revproxy")
    assert user.pw_uid < 1000 and user.pw_dir == "/nonexistent"
    assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    logs = Path("/var/log/revproxy").stat()
    assert logs.st_uid == user.pw_uid and not logs.st_mode & 0o002
    config = Path(CONFIG).stat()
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, user.pw_gid, 0o640)


def test_shipped_config_passes_check(installed) -> None:
    done = sh(BIN, "check", "-c", CONFIG)
    assert done.stdout.strip() == "configuration OK"
    version = sh(BIN, "--version").stdout.strip()
    assert version == f"revproxy {installed.name.split('_')[1]}"
    # ...also as the service's user, who reads it through the group.
    sh("setpriv", "--reuid=revproxy", "--regid=revproxy", "--init-groups",
       BIN, "check", "-c", CONFIG)


def test_units_and_logrotate_are_accepted(installed, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze"):
        unit_dir = next(d for d in ("/lib/systemd/system", "/usr/lib/systemd/system")
                        if Path(d, UNITS[0]).is_file())
        shutil.copy(Path(unit_dir, "revproxy.service"), tmp_path / "revproxy.service")
        shutil.copy(Path(unit_dir, "revproxy@.service"), tmp_path / "revproxy@deb.service")
        done = sh("systemd-analyze", "verify", "--man=no", str(tmp_path / "revproxy.service"),
                  str(tmp_path / "revproxy@deb.service"), check=False)
        said = done.stdout + done.stderr
        assert done.returncode == 0 and "revproxy" not in said, said
    if shutil.which("logrotate"):
        done = sh("logrotate", "-d", "-s", str(tmp_path / "state"),
                  "/etc/logrotate.d/revproxy", check=False)
        assert done.returncode == 0 and "error:" not in done.stderr, done.stderr


# --- the installed program at work --------------------------------------------------------------


def test_installed_program_serves_through_the_tunnel(servers: Servers) -> None:
    wait_served(servers.public_port, timeout=60, procs=tuple(servers.procs.values()))
    confinement = json.loads((servers.dir / "seccomp.json").read_text())
    assert confinement["mdwe"] and confinement["families"] == [1, 2, 10], confinement
    if shutil.which("systemd-analyze"):
        assert "execve" in confinement["allow"] and "setuid" not in confinement["allow"]
    for proc in servers.procs.values():  # as the revproxy user, confined as in the unit
        assert Path(f"/proc/{proc.pid}").stat().st_uid == pwd.getpwnam("revproxy").pw_uid
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "\nNoNewPrivs:\t1\n" in status and "\nSeccomp:\t2\n" in status, status
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"revproxy" in argv


@needs_multiprocess
def test_status_reports_the_running_server(servers: Servers) -> None:
    wait_served(servers.public_port, timeout=60, procs=tuple(servers.procs.values()))
    for name in ("portal", "bridge"):
        master = servers.procs[name].pid
        text = sh(BIN, "status", "--pidfile", servers.pidfile(name)).stdout
        assert str(master) in text
        report = status_json(servers, name)
        assert report.get("master", {}).get("pid") == master, report
        assert worker_pids(master), f"{name} has no workers"
        by_config = sh(BIN, "status", "-c", servers.config_path(name), "--json").stdout
        assert json.loads(by_config).get("master", {}).get("pid") == master


@needs_multiprocess
def test_hup_reloads_and_keeps_serving(servers: Servers) -> None:
    wait_served(servers.public_port, timeout=60, procs=tuple(servers.procs.values()))
    for name in ("portal", "bridge"):
        proc = servers.procs[name]
        before = worker_pids(proc.pid)
        generation = status_json(servers, name).get("generation")
        os.kill(proc.pid, signal.SIGHUP)  # what ExecReload= does with $MAINPID
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.alive(), f"{name} exited on HUP:\n{proc.output()[-3000:]}"
            now = worker_pids(proc.pid)
            if now and not now & before:  # a new generation, the old one retired
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{name}: workers {sorted(before)} not replaced after HUP\n"
                        f"{servers.output()}")
        if generation is not None:
            assert status_json(servers, name).get("generation") == generation + 1
        wait_served(servers.public_port, timeout=60, procs=tuple(servers.procs.values()))


def test_servers_stop_gracefully(servers: Servers) -> None:
    for name in ("bridge", "portal"):
        proc = servers.procs[name]
        code = servers.stop(name)
        assert code == 0, f"{name} exited {code} on a graceful stop:\n{proc.output()[-3000:]}"
        if hasattr(revproxy.cli, "cmd_stop"):
            assert not Path(servers.pidfile(name)).exists(), "pid file left after a stop"
    time.sleep(0.5)
    left = [pid for pid in servers.descendants if runs_as_revproxy(pid)]
    assert not left, f"workers outlived their master: {left}"


# --- remove, purge ---------------------------------------------------------------------------


def test_remove_keeps_configuration_logs_and_user(installed) -> None:
    stop_all_servers()
    with open(CONFIG, "a") as f:
        f.write("# edited by the administrator\n")
    sh("apt-get", "remove", "-y", "revproxy", env=APT_ENV)
    assert dpkg_status() == "deinstall ok config-files"
    assert not Path(BIN).exists()
    assert not Path("/usr/lib/python3/dist-packages/revproxy").exists()
    assert Path(CONFIG).read_text().endswith("# edited by the administrator\n")
    assert Path("/var/log/revproxy").is_dir()
    assert user_exists()


def test_purge_leaves_the_system_clean(installed) -> None:
    stop_all_servers()
    uid = pwd.getpwnam("revproxy").pw_uid if user_exists() else None
    sh("apt-get", "purge", "-y", "revproxy", env=APT_ENV)
    assert dpkg_status() in ("", "unknown ok not-installed")
    left = [path for path in PACKAGE_PATHS if Path(path).exists()]
    for pattern_dir in ("/lib/systemd/system", "/usr/lib/systemd/system",
                        "/var/lib/systemd/deb-systemd-helper-enabled"):
        if Path(pattern_dir).is_dir():
            left += [str(p) for p in Path(pattern_dir).rglob("revproxy*")]
    assert not left, f"left behind by purge: {left}"
    assert not user_exists()
    assert sh("getent", "group", "revproxy", check=False).returncode != 0
    if uid is not None:  # nothing still runs under the deleted user's uid
        running = [p.name for p in Path("/proc").iterdir()
                   if p.name.isdigit() and p.exists() and p.stat().st_uid == uid]
        assert not running, f"processes of the revproxy user left: {running}"
