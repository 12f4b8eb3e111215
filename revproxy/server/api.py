"""V2Ray's gRPC API (``api`` in the configuration): StatsService and LoggerService, served by
a child process of the master on a Unix socket in the server's private (0700) runtime
directory. A worker's dispatcher routes the sessions for the API's tag, as V2Ray's does, to
an outbound that connects to that socket (revproxy/proxy/commander.py), so ``v2ctl api
--server=HOST:PORT`` works against the dokodemo-door inbound routed there.

The counters are the workers' (state table, summed over every worker, gone ones included);
which of them exist, and under which names, follows V2Ray 4.34: only with a ``stats`` object,
``inbound>>>TAG>>>traffic>>>uplink``/``downlink`` for tagged inbounds when
``policy.system.statsInboundUplink``/``Downlink``, ``outbound>>>TAG>>>...`` likewise, and
``user>>>EMAIL>>>traffic>>>...`` for users with an e-mail whose level asks for it, from their
first connection on. ``reset`` is a baseline kept in the table (this process is its only
writer), so nobody's counters are written.

Why a child process: gRPC starts threads, and must not be initialised in the master, which
forks workers (a thread holding a lock at the fork would deadlock the child); nor may it run
in a worker, whose gevent loop it would not cooperate with. This child never forks.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from revproxy.config import Config
from revproxy.log import log
from revproxy.server import statsproto as proto
from revproxy.server.statetable import (
    COUNTER_KEYS,
    KIND_INBOUND,
    KIND_OUTBOUND,
    KIND_USER,
    VALUES_PER_KEY,
    StateTable,
)

API_SOCKET = "api.sock"  # in the hand-off directory, which is private to the server
MAX_RPC_THREADS = 4
MAX_CONCURRENT_RPCS = 32
STOP_GRACE = 1.0
_UP, _DOWN = 0, 1


class NotFound(LookupError):
    """No counter of that name (V2Ray: "<name> not found.")."""


class NoStats(RuntimeError):
    """The configuration has no ``stats`` object: V2Ray's QueryStats refuses then."""


def api_socket_path(directory: str) -> str:
    return os.path.join(directory, API_SOCKET)


def counter_names(config: Config) -> dict[str, tuple[int, str, int]]:
    """V2Ray's counter name -> (kind, key name, direction) of every counter the
    configuration asks for (users' ones exist only after their first connection)."""
    if not config.stats:
        return {}
    names: dict[str, tuple[int, str, int]] = {}
    system = config.policy.system

    def add(kind: int, what: str, tag: str, up: bool, down: bool) -> None:
        if up:
            names[f"{what}>>>{tag}>>>traffic>>>uplink"] = (kind, tag, _UP)
        if down:
            names[f"{what}>>>{tag}>>>traffic>>>downlink"] = (kind, tag, _DOWN)

    for inbound in config.inbounds:
        if inbound.tag:
            add(KIND_INBOUND, "inbound", inbound.tag, system.stats_inbound_uplink,
                system.stats_inbound_downlink)
    for outbound in config.outbounds:
        if outbound.tag:
            add(KIND_OUTBOUND, "outbound", outbound.tag, system.stats_outbound_uplink,
                system.stats_outbound_downlink)
    for email, level in users(config):
        policy = config.policy.level(level)
        add(KIND_USER, "user", email, policy.stats_user_uplink, policy.stats_user_downlink)
    return names


def users(config: Config) -> list[tuple[str, int]]:
    """(email, level) of every inbound user with an e-mail, whatever the protocol."""
    found = []
    for inbound in config.inbounds:
        for client in getattr(inbound.settings, "clients", ()) or ():
            email = getattr(client, "email", None)
            if email:
                found.append((email, getattr(client, "level", 0) or 0))
    return found


class StatsBook:
    """The StatsService's answers from the table; thread-safe (gRPC calls come on several
    threads)."""

    def __init__(self, table: StateTable, config: Config,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.config = config
        self.names = counter_names(config)
        self.started = table.created  # the server's start, not this process's
        self._clock = clock
        self._lock = threading.Lock()

    def _current(self) -> tuple[dict[tuple[int, str], int], tuple[int, ...], list[int]]:
        index = {key: i for i, key in enumerate(self.table.counter_keys())}
        _, values = self.table.totals(slot for slot, _ in self.table.workers())
        return index, values, list(self.table.baselines())

    def _value(self, name: str, index: dict[tuple[int, str], int], values: tuple[int, ...],
               baselines: list[int], reset: bool) -> int:
        """The counter's value (KeyError: no such counter now); with ``reset`` its baseline
        moves to the current total, as V2Ray's Set(0)."""
        kind, key, direction = self.names[name]
        at = index.get((kind, key))
        if at is None:
            if kind == KIND_USER:
                raise KeyError(name)  # a user's counter exists from its first connection
            return 0
        if kind == KIND_USER and not values[VALUES_PER_KEY * at + 2]:
            raise KeyError(name)
        total = values[VALUES_PER_KEY * at + direction]
        value = max(0, total - baselines[2 * at + direction])
        if reset:
            baselines[2 * at + direction] = total
        return value

    def get(self, name: str, reset: bool) -> int:
        with self._lock:
            index, values, baselines = self._current()
            try:
                value = self._value(name, index, values, baselines, reset)
            except KeyError:
                raise NotFound(name) from None
            if reset:
                self.table.set_baselines(baselines)
            return value

    def query(self, pattern: str, reset: bool) -> list[tuple[str, int]]:
        """Every counter whose name contains ``pattern`` (V2Ray's substring matcher)."""
        if not self.config.stats:
            raise NoStats("QueryStats only works its own stats.Manager.")
        with self._lock:
            index, values, baselines = self._current()
            found = []
            for name in sorted(self.names):
                if pattern in name:
                    try:
                        found.append((name, self._value(name, index, values, baselines, reset)))
                    except KeyError:
                        continue
            if reset and found:
                self.table.set_baselines(baselines)
            return found

    def sys_stats(self) -> list[int]:
        """SysStatsResponse's values for the whole server: goroutines are the sessions being
        served, memory is the resident memory of the master and its workers."""
        workers = self.table.workers()
        sessions = sum(row.connections for _, row in workers)
        memory = 0
        for pid in [os.getppid(), *(row.pid for _, row in workers)]:
            try:
                memory += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        uptime = int(self._clock() - self.started)
        return [sessions, 0, memory, memory, memory, 0, 0, 0, 0, uptime]


def handlers(book: StatsBook, services: Iterable[str], restart_logger: Callable[[], None]
             ) -> list[Any]:
    """gRPC generic handlers for the configured services, with this module's codecs."""
    import grpc

    def get_stats(request: tuple[str, bool], context: grpc.ServicerContext) -> bytes:
        name, reset = request
        try:
            return proto.encode_get_stats_response(name, book.get(name, reset))
        except NotFound:
            context.abort(grpc.StatusCode.UNKNOWN, f"app/stats/command: {name} not found.")
            raise  # abort raises; this keeps the type checker informed

    def query_stats(request: tuple[str, bool], context: grpc.ServicerContext) -> bytes:
        pattern, reset = request
        try:
            return proto.encode_query_stats_response(book.query(pattern, reset))
        except NoStats as exc:
            context.abort(grpc.StatusCode.UNKNOWN, f"app/stats/command: {exc}")
            raise

    def sys_stats(_request: tuple[()], _context: grpc.ServicerContext) -> bytes:
        return proto.encode_sys_stats(book.sys_stats())

    def restart(_request: tuple[()], _context: grpc.ServicerContext) -> bytes:
        restart_logger()
        return b""

    def unary(handler: Callable[..., bytes], decode: Callable[[bytes], Any]) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=decode, response_serializer=lambda data: data)

    found = []
    if "StatsService" in services:
        found.append(grpc.method_handlers_generic_handler(proto.STATS_SERVICE, {
            "GetStats": unary(get_stats, proto.decode_name_and_reset),
            "QueryStats": unary(query_stats, proto.decode_name_and_reset),
            "GetSysStats": unary(sys_stats, proto.decode_empty),
        }))
    if "LoggerService" in services:
        found.append(grpc.method_handlers_generic_handler(proto.LOGGER_SERVICE, {
            "RestartLogger": unary(restart, proto.decode_empty),
        }))
    return found


def serve(path: str, table: StateTable, config: Config, master_pid: int) -> int:
    """The API child's life: serve on the Unix socket ``path`` until SIGTERM or the master's
    death. Returns the exit status."""
    from concurrent import futures

    import grpc  # here: never in the master, never before a fork

    assert config.api is not None
    book = StatsBook(table, config)
    if len(table.counter_keys()) >= COUNTER_KEYS:
        log.warning("api: the state table's %d counter keys are all in use: later tags and "
                    "users are not counted", COUNTER_KEYS)

    def restart_logger() -> None:
        os.kill(master_pid, signal.SIGUSR1)  # the master reopens its logs and the workers'

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_RPC_THREADS),
                         handlers=handlers(book, config.api.services, restart_logger),
                         maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
                         options=[("grpc.max_receive_message_length", proto.MAX_MESSAGE)])
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    if not server.add_insecure_port(f"unix:{path}"):
        log.error("api: cannot listen on %s", path)
        return 1
    os.chmod(path, 0o600)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    log.info("api: %s served on %s", ", ".join(config.api.services) or "nothing", path)
    while not stop.wait(1.0) and os.getppid() == master_pid:
        pass
    server.stop(STOP_GRACE).wait(STOP_GRACE + 1)
    try:
        os.unlink(path)
    except OSError:
        pass
    return 0
