"""The master without real workers: a fake process table (fork makes a pid, kill and waitpid
act on it) and a fake clock drive the Supervisor step by step over a real state table, where
the tests write the rows that workers would. A few tests fork for real: the child's side of
spawn, a worker dying with its master, and the pid file."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import revproxy.server.supervisor as supervisor_module
from revproxy import log as logging_setup
from revproxy.cli import main as cli_main
from revproxy.config import load_config
from revproxy.config.sections import MAX_WORKERS
from revproxy.log import log
from revproxy.server.runfiles import write_pid_file
from revproxy.server.spec import BOOT_ERROR, MASTER_GONE, WorkerSpec, die_with_master
from revproxy.server.statetable import (
    TUNNEL_ACTIVE,
    WORKER_BOOTING,
    WORKER_FREE,
    WORKER_RUNNING,
    WORKER_SLOTS,
    StateTable,
    TunnelRow,
    WorkerRow,
)
from revproxy.server.supervisor import (
    BOOT_TIMEOUT,
    HEARTBEAT_TIMEOUT,
    MAX_RESPAWN_DELAY,
    Child,
    Supervisor,
)

WALL = 1_700_000_000.0  # the wall clock is the fake monotonic one plus this


class FakeOS:
    """Processes and clocks as the master sees them; nothing runs."""

    def __init__(self) -> None:
        self.now = 100.0
        self.last_pid = 1000
        self.forks = 0
        self.alive: set[int] = set()
        self.exits: list[tuple[int, int]] = []  # (pid, wait status) not reaped yet
        self.sent: list[tuple[int, int]] = []  # (pid, signal)

    def fork(self) -> int:
        self.last_pid += 1
        self.forks += 1
        self.alive.add(self.last_pid)
        return self.last_pid

    def kill(self, pid: int, signum: int) -> None:
        if pid not in self.alive:
            raise ProcessLookupError(pid)
        self.sent.append((pid, signum))
        if signum == signal.SIGKILL:
            self.exit(pid, signum=signal.SIGKILL)

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG)
        if self.exits:
            return self.exits.pop(0)
        if not self.alive:
            raise ChildProcessError
        return 0, 0

    def exit(self, pid: int, code: int = 0, signum: int = 0) -> None:
        """The process ends: with status ``code``, or killed by ``signum``."""
        self.alive.remove(pid)
        self.exits.append((pid, signum if signum else code << 8))

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL + self.now

    def got(self, signum: int) -> list[int]:
        return [pid for pid, sent in self.sent if sent == signum]


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The master (re)configures logging from the config at start and on reload: not here,
    where it would drop the test's handler and change the log level of later tests."""
    monkeypatch.setattr(logging_setup, "configure", lambda settings: None)


@pytest.fixture
def logged() -> Iterator[Logged]:
    """The revproxy log's lines (log.setup turns propagation off, so caplog may miss them)."""
    handler = Logged()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def never_called(spec: WorkerSpec) -> int:
    raise AssertionError("a fake fork never runs the worker")


class Master:
    """A Supervisor on a fake process table, a real state table and a config file."""

    def __init__(self, tmp: Path, workers: int) -> None:
        self.fake = FakeOS()
        self.config_path = tmp / "revproxy.json"
        self.write_config(workers)
        self.table = StateTable.create(str(tmp / "revproxy.state"), os.getpid())
        self.sup = Supervisor(load_config(str(self.config_path)), worker_main=never_called,
                              fork=self.fake.fork, kill=self.fake.kill,
                              waitpid=self.fake.waitpid, clock=self.fake.clock,
                              wall_clock=self.fake.wall)
        self.sup.start(self.table, {})

    def write_config(self, workers: int) -> None:
        self.config_path.write_text(json.dumps({"server": {"workers": workers}}))

    def step(self, seconds: float = 0.0, beating: tuple[Child, ...] | list[Child] = ()) -> None:
        """Let ``seconds`` pass, during which the ``beating`` workers published, then run
        one turn of the master's loop."""
        self.fake.now += seconds
        self.run(*beating)
        self.sup.step()

    def signal(self, signum: int) -> None:
        self.sup.signals.append(signum)  # as the handler queues it
        self.sup.step()

    def of(self, generation: int) -> list[Child]:
        """The workers of a generation that were not asked to leave, by index."""
        return sorted((w for w in self.sup.workers.values()
                       if w.generation == generation and not w.leaving),
                      key=lambda w: w.index)

    def run(self, *children: Child) -> None:
        """The children booted: RUNNING rows with a fresh heartbeat, as workers publish."""
        for child in children:
            self.table.worker_writer(child.slot, WorkerRow(
                child.pid, child.generation, child.index, WORKER_RUNNING, WALL,
                self.fake.wall()))


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    made = Master(tmp_path, workers=2)
    yield made
    made.table.close()


# forking and reaping


def test_the_first_step_forks_the_configured_workers(master: Master) -> None:
    assert master.fake.forks == 0  # start() only opens generation 1
    master.step()
    workers = master.of(1)
    assert [(w.index, w.slot) for w in workers] == [(1, 0), (2, 1)]
    assert {w.pid for w in workers} == master.fake.alive
    master.step()
    assert master.fake.forks == 2  # the count is kept, not grown


def test_a_dead_worker_is_reaped_its_rows_freed_and_replaced(master: Master,
                                                            logged: Logged) -> None:
    master.step()
    first, second = master.of(1)
    master.run(first, second)
    master.table.tunnel_writer(first.slot, 3, TunnelRow(first.pid, first.slot, 7))
    master.step(60, beating=(first, second))
    master.fake.exit(first.pid, signum=signal.SIGSEGV)
    master.step()
    assert first.pid not in master.sup.workers
    assert [(s, i) for s, i, _ in master.table.tunnels()] == []
    replacement = master.of(1)[0]
    assert (replacement.index, replacement.slot) == (first.index, first.slot)
    assert replacement.pid not in (first.pid, second.pid)
    assert master.table.read_worker(first.slot).state == WORKER_FREE  # until it boots
    assert master.sup.respawn_delay == 0.0  # it lived long
    assert logged.count(f"worker {first.pid} (gen 1) died unexpectedly (signal SIGSEGV)") == 1


def test_workers_dying_young_are_respawned_later_and_later(master: Master) -> None:
    master.step()
    for delay in (0.1, 0.2, 0.4, 0.8, 1.6):
        victim = master.of(1)[0]
        master.step(1.0)  # young: it lived one second
        master.fake.exit(victim.pid, code=1)
        forks = master.fake.forks
        master.step()
        assert master.sup.respawn_delay == pytest.approx(delay)
        master.step(delay - 0.01)
        assert master.fake.forks == forks, "respawned before its delay"
        master.step(0.02)
        assert master.fake.forks == forks + 1
    master.sup.respawn_delay = 20.0
    victim = master.of(1)[0]
    master.fake.exit(victim.pid, code=1)
    master.step()
    assert master.sup.respawn_delay == MAX_RESPAWN_DELAY


def test_a_long_life_resets_the_respawn_delay(master: Master) -> None:
    master.step()
    master.sup.respawn_delay = 12.8
    victim, other = master.of(1)
    master.step(60, beating=(victim, other))
    master.fake.exit(victim.pid, code=1)
    master.step()
    assert master.sup.respawn_delay == 0.0
    assert len(master.of(1)) == 2  # replaced in the same step


def test_a_worker_that_cannot_boot_halts_the_master(master: Master, logged: Logged) -> None:
    master.step()
    failed, other = master.of(1)
    master.fake.exit(failed.pid, code=BOOT_ERROR)
    master.step()
    assert (master.sup.stopping, master.sup.exit_code) == ("fast", 1)
    assert master.fake.got(signal.SIGQUIT) == [other.pid]
    assert logged.count(f"worker {failed.pid} could not boot; halting") == 1
    master.step(1)
    assert master.fake.forks == 2  # no respawn loop
    assert not master.sup.finished
    master.fake.exit(other.pid)
    master.step()
    assert master.sup.finished


# reload


def test_hup_retires_the_old_generation_once_the_new_one_runs(master: Master) -> None:
    master.step()
    old = master.of(1)
    master.run(*old)
    master.write_config(3)
    master.signal(signal.SIGHUP)
    new = master.of(2)
    assert (len(new), master.sup.generation, master.table.generation) == (3, 2, 2)
    assert {w.slot for w in new}.isdisjoint({w.slot for w in old})
    master.run(*new[:2])
    master.step(1)
    assert master.fake.got(signal.SIGUSR2) == []  # one of three still boots
    master.run(new[2])
    master.step(1)
    assert sorted(master.fake.got(signal.SIGUSR2)) == sorted(w.pid for w in old)
    assert master.sup.generations[1].retiring
    for worker in old:  # they finish and exit 0: not replaced, not a crash
        master.fake.exit(worker.pid)
    master.step()
    assert 1 not in master.sup.generations
    assert master.fake.alive == {w.pid for w in new} and master.fake.forks == 5
    assert master.fake.got(signal.SIGUSR2) == [w.pid for w in old]  # told once


def test_hup_retires_the_old_generation_after_the_boot_timeout(master: Master) -> None:
    master.step()
    old = master.of(1)
    master.run(*old)
    master.signal(signal.SIGHUP)
    first, _second = master.of(2)
    master.step(BOOT_TIMEOUT - 1, beating=[*old, first])
    assert master.fake.got(signal.SIGUSR2) == []
    master.step(2, beating=[*old, first])
    assert sorted(master.fake.got(signal.SIGUSR2)) == sorted(w.pid for w in old)


def test_while_no_new_worker_runs_the_old_generation_serves_on(master: Master) -> None:
    master.step()
    old = master.of(1)
    master.run(*old)
    master.signal(signal.SIGHUP)
    for _ in range(10):
        master.step(BOOT_TIMEOUT / 2, beating=old)
    assert master.fake.got(signal.SIGUSR2) == []
    assert master.fake.got(signal.SIGKILL)  # the new ones are killed and respawned
    assert all(w.pid in master.fake.alive for w in old)


def test_a_reload_whose_workers_cannot_boot_keeps_the_old_generation(
        master: Master, logged: Logged) -> None:
    master.step()
    old = master.of(1)
    master.run(*old)
    master.write_config(3)
    master.signal(signal.SIGHUP)
    new = master.of(2)
    master.run(new[0])
    master.fake.exit(new[1].pid, code=BOOT_ERROR)
    master.step()
    assert master.sup.stopping is None
    assert (master.sup.generation, master.table.generation, master.sup.target) == (1, 1, 2)
    assert sorted(master.fake.got(signal.SIGQUIT)) == sorted([new[0].pid, new[2].pid])
    assert master.fake.got(signal.SIGUSR2) == []
    assert logged.count("cannot boot; keeping generation 1") == 1
    for worker in (new[0], new[2]):
        master.fake.exit(worker.pid)
    master.step(60, beating=old)
    assert master.of(1) == old and master.fake.alive == {w.pid for w in old}
    assert master.fake.forks == 5  # nothing replaced the abandoned workers
    master.signal(signal.SIGHUP)  # the next reload has a number of its own
    assert master.sup.generation == 3 and len(master.of(3)) == 3


def test_a_broken_config_on_hup_changes_nothing(master: Master, logged: Logged) -> None:
    master.step()
    master.config_path.write_text('{"server": {"workers": "many"}}')
    master.signal(signal.SIGHUP)
    assert (master.sup.generation, master.fake.forks) == (1, 2)
    assert logged.count("reload refused") == 1


# TTIN / TTOU


def test_ttin_adds_a_worker_and_ttou_retires_the_highest_index(master: Master) -> None:
    master.step()
    master.signal(signal.SIGTTIN)
    assert [w.index for w in master.of(1)] == [1, 2, 3]
    third = master.of(1)[2]
    master.signal(signal.SIGTTOU)
    assert master.fake.got(signal.SIGUSR2) == [third.pid]
    master.fake.exit(third.pid)
    master.step(1)
    assert [w.index for w in master.of(1)] == [1, 2] and master.fake.forks == 3
    first, second = master.of(1)
    master.signal(signal.SIGTTOU)
    master.signal(signal.SIGTTOU)  # already at one: stays
    assert master.sup.target == 1 and master.of(1) == [first]
    assert master.fake.got(signal.SIGUSR2) == [third.pid, second.pid]


def test_ttin_stops_at_the_most_workers_a_reload_has_room_for(tmp_path: Path,
                                                             logged: Logged) -> None:
    made = Master(tmp_path, MAX_WORKERS - 1)
    try:
        made.step()
        made.signal(signal.SIGTTIN)
        made.signal(signal.SIGTTIN)
        assert made.sup.target == MAX_WORKERS and len(made.of(1)) == MAX_WORKERS
        assert logged.count(f"staying at {MAX_WORKERS} workers") == 1
    finally:
        made.table.close()


# slots


def test_a_full_table_is_logged_once_and_spawning_resumes_when_slots_free(
        tmp_path: Path, logged: Logged) -> None:
    made = Master(tmp_path, MAX_WORKERS)
    try:
        made.step()
        first = made.of(1)
        made.run(*first)
        made.signal(signal.SIGHUP)
        second = made.of(2)
        assert len(second) == MAX_WORKERS and len(made.sup.workers) == WORKER_SLOTS
        made.run(*second)
        made.step()
        assert len(made.fake.got(signal.SIGUSR2)) == MAX_WORKERS  # generation 1 retires...
        made.signal(signal.SIGHUP)  # ...but has not left when a third generation comes
        made.step(1)
        assert made.sup.generation == 3 and made.of(3) == []
        assert logged.count("all 256 worker slots of the state table are in use") == 1
        for worker in first[:10]:
            made.fake.exit(worker.pid)
        made.step(1)
        assert len(made.of(3)) == 10
        assert {w.slot for w in made.of(3)} == {w.slot for w in first[:10]}
    finally:
        made.table.close()


# heartbeats


def test_a_worker_whose_heartbeat_stops_is_killed_and_replaced(master: Master,
                                                               logged: Logged) -> None:
    master.step()
    stuck, alive = master.of(1)
    master.run(stuck, alive)
    master.step(HEARTBEAT_TIMEOUT - 1, beating=[alive])
    assert master.fake.got(signal.SIGKILL) == []
    master.step(2, beating=[alive])
    assert master.fake.got(signal.SIGKILL) == [stuck.pid]
    assert logged.count(f"worker {stuck.pid} missed its heartbeat") == 1
    master.step()
    assert stuck.pid not in master.sup.workers and len(master.of(1)) == 2


def test_a_worker_that_never_boots_is_killed(master: Master) -> None:
    master.step()
    slow, booted = master.of(1)
    master.table.worker_writer(slow.slot, WorkerRow(slow.pid, 1, 1, WORKER_BOOTING))
    master.step(BOOT_TIMEOUT - 1, beating=[booted])
    assert master.fake.got(signal.SIGKILL) == []
    master.step(2, beating=[booted])
    assert master.fake.got(signal.SIGKILL) == [slow.pid]


# the worker count


def test_worker_counts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert WORKER_SLOTS >= 2 * MAX_WORKERS
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"server": {"workers": MAX_WORKERS}}))
    assert cli_main(["check", "-c", str(path)]) == 0
    path.write_text(json.dumps({"server": {"workers": MAX_WORKERS + 1}}))
    with pytest.raises(SystemExit) as refused:
        cli_main(["check", "-c", str(path)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "server.workers: must be between 1 and 128, got 129" in err
    assert cli_main(["run", "-c", str(path), "--workers", str(MAX_WORKERS + 1)]) == 2
    assert capsys.readouterr().err == "revproxy: --workers must be between 1 and 128, got 129\n"
    path.write_text("{}")
    config = load_config(str(path))
    with pytest.raises(ValueError):
        Supervisor(config, MAX_WORKERS + 1, worker_main=never_called)
    monkeypatch.setattr(os, "cpu_count", lambda: 300)
    assert Supervisor(config, worker_main=never_called).target == MAX_WORKERS
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert Supervisor(config, worker_main=never_called).target == 3


# the child's side, forked for real


def wait_exit(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} did not exit within {timeout} s")


def real_master(tmp_path: Path, worker_main) -> Supervisor:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"server": {"workers": 1}}))
    sup = Supervisor(load_config(str(path)), worker_main=worker_main)
    sup.start(StateTable.create(str(tmp_path / "one.state"), os.getpid()), {})
    return sup


def test_the_child_runs_worker_main_and_exits_with_its_status(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()

    def worker_main(spec: WorkerSpec) -> int:
        os.write(write_end, json.dumps([spec.slot, spec.index, spec.count, spec.generation,
                                        spec.master_pid, os.getppid()]).encode())
        return 7

    sup = real_master(tmp_path, worker_main)
    try:
        sup.spawn(sup.generations[1])
        (pid,) = sup.workers
        assert wait_exit(pid) == 7
        assert json.loads(os.read(read_end, 1000)) == [0, 1, 1, 1, os.getpid(), os.getpid()]
    finally:
        assert sup.table is not None
        sup.table.close()
        os.close(read_end)
        os.close(write_end)


def test_a_child_whose_worker_main_raises_exits_with_boot_error(tmp_path: Path) -> None:
    def worker_main(spec: WorkerSpec) -> int:
        raise RuntimeError("no")

    sup = real_master(tmp_path, worker_main)
    try:
        sup.spawn(sup.generations[1])
        (pid,) = sup.workers
        assert wait_exit(pid) == BOOT_ERROR
    finally:
        assert sup.table is not None
        sup.table.close()


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it is no longer running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_worker_dies_with_its_master(tmp_path: Path) -> None:
    """A master killed with SIGKILL cleans nothing up: the kernel must end its workers."""
    read_end, write_end = os.pipe()
    master_pid = os.fork()
    if master_pid == 0:  # the master, with one worker that would sleep for a minute
        code = 1
        try:
            def worker_main(spec: WorkerSpec) -> int:
                os.write(write_end, f"{os.getpid()}\n".encode())
                time.sleep(60)
                return 0

            sup = real_master(tmp_path, worker_main)
            sup.spawn(sup.generations[1])
            time.sleep(60)
        finally:
            os._exit(code)
    worker = 0
    try:
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ready, "the worker did not start"
        worker = int(os.read(read_end, 100))
        time.sleep(0.1)
        assert not gone(worker)
        os.kill(master_pid, signal.SIGKILL)
        assert os.waitstatus_to_exitcode(os.waitpid(master_pid, 0)[1]) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while not gone(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone(worker), "the worker outlived its master"
    finally:
        if worker and not gone(worker):
            os.kill(worker, signal.SIGKILL)
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("parent_is_master", [True, False])
def test_a_worker_forked_after_its_master_died_exits_at_once(parent_is_master: bool) -> None:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            die_with_master(os.getppid() if parent_is_master else os.getppid() + 100_000)
        except BaseException:  # noqa: BLE001
            code = 99
        os._exit(code)
    assert wait_exit(pid) == (0 if parent_is_master else MASTER_GONE)


# the pid file


def test_the_pid_file_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "run" / "revproxy.pid"
    previous = os.umask(0o077)
    try:
        write_pid_file(str(path), 4321)
    finally:
        os.umask(previous)
    assert path.read_text() == "4321\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # `revproxy reload` reads it
    assert [p.name for p in path.parent.iterdir()] == ["revproxy.pid"]  # no temp file left


def test_the_pid_file_replaces_a_planted_link_without_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "revproxy.pid"
    path.symlink_to(victim)
    old_temp = tmp_path / f"revproxy.pid.{os.getpid()}.tmp"  # the name it used to have
    old_temp.symlink_to(victim)
    write_pid_file(str(path), 4321)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == "4321\n"


def test_the_pid_files_temporary_name_is_unpredictable_and_never_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    path = tmp_path / "revproxy.pid"
    write_pid_file(str(path), 1)
    write_pid_file(str(path), 2)
    (first, first_flags), (second, second_flags) = opened
    assert first != second
    for temp, flags in opened:
        assert os.path.dirname(temp) == str(tmp_path)
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT
    # a file already at the chosen name is refused, not written through
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    monkeypatch.setattr(os, "urandom", lambda n: b"\x01" * n)
    planted = tmp_path / f".revproxy.pid.{'01' * 8}.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_pid_file(str(path), 3)
    assert victim.read_text() == "precious\n" and path.read_text() == "2\n"


def test_the_default_state_directory_is_made_private(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A master without server.stateFile keeps its table in revproxy's own directory,
    which an older revproxy made 0755."""
    own = tmp_path / "revproxy"
    own.mkdir()
    own.chmod(0o755)
    monkeypatch.setattr(supervisor_module, "default_state_path",
                        lambda pid: str(own / f"revproxy-{pid}.state"))
    config_path = tmp_path / "c.json"
    config_path.write_text("{}")
    seen: list[tuple[int, int]] = []

    def look(spec: WorkerSpec) -> int:
        raise AssertionError("not reached")

    sup = Supervisor(load_config(str(config_path)), 1, worker_main=look)
    monkeypatch.setattr(sup, "_install_signals", lambda: None)
    monkeypatch.setattr(supervisor_module, "setproctitle", lambda title: None)

    def start(table: StateTable, listeners: dict) -> None:
        seen.append((stat.S_IMODE(os.stat(table.path).st_mode),
                     stat.S_IMODE(os.stat(os.path.dirname(table.path)).st_mode)))
        sup.table = table
        sup.stopping = "fast"  # and leave at once

    monkeypatch.setattr(sup, "start", start)
    assert sup.run() == 0
    assert seen == [(0o600, 0o700)]
    assert list(own.iterdir()) == []  # a default table goes with its master


def test_a_table_row_is_cleared_before_a_worker_takes_its_slot(master: Master) -> None:
    master.table.worker_writer(0, WorkerRow(999, 1, 1, WORKER_RUNNING))
    master.table.tunnel_writer(0, 0, TunnelRow(999, 0, 1, state=TUNNEL_ACTIVE))
    master.step()
    assert master.table.read_worker(0).pid == 0 and master.table.tunnels() == []
