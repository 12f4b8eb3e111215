"""Life of one forked worker process: drop privileges, build the Worker, publish its state in
the table, receive hand-offs from siblings, obey the supervisor's signals (TERM graceful,
USR2 retire, INT/QUIT fast, USR1 reopen logs), and show what it does in its process title."""

from __future__ import annotations

import gc
import os
import signal
import socket as stdsocket
import time

import gevent
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore
from setproctitle import setproctitle

from revproxy import log as logging_setup
from revproxy.instance import Instance
from revproxy.log import log
from revproxy.net.tasks import Tasks
from revproxy.proxy.vmess.replay import REPLAY_WINDOW
from revproxy.server import handoff
from revproxy.server.cluster import Cluster
from revproxy.server.spec import BOOT_ERROR, WorkerSpec
from revproxy.server.statetable import (
    WORKER_BOOTING,
    WORKER_RETIRING,
    WORKER_RUNNING,
    WorkerRow,
)
from revproxy.server.users import drop_privileges

PUBLISH_INTERVAL = 1.0
STEER_INTERVAL = 0.1  # how often portal workers re-check their share of the tunnels
TITLE_INTERVAL = 3.0


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.pid = os.getpid()
        self.state = WORKER_BOOTING
        # This worker's row in the table: written by this process only.
        self.row = spec.table.worker_writer(spec.slot, WorkerRow(
            pid=self.pid, generation=spec.generation, index=spec.index, state=WORKER_BOOTING,
            started=time.time(), heartbeat=time.time()))
        self.instance: Instance | None = None
        self.stop_requested = Event()
        self.graceful = True
        self.retire = False
        self._last_title = 0.0

    def run(self) -> int:
        spec = self.spec
        config = spec.config
        logging_setup.setup(config.log.level, config.log.error, config.log.access)
        self.set_title("booting")
        try:
            drop_privileges(config.server.user, config.server.group)
            endpoint = handoff.bind_endpoint(self.pid, socket.socket)
            cluster = Cluster(spec.table, spec.slot, spec.generation, endpoint, Semaphore(),
                              gevent.sleep)
            self.instance = Instance(config, spec.listeners,
                                     replay=spec.table.replay_filter(REPLAY_WINDOW),
                                     cluster=cluster, workers=spec.count)
            self.instance.start()
        except Exception as exc:
            log.error("worker %d: cannot start: %s", self.pid, exc)
            return BOOT_ERROR
        # What exists now (modules, config, wiring) lives as long as the worker: keep the
        # cyclic collector from walking it again and again (shorter pauses, fewer pages
        # copied from the master).
        gc.collect()
        gc.freeze()
        self.state = WORKER_RUNNING
        gevent.signal_handler(signal.SIGTERM, self.request_stop, True)
        gevent.signal_handler(signal.SIGUSR2, self.request_stop, True, True)
        gevent.signal_handler(signal.SIGINT, self.request_stop, False)
        gevent.signal_handler(signal.SIGQUIT, self.request_stop, False)
        gevent.signal_handler(signal.SIGUSR1, self.reopen_logs)
        for ignored in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(ignored, signal.SIG_IGN)
        publisher = gevent.spawn(self._publish_loop)
        steerer = gevent.spawn(self._steer_loop) if self.instance.portals else None
        receiver = gevent.spawn(self._receive_handoffs, endpoint)
        log.info("worker %d: %d/%d gen %d running", self.pid, spec.index, spec.count,
                 spec.generation)
        self.stop_requested.wait()
        self.state = WORKER_RETIRING
        self.publish()
        self.set_title("stopping")
        timeout = config.server.graceful_timeout if self.graceful else 0.0
        self.instance.stop(timeout, retire=self.retire and self.graceful)
        receiver.kill(block=False)
        publisher.kill(block=False)
        if steerer is not None:
            steerer.kill(block=False)
        return 0

    def request_stop(self, graceful: bool, retire: bool = False) -> None:
        """TERM: graceful stop; USR2: retire (graceful, after siblings took over the
        tunnels); INT/QUIT: fast stop."""
        self.graceful = self.graceful and graceful
        self.retire = retire and not self.stop_requested.is_set()
        self.stop_requested.set()
        if not graceful and self.state == WORKER_RETIRING:
            os._exit(0)  # a second, fast stop while finishing: leave now

    def reopen_logs(self) -> None:
        config = self.spec.config
        logging_setup.setup(config.log.level, config.log.error, config.log.access)

    # -- state table and title
    def publish(self) -> None:
        row = self.row
        row.state = self.state
        row.heartbeat = time.time()
        worker = self.instance
        if worker is not None:
            tunnels = worker.tunnels()
            row.bytes_in = sum(t.bytes_down for t in tunnels)
            row.bytes_out = sum(t.bytes_up for t in tunnels)
            if worker.dispatcher is not None:
                row.connections = worker.dispatcher.active
                row.total_connections = worker.dispatcher.total
        row.publish()

    def _publish_loop(self) -> None:
        parent = os.getppid()
        while True:
            if os.getppid() != parent:
                log.error("worker %d: the master is gone, exiting", self.pid)
                os._exit(1)
            try:
                now = time.monotonic()
                assert self.instance is not None
                for tunnel in self.instance.tunnels():
                    tunnel.measure(now)
                if self.instance.cluster is not None:
                    self.instance.cluster.publish_all()
                self.publish()
                if now - self._last_title >= TITLE_INTERVAL:
                    self.set_title(self.instance.summary())
                    self._last_title = now
            except Exception:
                log.exception("worker %d: publishing state failed", self.pid)
            gevent.sleep(PUBLISH_INTERVAL)

    def _steer_loop(self) -> None:
        """Portal workers re-spread new tunnels often: under new-connection load the bridges
        replace drained tunnels every few seconds."""
        assert self.instance is not None
        while True:
            if self.state == WORKER_RUNNING:
                try:
                    self.instance.steer_tunnels()
                except Exception:
                    log.exception("worker %d: steering tunnels failed", self.pid)
            gevent.sleep(STEER_INTERVAL)

    def set_title(self, what: str) -> None:
        spec = self.spec
        setproctitle(f"revproxy: worker {spec.index}/{spec.count} gen {spec.generation} "
                     f"[{what}]")

    # -- hand-offs
    def _receive_handoffs(self, endpoint: socket.socket) -> None:
        assert self.instance is not None
        portals = {portal.tag: portal for portal in self.instance.portals}
        tasks = Tasks()
        while True:
            try:
                meta, fd = handoff.receive(endpoint)
            except OSError as exc:
                log.warning("worker %d: hand-off receive failed: %s", self.pid, exc)
                gevent.sleep(0.1)
                continue
            if fd is None:
                continue
            visitor = stdsocket.socket(fileno=fd)
            visitor.setblocking(False)  # for SocketStream
            portal = portals.get(meta.portal_tag) if meta is not None else None
            if portal is None:
                log.warning("worker %d: dropped a malformed hand-off", self.pid)
                visitor.close()
                continue
            tasks.spawn(portal.serve_handoff, meta, visitor)


def run_worker(spec: WorkerSpec) -> int:
    return Worker(spec).run()
