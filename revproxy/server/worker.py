"""Life of one forked worker process: drop privileges, build the Instance, publish its state in
the table, receive hand-offs from siblings, obey the supervisor's signals (TERM graceful,
USR2 graceful while the siblings go on, INT/QUIT fast, USR1 reopen logs), and show what it
does in its process title. A worker whose hand-off receiver dies stops its heartbeat, so that
the master replaces it."""

from __future__ import annotations

import gc
import os
import signal
import socket
import time

import gevent
from gevent.event import Event
from gevent.socket import wait_read, wait_write
from setproctitle import setproctitle

from revproxy import log as logging_setup
from revproxy.instance import Instance
from revproxy.log import log
from revproxy.net.pairs import visitor_stream
from revproxy.net.session import Session, Target
from revproxy.net.tasks import Tasks
from revproxy.net.traffic import HANDOFFS_SENT, Traffic
from revproxy.net.udp import PacketSessions
from revproxy.proxy.vmess.replay import REPLAY_WINDOW
from revproxy.server import handoff
from revproxy.server.cluster import Cluster
from revproxy.server.spec import BOOT_ERROR, WorkerSpec, die_with_master
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
        # Its traffic counters and events, published to its block of the table.
        self.counters = spec.table.counter_writer(spec.slot)
        self.traffic = Traffic(spec.counter_keys, self.counters.values, self.counters.events)
        self.instance: Instance | None = None
        self.cluster: Cluster | None = None
        self.receiver: handoff.Receiver | None = None
        self.stop_requested = Event()
        self.graceful = True
        self.wait_for_siblings = False  # USR2: the siblings go on and take the tunnels over
        self.healthy = True  # False: the heartbeat stops and the master replaces this worker
        self._tasks = Tasks()  # where handed-over visitors start
        self._last_title = 0.0

    def run(self) -> int:
        spec = self.spec
        config = spec.config
        logging_setup.configure(config.log)
        self.set_title("booting")
        try:
            drop_privileges(config.server.user, config.server.group)
            if spec.master_pid:
                die_with_master(spec.master_pid)  # changing ids cleared the parent-death signal
            endpoint = handoff.bind_endpoint(spec.handoff_dir, self.pid)
            self.cluster = cluster = Cluster(spec.table, spec.slot, spec.generation,
                                             handoff.Sender(spec.handoff_dir, wait_write))
            self.instance = Instance(config, spec.listeners,
                                     replay=spec.table.replay_filter(REPLAY_WINDOW),
                                     directory=cluster, workers=spec.count,
                                     traffic=self.traffic, api_socket=spec.api_socket,
                                     udp_reader=spec.index == 1)  # (indexes start at 1)
            self.instance.start()
            self.receiver = handoff.Receiver(
                endpoint, handoff.endpoint_path(spec.handoff_dir, self.pid),
                is_sibling=cluster.is_sibling, refusal=self._handoff_refusal,
                serve=self._serve_handed_over, wait_readable=wait_read, sleep=gevent.sleep)
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
        receiver = gevent.spawn(self.receiver.run)
        receiver.link(self._receiver_ended)
        log.info("worker %d: %d/%d gen %d running", self.pid, spec.index, spec.count,
                 spec.generation)
        self.stop_requested.wait()
        self.state = WORKER_RETIRING
        self.publish()
        self.set_title("stopping")
        timeout = config.server.graceful_timeout if self.graceful else 0.0
        self.instance.stop(timeout,
                           wait_for_siblings=self.wait_for_siblings and self.graceful)
        receiver.unlink(self._receiver_ended)
        receiver.kill()
        self.receiver.close()
        publisher.kill(block=False)
        if steerer is not None:
            steerer.kill(block=False)
        return 0

    def request_stop(self, graceful: bool, wait_for_siblings: bool = False) -> None:
        """TERM: graceful stop; USR2: graceful stop once the siblings took the tunnels over;
        INT/QUIT: fast stop."""
        self.graceful = self.graceful and graceful
        self.wait_for_siblings = wait_for_siblings and not self.stop_requested.is_set()
        self.stop_requested.set()
        if not graceful and self.state == WORKER_RETIRING:
            os._exit(0)  # a second, fast stop while finishing: leave now

    def reopen_logs(self) -> None:
        config = self.spec.config
        logging_setup.configure(config.log)

    # -- state table and title
    def publish(self) -> None:
        row = self.row
        row.state = self.state
        if self.healthy:
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
        self.traffic.sample()
        if self.cluster is not None:
            self.traffic.events[HANDOFFS_SENT] = self.cluster.handoffs_sent
        self.counters.publish()

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
                if self.cluster is not None:
                    self.cluster.refresh_all()
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
    def _handoff_refusal(self, offer: handoff.Handoff) -> str | None:
        """Why a sibling's hand-off cannot be served here, or None."""
        assert self.instance is not None
        portal = next((p for p in self.instance.portals if p.tag == offer.outbound_tag), None)
        if portal is None:
            return f"no portal {offer.outbound_tag!r} here"
        return portal.handoff_refusal(offer.tunnel_id,
                                      Target(offer.network, offer.address, offer.port))

    def _serve_handed_over(self, session: Session, visitor: socket.socket) -> None:
        """A sibling's visitor goes through the dispatcher like one accepted here."""
        assert self.instance is not None and self.instance.dispatcher is not None
        if visitor.type == socket.SOCK_DGRAM:
            # One UDP source's own socket (net/udp.py): its session ends when idle, as it
            # would have in the sibling, and the socket with it.
            dispatcher = self.instance.dispatcher
            packets = PacketSessions(visitor, lambda stream: dispatcher.handle(session, stream),
                                     name=f"UDP {session.source}", once=True)
            packets.start()
            packets.open(visitor.getpeername())
            return
        self._tasks.spawn(self.instance.dispatcher.handle, session, visitor_stream(visitor))

    def _receiver_ended(self, greenlet: gevent.Greenlet) -> None:
        """The receiving loop must not end while the worker runs: siblings would hand it
        visitors that nobody takes. Stop the heartbeat: the master replaces this worker."""
        log.error("worker %d: the hand-off receiver died (%s); stopping the heartbeat so "
                  "that the master replaces this worker", self.pid, greenlet.exception)
        self.healthy = False
        try:
            os.unlink(handoff.endpoint_path(self.spec.handoff_dir, self.pid))
        except OSError:
            pass


def run_worker(spec: WorkerSpec) -> int:
    return Worker(spec).run()
