"""The master process: binds the inbound sockets, forks gevent workers, obeys signals.

It never imports gevent: workers import it after the fork. Signal handlers only enqueue (and
wake the loop through the wakeup fd); the loop does the work:

=========  =================================================================================
HUP        reload: re-read the config; if broken, log and keep serving; else start a new
           generation on the same listening sockets (new ones bound, unused ones closed) and
           retire the old one gracefully once the new one is running
TERM       graceful stop: workers stop accepting, finish their sessions (up to
           ``gracefulTimeout``), the master exits 0
INT, QUIT  fast stop
USR1       reopen log files, here and in every worker
TTIN/TTOU  one worker more / less
CHLD       reap; respawn with backoff; a worker that cannot boot halts the master
=========  =================================================================================

A worker's heartbeat lives in the state table; a worker whose heartbeat stops is killed and
replaced.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from setproctitle import setproctitle

from revproxy import log as logging_setup
from revproxy.config import Config, ConfigError, load_config
from revproxy.log import log
from revproxy.net.listen import bind_listener
from revproxy.server.spec import BOOT_ERROR, WorkerSpec
from revproxy.server.statetable import (
    MAX_WORKERS,
    WORKER_BOOTING,
    WORKER_RUNNING,
    StateTable,
    default_state_path,
)
from revproxy.server.users import resolve_user

HEARTBEAT_TIMEOUT = 10.0
BOOT_TIMEOUT = 30.0
FAST_STOP_TIMEOUT = 5.0
MAX_RESPAWN_DELAY = 30.0
_HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


@dataclass
class Child:
    pid: int
    slot: int
    index: int
    generation: int
    started: float
    retiring: bool = False
    killed: bool = False


@dataclass
class Generation:
    number: int
    config: Config
    listeners: dict[int, socket.socket]
    retire_sent: bool = False
    started: float = field(default_factory=time.monotonic)


def _listen_key(config: Config, index: int) -> tuple[str, int]:
    inbound = config.inbounds[index]
    return inbound.listen, inbound.port


class Supervisor:
    def __init__(self, config: Config, workers: int | None = None) -> None:
        self.config = config
        self.workers_override = workers
        self.target = workers or config.server.workers or os.cpu_count() or 1
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.workers: dict[int, Child] = {}
        self.generations: dict[int, Generation] = {}
        self.generation = 0
        self.table: StateTable | None = None
        self.pid_file: str | None = None
        self.signals: list[int] = []
        self.stopping: str | None = None  # "graceful" or "fast"
        self.stop_deadline = 0.0
        self.respawn_delay = 0.0
        self.next_spawn = 0.0
        self.exit_code = 0
        self._wakeup_r = self._wakeup_w = -1

    # -- start and main loop
    def run(self) -> int:
        config = self.config
        logging_setup.setup(config.log.level, config.log.error, config.log.access)
        try:
            listeners = self._listeners_for(config)
        except OSError as exc:
            log.error("master: cannot listen: %s", exc)
            return 1
        state_path = config.server.state_file
        if not state_path:
            state_path = default_state_path(os.getpid())
            _remove_stale_state_files(os.path.dirname(state_path))
        try:
            self.table = StateTable.create(state_path, os.getpid())
        except OSError as exc:
            log.error("master: cannot create the state table %s: %s", state_path, exc)
            return 1
        self._own_runtime_files(config)
        self._write_pid_file(config.server.pid_file)
        self._install_signals()
        setproctitle(f"revproxy: master [{config.source}]")
        self.generation = 1
        self.table.set_generation(1)
        self.generations[1] = Generation(1, config, listeners)
        log.warning("master %d: starting %d workers (%s)", os.getpid(), self.target,
                    config.source)
        try:
            while not (self.stopping and not self.workers):
                self._tick()
        finally:
            self._cleanup()
        log.warning("master %d: stopped", os.getpid())
        return self.exit_code

    def _tick(self) -> None:
        self._wait_for_signal(1.0)
        while self.signals:
            self._handle_signal(self.signals.pop(0))
        self._reap()
        now = time.monotonic()
        if self.stopping:
            if now > self.stop_deadline:
                self._kill_all(signal.SIGKILL)
            return
        self._check_heartbeats(now)
        self._retire_replaced_generations()
        self._keep_worker_count(now)

    # -- signals
    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in _HANDLED:
            signal.signal(signum, self._enqueue)

    def _enqueue(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _wait_for_signal(self, timeout: float) -> None:
        if self.signals:
            return
        try:
            ready, _, _ = select.select([self._wakeup_r], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self._wakeup_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # reaping happens on every tick
        log.info("master: got %s", signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGTERM:
            self.stop(graceful=True)
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            self.stop(graceful=False)
        elif signum == signal.SIGUSR1:
            config = self.generations[self.generation].config
            logging_setup.setup(config.log.level, config.log.error, config.log.access)
            self._signal_workers(signal.SIGUSR1)
        elif signum == signal.SIGTTIN:
            self.target += 1
            log.warning("master: workers %d -> %d", self.target - 1, self.target)
        elif signum == signal.SIGTTOU and self.target > 1:
            self.target -= 1
            log.warning("master: workers %d -> %d", self.target + 1, self.target)
            current = [w for w in self.workers.values()
                       if w.generation == self.generation and not w.retiring]
            if len(current) > self.target:
                self._retire(max(current, key=lambda w: w.index))

    # -- workers
    def _free_slot(self) -> int:
        used = {w.slot for w in self.workers.values()}
        for slot in range(MAX_WORKERS):
            if slot not in used:
                return slot
        raise RuntimeError("no free worker slot in the state table")

    def _free_index(self, generation: int) -> int:
        used = {w.index for w in self.workers.values() if w.generation == generation}
        index = 1
        while index in used:
            index += 1
        return index

    def spawn(self, generation: Generation) -> None:
        assert self.table is not None
        slot = self._free_slot()
        index = self._free_index(generation.number)
        self.table.clear_worker(slot)
        sys.stdout.flush()  # or the child would write the master's pending output again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = BOOT_ERROR
            try:
                self._become_worker()
                from revproxy.server.worker import run_worker

                code = run_worker(WorkerSpec(
                    config=generation.config, listeners=generation.listeners,
                    table=self.table, slot=slot, index=index, count=self.target,
                    generation=generation.number))
            except BaseException as exc:  # noqa: BLE001 - whatever happens, never return
                try:
                    log.error("worker %d: crashed: %s", os.getpid(), exc)
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        self.workers[pid] = Child(pid, slot, index, generation.number, time.monotonic())
        log.info("master: spawned worker %d/%d gen %d pid %d", index, self.target,
                 generation.number, pid)

    def _become_worker(self) -> None:
        """Undo the master's process state in a fresh child."""
        signal.set_wakeup_fd(-1)
        for signum in _HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def _keep_worker_count(self, now: float) -> None:
        generation = self.generations[self.generation]
        current = [w for w in self.workers.values()
                   if w.generation == self.generation and not w.retiring]
        missing = self.target - len(current)
        if missing > 0 and now >= self.next_spawn:
            # After a crash, one at a time with the back-off; otherwise all at once.
            for _ in range(1 if self.respawn_delay else missing):
                self.spawn(generation)
            self.next_spawn = now + self.respawn_delay

    def _retire(self, worker: Child) -> None:
        """Graceful stop of one worker whose siblings carry on (SIGUSR2, see workerprocess)."""
        worker.retiring = True
        self._kill(worker.pid, signal.SIGUSR2)

    def _retire_replaced_generations(self) -> None:
        """Once the newest generation runs, send the older ones home."""
        old = [g for n, g in self.generations.items() if n < self.generation and not g.retire_sent]
        if not old:
            return
        newest = [w for w in self.workers.values() if w.generation == self.generation]
        running = [w for w in newest if self._row_state(w) == WORKER_RUNNING]
        waited = time.monotonic() - self.generations[self.generation].started
        if len(running) < min(self.target, len(newest)) and waited < BOOT_TIMEOUT:
            return
        for generation in old:
            generation.retire_sent = True
            for worker in list(self.workers.values()):
                if worker.generation == generation.number and not worker.retiring:
                    self._retire(worker)
            log.warning("master: generation %d retiring", generation.number)

    def _forget_finished_generations(self) -> None:
        alive = {w.generation for w in self.workers.values()}
        for number in [n for n in self.generations if n < self.generation and n not in alive]:
            del self.generations[number]
        self._close_unused_sockets(keep=())

    def _row_state(self, worker: Child) -> int:
        assert self.table is not None
        row = self.table.read_worker(worker.slot)
        return row.state if row.pid == worker.pid else -1

    def _check_heartbeats(self, now: float) -> None:
        assert self.table is not None
        wall = time.time()
        for worker in list(self.workers.values()):
            if worker.killed:
                continue
            row = self.table.read_worker(worker.slot)
            if row.pid == worker.pid and row.state != WORKER_BOOTING:
                if wall - row.heartbeat > HEARTBEAT_TIMEOUT:
                    log.error("master: worker %d missed its heartbeat for %.0f s, killing it",
                              worker.pid, wall - row.heartbeat)
                    worker.killed = True
                    self._kill(worker.pid, signal.SIGKILL)
            elif now - worker.started > BOOT_TIMEOUT:
                log.error("master: worker %d did not boot within %.0f s, killing it",
                          worker.pid, BOOT_TIMEOUT)
                worker.killed = True
                self._kill(worker.pid, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            assert self.table is not None
            self.table.clear_worker(worker.slot)
            self._forget_finished_generations()
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - worker.started
            if self.stopping or worker.retiring:
                log.info("master: worker %d exited (%d)", pid, code)
                continue
            if code == BOOT_ERROR:
                self._boot_failed(worker)
                continue
            log.error("master: worker %d (gen %d) died unexpectedly (%s) after %.1f s",
                      pid, worker.generation, _describe_exit(code), lived)
            self.respawn_delay = (min(MAX_RESPAWN_DELAY, max(0.1, self.respawn_delay * 2))
                                  if lived < 5 else 0.0)
            self.next_spawn = time.monotonic() + self.respawn_delay

    def _boot_failed(self, worker: Child) -> None:
        if worker.generation < self.generation:
            return  # a retired generation's late failure changes nothing
        previous = self.generations.get(self.generation - 1)
        if previous is not None and not previous.retire_sent:
            log.error("master: the new configuration's workers cannot boot; keeping "
                      "generation %d", previous.number)
            self._abandon_generation(self.generation)
            return
        log.error("master: worker %d could not boot; halting (see the error above)", worker.pid)
        self.exit_code = 1
        self.stop(graceful=False)

    def _abandon_generation(self, number: int) -> None:
        for worker in list(self.workers.values()):
            if worker.generation == number:
                worker.retiring = True
                self._kill(worker.pid, signal.SIGQUIT)
        generation = self.generations.pop(number)
        self.generation = number - 1
        self.config = self.generations[self.generation].config
        assert self.table is not None
        self.table.set_generation(self.generation)
        self._close_unused_sockets(keep=generation.listeners.values())

    # -- reload and stop
    def reload(self) -> None:
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return
        try:
            listeners = self._listeners_for(config)
        except OSError as exc:
            log.error("reload refused: cannot listen: %s", exc)
            return
        self.config = config
        self.generation += 1
        assert self.table is not None
        self.table.set_generation(self.generation)
        if self.workers_override is None and config.server.workers:
            self.target = config.server.workers
        self.generations[self.generation] = Generation(self.generation, config, listeners)
        logging_setup.setup(config.log.level, config.log.error, config.log.access)
        log.warning("master: reloading: generation %d with %d workers", self.generation,
                    self.target)
        self.next_spawn = 0.0
        for _ in range(self.target):
            self.spawn(self.generations[self.generation])

    def stop(self, graceful: bool) -> None:
        if self.stopping == "fast" or (self.stopping and graceful):
            return
        self.stopping = "graceful" if graceful else "fast"
        grace = self.config.server.graceful_timeout + 5 if graceful else FAST_STOP_TIMEOUT
        self.stop_deadline = time.monotonic() + grace
        log.warning("master: %s stop", self.stopping)
        for sock in self.sockets.values():
            sock.close()  # workers hold their own copies until they finish
        self.sockets.clear()
        self._signal_workers(signal.SIGTERM if graceful else signal.SIGQUIT)

    # -- helpers
    def _listeners_for(self, config: Config) -> dict[int, socket.socket]:
        """Listening sockets for ``config``: reused where the address is unchanged."""
        fresh: list[socket.socket] = []
        listeners: dict[int, socket.socket] = {}
        try:
            for index in range(len(config.inbounds)):
                key = _listen_key(config, index)
                sock = self.sockets.get(key)
                if sock is None:
                    sock = bind_listener(*key)
                    fresh.append(sock)
                    self.sockets[key] = sock
                listeners[index] = sock
        except OSError:
            for sock in fresh:
                self.sockets = {k: s for k, s in self.sockets.items() if s is not sock}
                sock.close()
            raise
        self._close_unused_sockets(keep=listeners.values())
        return listeners

    def _close_unused_sockets(self, keep) -> None:
        wanted = {id(s) for s in keep}
        for generation in self.generations.values():
            wanted.update(id(s) for s in generation.listeners.values())
        for key, sock in list(self.sockets.items()):
            if id(sock) not in wanted:
                sock.close()
                del self.sockets[key]

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            self._kill(pid, signum)

    def _kill_all(self, signum: int) -> None:
        for worker in self.workers.values():
            if not worker.killed:
                worker.killed = True
                log.error("master: worker %d did not stop in time, killing it", worker.pid)
                self._kill(worker.pid, signum)

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _own_runtime_files(self, config: Config) -> None:
        """Workers that drop privileges must still write the state table."""
        user = config.server.user
        if user is None or os.geteuid() != 0 or self.table is None:
            return
        try:
            uid, gid = resolve_user(user, config.server.group)
        except ValueError:
            return  # the workers will say so, and fail to boot
        os.chown(self.table.path, uid, gid)

    def _write_pid_file(self, path: str | None) -> None:
        if not path:
            return
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
        self.pid_file = path

    def _cleanup(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        if self.pid_file:
            try:
                with open(self.pid_file) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(self.pid_file)
            except OSError:
                pass
        if self.table is not None:
            path = self.table.path
            self.table.close()
            if not self.config.server.state_file:
                try:
                    os.unlink(path)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        log.warning("master: cannot remove %s: %s", path, exc)


def _remove_stale_state_files(directory: str) -> None:
    """Default state tables are named after their master; those of dead masters (killed
    before they could clean up) are removed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r"revproxy-(\d+)\.state", name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        except PermissionError:
            pass  # alive, someone else's


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
