"""The master process: binds the inbound sockets, forks gevent workers, obeys signals.

It never imports gevent: the worker's entry point is handed in (``worker_main``, which
imports the worker after the fork). Signal handlers only enqueue (and wake the loop through
the wakeup fd); the loop does the work:

=========  =================================================================================
HUP        reload: re-read the config; if broken, log and keep serving; else start a new
           generation on the same listening sockets (new ones bound, unused ones closed) and
           retire the old one gracefully once the new one is running
TERM       graceful stop: workers stop accepting, finish their sessions (up to
           ``gracefulTimeout``), the master exits 0
INT, QUIT  fast stop
USR1       reopen log files, here and in every worker
TTIN/TTOU  one worker more / less (the one with the highest index retires)
CHLD       reap; respawn with backoff; a worker that cannot boot halts the master
=========  =================================================================================

Words: to *retire* a worker is to stop it gracefully while its siblings carry on (SIGUSR2: it
hands its tunnels over first); a generation is *retiring* once a newer one runs and its
workers were told to retire. A worker is *leaving* when the master asked it to go, so its
exit is no crash and it is not replaced.

Besides the workers the master may run two *helpers*, children that never fork and never
import gevent: the metrics process (``server.metrics``: Prometheus's ``/metrics`` on a socket
the master binds) and the API process (``api``: V2Ray's gRPC stats API on a Unix socket in the
private hand-off directory). They run what needs threads (an HTTP server, gRPC) outside the
master, which must never run a thread while it forks. A helper that dies is restarted with a
back-off; the API process is restarted on a reload, to serve the new configuration.

Under systemd (``Type=notify``) the master says READY=1 once the first generation runs,
RELOADING=1 and READY=1 around a reload, STOPPING=1 as it stops (server/notify.py). Without
``server.pidFile`` it writes a pid file named after its configuration files in the runtime
directory (``runfiles.default_pid_path``), where ``revproxy status|reload|stop -c`` look.

A worker's heartbeat lives in the state table; a worker whose heartbeat stops is killed and
replaced. Workers die with the master: the kernel kills them when it exits (see
``die_with_master``), so a restarted server never finds old workers holding its ports.

What touches processes (fork, kill, waitpid) and both clocks are parameters, so unit tests
drive the master with a fake process table and time of their own.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from setproctitle import setproctitle

from revproxy import log as logging_setup
from revproxy.config import Config, ConfigError, load_config
from revproxy.config.model import (
    DokodemoSettings,
    ShadowsocksInboundSettings,
    SocksInboundSettings,
)
from revproxy.config.sections import MAX_WORKERS
from revproxy.log import log
from revproxy.net.listen import (
    ListenerOptions,
    bind_datagram,
    bind_listener,
    set_listener_options,
    udp_listener_key,
)
from revproxy.server import handoff
from revproxy.server.notify import Notifier
from revproxy.server.runfiles import (
    own_default_pid_path,
    remove_pid_file,
    remove_stale_state_files,
    write_pid_file,
)
from revproxy.server.spec import (
    BOOT_ERROR,
    WorkerSpec,
    counter_keys_of,
    die_with_master,
    load_prctl,
)
from revproxy.server.statetable import (
    WORKER_BOOTING,
    WORKER_RUNNING,
    WORKER_SLOTS,
    StateTable,
    StateTableError,
    default_state_path,
)
from revproxy.server.users import drop_privileges, resolve_user

HEARTBEAT_TIMEOUT = 10.0
BOOT_TIMEOUT = 30.0
FAST_STOP_TIMEOUT = 5.0
SHORT_LIFE = 5.0  # a worker dying younger than this makes the next respawn wait longer
FIRST_RESPAWN_DELAY = 0.1
MAX_RESPAWN_DELAY = 30.0
FIRST_HELPER_DELAY = 1.0
METRICS, API = "metrics", "api"
_HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)

WorkerMain = Callable[[WorkerSpec], int]


@dataclass
class Child:
    """A forked worker as the master tracks it."""

    pid: int
    slot: int  # its rows in the state table
    index: int  # I of "worker I/N", unique within its generation
    generation: int
    started: float  # on the master's monotonic clock
    leaving: bool = False  # asked to go (retired, stopped, abandoned): not replaced
    killed: bool = False  # SIGKILL sent


@dataclass
class Generation:
    """The workers of one configuration: the first, then one more per accepted reload."""

    number: int
    config: Config
    listeners: dict[int, socket.socket]
    started: float
    retiring: bool = False  # a newer generation runs; these workers were told to retire
    counter_keys: dict[tuple[int, str], int] | None = None  # its traffic counters' indexes


@dataclass
class Helper:
    """A child that is not a worker: the metrics or the API process."""

    name: str
    pid: int = 0  # 0: not running
    started: float = 0.0
    delay: float = 0.0  # the back-off before the next start, after a failure
    next_start: float = 0.0
    leaving: bool = False  # asked to go (reload, stop): its exit is no failure


def _listen_key(config: Config, index: int) -> tuple[str, int]:
    inbound = config.inbounds[index]
    return inbound.listen, inbound.port


def _listener_options(config: Config, index: int) -> ListenerOptions | None:
    """What inbound ``index``'s ``sockopt`` sets on its listener: here, before the workers
    drop the privileges SO_MARK and IP_TRANSPARENT need."""
    return ListenerOptions.of(config.inbounds[index].stream.sockopt)


def _serves_tcp(config: Config, index: int) -> bool:
    """Whether inbound ``index`` listens on TCP (all but a dokodemo-door with "udp" alone)."""
    settings = config.inbounds[index].settings
    return not isinstance(settings, DokodemoSettings) or "tcp" in settings.network


def _serves_udp(config: Config, index: int) -> bool:
    """Whether inbound ``index`` also needs a UDP socket (dokodemo-door with "udp", SOCKS
    with ``udp``)."""
    settings = config.inbounds[index].settings
    if isinstance(settings, SocksInboundSettings):
        return settings.udp
    if isinstance(settings, ShadowsocksInboundSettings):
        return settings.udp or "udp" in settings.network
    return isinstance(settings, DokodemoSettings) and "udp" in settings.network


class Supervisor:
    """The master of one server; ``run()`` returns its exit status.

    ``worker_main(spec)`` runs in each forked child and returns the child's exit status
    (``BOOT_ERROR`` when it cannot start). ``fork``, ``kill``, ``waitpid``, ``clock``
    (monotonic) and ``wall_clock`` (the table's heartbeats) default to the real ones."""

    def __init__(self, config: Config, workers: int | None = None, *,
                 worker_main: WorkerMain,
                 fork: Callable[[], int] = os.fork,
                 kill: Callable[[int, int], None] = os.kill,
                 waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.worker_main = worker_main
        self._fork = fork
        self._kill_process = kill
        self._waitpid = waitpid
        self._clock = clock
        self._wall_clock = wall_clock
        if workers is not None and not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, got {workers}")
        self.workers_override = workers
        self.target = workers or config.server.workers or min(_cpus(), MAX_WORKERS)
        # (listen, port) -> TCP listener; ("udp", listen, port) -> UDP socket
        self.sockets: dict[tuple[str | int, ...], socket.socket] = {}
        # What each listener's sockopt set on it (inbounds' listeners only), by key.
        self.listener_options: dict[tuple[str | int, ...], ListenerOptions | None] = {}
        self.workers: dict[int, Child] = {}
        self.generations: dict[int, Generation] = {}
        self.generation = 0  # the current one: the newest not abandoned
        self._generations_made = 0  # numbers are never reused, even after an abandon
        self._target_before_reload = self.target
        self.table: StateTable | None = None
        self.pid_file: str | None = None
        self.handoff_dir = ""  # made before the first fork (handoff.create_directory)
        self.signals: list[int] = []
        self.stopping: str | None = None  # "graceful" or "fast"
        self.stop_deadline = 0.0
        self.respawn_delay = 0.0
        self.next_spawn = 0.0
        self.exit_code = 0
        self._short_of_slots = False
        self._wakeup_r = self._wakeup_w = -1
        self.notifier = Notifier()
        self.helpers: dict[str, Helper] = {}
        self.metrics_socket: socket.socket | None = None
        self.metrics_address: tuple[str, int] | None = None
        self._ready = False  # READY=1 sent for the first generation
        self._reloading = False  # RELOADING=1 sent; READY=1 follows once it is settled

    # -- start and main loop
    def run(self) -> int:
        config = self.config
        logging_setup.configure(config.log)
        try:
            listeners = self._listeners_for(config)
        except OSError as exc:
            log.error("master: cannot listen: %s", exc)
            return 1
        state_path = config.server.state_file
        if not state_path:
            state_path = default_state_path(os.getpid())
            remove_stale_state_files(os.path.dirname(state_path))
        try:
            table = StateTable.create(state_path, os.getpid(),
                                      private_directory=not config.server.state_file)
        except (OSError, StateTableError) as exc:
            log.error("master: cannot create the state table %s: %s", state_path, exc)
            self._cleanup()
            return 1
        self.table = table
        try:
            self.handoff_dir = handoff.create_directory()
            self._own_runtime_files(config)
            self._write_pid_file(config.server.pid_file or own_default_pid_path(config.source))
            self._listen_for_metrics(config)
        except OSError as exc:
            log.error("master: %s", exc)
            self._cleanup()
            return 1
        self._install_signals()
        setproctitle(f"revproxy: master [{config.source}]")
        self.start(table, listeners)
        try:
            while not self.finished:
                self._tick()
        finally:
            self._cleanup()
        log.warning("master %d: stopped", os.getpid())
        return self.exit_code

    def start(self, table: StateTable, listeners: dict[int, socket.socket]) -> None:
        """Adopt the state table and open generation 1; its workers are forked by the next
        step(). run() calls this once set up; tests call it directly."""
        self.table = table
        self.generation = self._generations_made = 1
        table.set_generation(1)
        self.generations[1] = Generation(1, self.config, listeners, self._clock(),
                                         counter_keys=self._register_counters(self.config))
        if not (self.workers_override or self.config.server.workers) and _cpus() > self.target:
            log.warning("master: %d CPUs, but %d workers are the most a reload has room for",
                        _cpus(), self.target)
        log.warning("master %d: starting %d workers (%s)", os.getpid(), self.target,
                    self.config.source)

    @property
    def finished(self) -> bool:
        """Stopping, and every worker and helper reaped."""
        return (self.stopping is not None and not self.workers
                and not any(helper.pid for helper in self.helpers.values()))

    def _tick(self) -> None:
        self._wait_for_signal(1.0)
        self.step()

    def step(self) -> None:
        """One turn of the loop, without waiting: queued signals, reaping, then upkeep."""
        while self.signals:
            self._handle_signal(self.signals.pop(0))
        self._reap()
        now = self._clock()
        if self.stopping:
            if now > self.stop_deadline:
                self._kill_all(signal.SIGKILL)
            return
        self._check_heartbeats(now)
        self._retire_replaced_generations(now)
        self._keep_worker_count(now)
        self._keep_helpers(now)
        self._tell_ready()

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
            return  # reaping happens on every step
        log.info("master: got %s", signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGTERM:
            self.stop(graceful=True)
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            self.stop(graceful=False)
        elif signum == signal.SIGUSR1:
            logging_setup.configure(self.generations[self.generation].config.log)
            self._signal_workers(signal.SIGUSR1)
        elif signum == signal.SIGTTIN:
            self._more_workers()
        elif signum == signal.SIGTTOU:
            self._fewer_workers()

    def _more_workers(self) -> None:
        if self.target >= MAX_WORKERS:
            log.warning("master: staying at %d workers, the most a reload has room for in "
                        "the state table", self.target)
            return
        self.target += 1
        log.warning("master: workers %d -> %d", self.target - 1, self.target)

    def _fewer_workers(self) -> None:
        if self.target <= 1:
            log.warning("master: staying at 1 worker")
            return
        self.target -= 1
        log.warning("master: workers %d -> %d", self.target + 1, self.target)
        current = self._current_workers()
        if len(current) > self.target:
            self._retire(max(current, key=lambda w: w.index))

    # -- workers
    def _current_workers(self) -> list[Child]:
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.leaving]

    def _free_slot(self) -> int | None:
        used = {w.slot for w in self.workers.values()}
        for slot in range(WORKER_SLOTS):
            if slot not in used:
                return slot
        return None

    def _free_index(self, generation: int) -> int:
        used = {w.index for w in self.workers.values() if w.generation == generation}
        index = 1
        while index in used:
            index += 1
        return index

    def spawn(self, generation: Generation) -> bool:
        """Fork one worker of ``generation``; False (logged once) while every slot of the
        table is taken: the workers that hold them are leaving, and the upkeep of the loop
        spawns again once they are reaped."""
        assert self.table is not None
        slot = self._free_slot()
        if slot is None:
            if not self._short_of_slots:
                log.error("master: all %d worker slots of the state table are in use; more "
                          "workers start as others exit", WORKER_SLOTS)
            self._short_of_slots = True
            return False
        self._short_of_slots = False
        index = self._free_index(generation.number)
        self.table.clear_worker(slot)
        spec = WorkerSpec(config=generation.config, listeners=generation.listeners,
                          table=self.table, slot=slot, index=index, count=self.target,
                          generation=generation.number, master_pid=os.getpid(),
                          handoff_dir=self.handoff_dir,
                          counter_keys=dict(generation.counter_keys or {}),
                          api_socket=(_api_socket(self.handoff_dir)
                                      if generation.config.api is not None else ""))
        load_prctl()  # here, so that every child shares what it loads
        sys.stdout.flush()  # or the child would write the master's pending output again
        sys.stderr.flush()
        pid = self._fork()
        if pid == 0:  # the worker
            self._run_child(spec)
        self.workers[pid] = Child(pid, slot, index, generation.number, self._clock())
        log.info("master: spawned worker %d/%d gen %d pid %d", index, self.target,
                 generation.number, pid)
        return True

    def _run_child(self, spec: WorkerSpec) -> NoReturn:
        """The forked child's whole life: it never returns into the master's code."""
        code = BOOT_ERROR
        try:
            die_with_master(spec.master_pid)  # first: the master may die at any moment
            self._become_worker()
            code = self.worker_main(spec)
        except BaseException as exc:  # noqa: BLE001 - whatever happens, never return
            try:
                log.error("worker %d: crashed: %s", os.getpid(), exc)
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)

    def _become_worker(self) -> None:
        """Undo the master's process state in a fresh child."""
        signal.set_wakeup_fd(-1)
        for signum in _HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wakeup_r, self._wakeup_w):
            if fd >= 0:
                os.close(fd)
        if self.metrics_socket is not None:  # the metrics process's, not a worker's
            self.metrics_socket.close()

    def _keep_worker_count(self, now: float) -> None:
        generation = self.generations[self.generation]
        missing = self.target - len(self._current_workers())
        if missing > 0 and now >= self.next_spawn:
            # After a crash, one at a time with the back-off; otherwise all at once.
            for _ in range(1 if self.respawn_delay else missing):
                if not self.spawn(generation):
                    break
            self.next_spawn = now + self.respawn_delay

    def _retire(self, worker: Child) -> None:
        """Graceful stop of one worker whose siblings carry on (SIGUSR2, see worker.py)."""
        worker.leaving = True
        self._kill(worker.pid, signal.SIGUSR2)

    def _retire_replaced_generations(self, now: float) -> None:
        """Once the current generation runs in full, or runs in part after BOOT_TIMEOUT,
        retire the older ones. While none of it runs, the old generation serves on."""
        old = [g for n, g in self.generations.items() if n < self.generation and not g.retiring]
        if not old:
            return
        running = [w for w in self._current_workers() if self._row_state(w) == WORKER_RUNNING]
        waited = now - self.generations[self.generation].started
        if len(running) < self.target and (waited < BOOT_TIMEOUT or not running):
            return
        for generation in old:
            generation.retiring = True
            for worker in list(self.workers.values()):
                if worker.generation == generation.number and not worker.leaving:
                    self._retire(worker)
            log.warning("master: generation %d retiring", generation.number)
        if self._reloading:
            self._reloading = False
            self.notifier.ready(self._status())

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
        wall = self._wall_clock()
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
                pid, status = self._waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                self._helper_exited(pid, status)
                continue
            assert self.table is not None
            self.table.clear_worker(worker.slot)
            self._forget_finished_generations()
            code = os.waitstatus_to_exitcode(status)
            lived = self._clock() - worker.started
            if self.stopping or worker.leaving:
                log.info("master: worker %d exited (%d)", pid, code)
                continue
            if code == BOOT_ERROR:
                self._boot_failed(worker)
                continue
            log.error("master: worker %d (gen %d) died unexpectedly (%s) after %.1f s",
                      pid, worker.generation, _describe_exit(code), lived)
            self.table.count_server_event(respawns=1)
            # Workers dying young wait longer and longer to be replaced (a crash loop must
            # not eat the CPU); one that lived long is replaced at once.
            self.respawn_delay = (min(MAX_RESPAWN_DELAY,
                                      max(FIRST_RESPAWN_DELAY, self.respawn_delay * 2))
                                  if lived < SHORT_LIFE else 0.0)
            self.next_spawn = self._clock() + self.respawn_delay

    def _boot_failed(self, worker: Child) -> None:
        if worker.generation < self.generation:
            return  # a replaced generation's late failure changes nothing
        previous = self._previous_generation()
        if previous is not None and not previous.retiring:
            log.error("master: the new configuration's workers cannot boot; keeping "
                      "generation %d", previous.number)
            self._abandon_generation(self.generation, previous)
            return
        log.error("master: worker %d could not boot; halting (see the error above)", worker.pid)
        self.exit_code = 1
        self.stop(graceful=False)

    def _previous_generation(self) -> Generation | None:
        older = [n for n in self.generations if n < self.generation]
        return self.generations[max(older)] if older else None

    def _abandon_generation(self, number: int, previous: Generation) -> None:
        """A reload whose workers cannot boot: stop them at once and serve on with the
        previous generation, its config and its worker count."""
        for worker in list(self.workers.values()):
            if worker.generation == number:
                worker.leaving = True
                self._kill(worker.pid, signal.SIGQUIT)
        generation = self.generations.pop(number)
        self.generation = previous.number
        self.config = previous.config
        self.target = self._target_before_reload
        assert self.table is not None
        self.table.set_generation(self.generation)
        self._close_unused_sockets(keep=generation.listeners.values())
        self._restart_helper(API)  # it served the abandoned configuration
        if self._reloading:
            self._reloading = False
            self.notifier.ready(self._status())

    # -- reload and stop
    def reload(self) -> None:
        assert self.table is not None
        self.notifier.reloading()
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            self._reload_refused()
            return
        try:
            listeners = self._listeners_for(config)
        except OSError as exc:
            log.error("reload refused: cannot listen: %s", exc)
            self._reload_refused()
            return
        try:
            self._listen_for_metrics(config)
        except OSError as exc:
            log.error("reload: %s; metrics stay on %s", exc, self.metrics_address)
        self.config = config
        self._generations_made += 1
        self.generation = self._generations_made
        self.table.set_generation(self.generation)
        self.table.count_server_event(reloads=1)
        self._reloading = True
        self._target_before_reload = self.target
        if self.workers_override is None and config.server.workers:
            self.target = config.server.workers
        generation = Generation(self.generation, config, listeners, self._clock(),
                                counter_keys=self._register_counters(config))
        self._restart_helper(API)
        self.generations[self.generation] = generation
        logging_setup.configure(config.log)
        log.warning("master: reloading: generation %d with %d workers", self.generation,
                    self.target)
        self.next_spawn = 0.0
        for _ in range(self.target):
            if not self.spawn(generation):
                break  # the rest once slots are free again (_keep_worker_count)

    def stop(self, graceful: bool) -> None:
        if self.stopping == "fast" or (self.stopping and graceful):
            return
        self.stopping = "graceful" if graceful else "fast"
        grace = self.config.server.graceful_timeout + 5 if graceful else FAST_STOP_TIMEOUT
        self.stop_deadline = self._clock() + grace
        log.warning("master: %s stop", self.stopping)
        self.notifier.stopping()
        for sock in self.sockets.values():
            sock.close()  # workers hold their own copies until they finish
        self.sockets.clear()
        self._signal_workers(signal.SIGTERM if graceful else signal.SIGQUIT)
        for helper in self.helpers.values():
            if helper.pid:
                helper.leaving = True
                self._kill(helper.pid, signal.SIGTERM)

    # -- helper processes (metrics, API) and systemd
    def _register_counters(self, config: Config) -> dict[tuple[int, str], int]:
        """The table's indexes of the traffic counters of ``config`` (registered now)."""
        assert self.table is not None
        found: dict[tuple[int, str], int] = {}
        for key in counter_keys_of(config):
            try:
                found[key] = self.table.register_counter(*key)
            except StateTableError as exc:
                log.warning("master: %s: %s and later ones are not counted", exc, key[1])
                break
        return found

    def _listen_for_metrics(self, config: Config) -> None:
        """Bind (or keep, or close) the metrics socket for ``config``; the metrics process
        is (re)started by the loop. Raises OSError if the address cannot be bound."""
        address = config.server.metrics
        if address == self.metrics_address:
            return
        fresh = bind_listener(*address) if address is not None else None
        if self.metrics_socket is not None:
            self.metrics_socket.close()
        self.metrics_socket, self.metrics_address = fresh, address
        self._restart_helper(METRICS)
        if address is not None:
            log.warning("master: Prometheus metrics on http://%s:%d/metrics", *address)

    def _wanted_helpers(self) -> list[str]:
        wanted = []
        if self.metrics_socket is not None:
            wanted.append(METRICS)
        if self.config.api is not None:
            wanted.append(API)
        return wanted

    def _keep_helpers(self, now: float) -> None:
        wanted = self._wanted_helpers()
        for name in wanted:
            helper = self.helpers.setdefault(name, Helper(name))
            if not helper.pid and now >= helper.next_start:
                self._spawn_helper(helper)
        for helper in self.helpers.values():
            if helper.name not in wanted and helper.pid and not helper.leaving:
                helper.leaving = True
                self._kill(helper.pid, signal.SIGTERM)

    def _restart_helper(self, name: str) -> None:
        """Stop a running helper; the loop starts it again (with the current config)."""
        helper = self.helpers.get(name)
        if helper is not None and helper.pid and not helper.leaving:
            helper.leaving = True
            self._kill(helper.pid, signal.SIGTERM)

    def _spawn_helper(self, helper: Helper) -> None:
        master = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = self._fork()
        if pid == 0:
            self._run_helper(helper.name, master)
        helper.pid, helper.started, helper.leaving = pid, self._clock(), False
        log.info("master: started the %s process, pid %d", helper.name, pid)

    def _run_helper(self, name: str, master: int) -> NoReturn:
        """A helper child's whole life: it never returns into the master's code."""
        code = 1
        try:
            die_with_master(master)
            metrics = self.metrics_socket
            self.metrics_socket = None  # not closed by _become_worker: it is ours
            self._become_worker()
            for sock in self.sockets.values():
                sock.close()  # the inbounds' listeners are the workers' business
            if name != METRICS and metrics is not None:
                metrics.close()
            config = self.config
            drop_privileges(config.server.user, config.server.group)
            die_with_master(master)  # changing ids cleared the parent-death signal
            assert self.table is not None
            if name == METRICS:
                assert metrics is not None and self.metrics_address is not None
                host, port = self.metrics_address
                setproctitle(f"revproxy: metrics [http://{host}:{port}/metrics]")
                from revproxy.server.metrics import serve as serve_metrics

                code = serve_metrics(metrics, self.table, master)
            else:
                assert config.api is not None
                setproctitle(f"revproxy: api [{config.api.tag}]")
                from revproxy.server.api import serve as serve_api

                code = serve_api(_api_socket(self.handoff_dir), self.table, config, master)
        except BaseException as exc:  # noqa: BLE001 - whatever happens, never return
            try:
                log.error("%s process %d: crashed: %s", name, os.getpid(), exc)
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)

    def _helper_exited(self, pid: int, status: int) -> None:
        helper = next((h for h in self.helpers.values() if h.pid == pid), None)
        if helper is None:
            return
        helper.pid = 0
        code = os.waitstatus_to_exitcode(status)
        if helper.leaving or self.stopping:
            helper.delay, helper.next_start = 0.0, 0.0
            return
        # A helper dying young waits longer and longer to be restarted.
        lived = self._clock() - helper.started
        helper.delay = (min(MAX_RESPAWN_DELAY, max(FIRST_HELPER_DELAY, helper.delay * 2))
                        if lived < SHORT_LIFE else FIRST_HELPER_DELAY)
        helper.next_start = self._clock() + helper.delay
        log.error("master: the %s process %d exited (%s); restarting it in %.0f s",
                  helper.name, pid, _describe_exit(code), helper.delay)

    def _status(self) -> str:
        running = sum(1 for w in self._current_workers() if self._row_state(w) == WORKER_RUNNING)
        return f"{running} workers running, generation {self.generation}"

    def _tell_ready(self) -> None:
        """READY=1 once the first generation runs in full (or in part, after BOOT_TIMEOUT,
        as the reload's rule)."""
        if self._ready:
            return
        running = [w for w in self._current_workers() if self._row_state(w) == WORKER_RUNNING]
        waited = self._clock() - self.generations[self.generation].started
        if len(running) >= self.target or (running and waited >= BOOT_TIMEOUT):
            self._ready = True
            self.notifier.ready(self._status())
            log.info("master: ready (%s)", self._status())

    def _reload_refused(self) -> None:
        assert self.table is not None
        self.table.count_server_event(refused=1)
        self.notifier.ready(self._status())  # still serving the old configuration

    # -- helpers
    def _listeners_for(self, config: Config) -> dict[int, socket.socket]:
        """Listening sockets for ``config``: reused where the address is unchanged."""
        fresh: list[socket.socket] = []
        listeners: dict[int, socket.socket] = {}
        try:
            for index in range(len(config.inbounds)):
                key = _listen_key(config, index)
                if _serves_tcp(config, index):
                    options = _listener_options(config, index)
                    sock = self.sockets.get(key)
                    if sock is None:
                        sock = bind_listener(*key, options=options)
                        fresh.append(sock)
                        self.sockets[key] = sock
                    elif options != self.listener_options.get(key):  # a reload changed them
                        set_listener_options(sock, options, self.listener_options.get(key))
                    self.listener_options[key] = options
                    listeners[index] = sock
                if _serves_udp(config, index):
                    # Bound once here and shared: the worker with the lowest index reads it
                    # (instance.py), so that one source's datagrams stay in one worker.
                    udp_key = ("udp", *key)
                    sock = self.sockets.get(udp_key)
                    if sock is None:
                        sock = bind_datagram(*key)
                        fresh.append(sock)
                        self.sockets[udp_key] = sock
                    listeners[udp_listener_key(index)] = sock
        except OSError:
            for sock in fresh:
                self.sockets = {k: s for k, s in self.sockets.items() if s is not sock}
                sock.close()
            raise
        self._close_unused_sockets(keep=listeners.values())
        return listeners

    def _close_unused_sockets(self, keep: Iterable[socket.socket]) -> None:
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
        for helper in self.helpers.values():
            if helper.pid:
                self._kill(helper.pid, signum)

    def _kill(self, pid: int, signum: int) -> None:
        try:
            self._kill_process(pid, signum)
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
        if self.handoff_dir:
            os.chown(self.handoff_dir, uid, gid)

    def _write_pid_file(self, path: str | None) -> None:
        if path:
            write_pid_file(path, os.getpid())
            self.pid_file = path

    def _cleanup(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        if self.metrics_socket is not None:
            self.metrics_socket.close()
        if self.handoff_dir:
            handoff.remove_directory(self.handoff_dir)
        if self.pid_file:
            remove_pid_file(self.pid_file, os.getpid())
        if self.table is not None:
            path = self.table.path
            self.table.close()
            if not self.config.server.state_file:
                try:
                    os.unlink(path)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        log.warning("master: cannot remove %s: %s", path, exc)


def _api_socket(directory: str) -> str:
    return os.path.join(directory, "api.sock")  # revproxy.server.api.API_SOCKET


def _cpus() -> int:
    return os.cpu_count() or 1


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
