"""A worker whose hand-off receiver dies is unhealthy: its endpoint goes (siblings' hand-offs
fail at once and they keep their visitors) and its heartbeat stops, so the master replaces
it."""

from __future__ import annotations

import os
from types import SimpleNamespace

import gevent

from revproxy.net.traffic import Traffic
from revproxy.server import handoff
from revproxy.server.worker import Worker


class Row(SimpleNamespace):
    def publish(self) -> None:
        self.published = getattr(self, "published", 0) + 1


def test_a_dead_receiver_stops_the_heartbeat(tmp_path) -> None:
    directory = tmp_path / "handoff"
    directory.mkdir(0o700)
    endpoint = handoff.bind_endpoint(str(directory), os.getpid())
    worker = Worker.__new__(Worker)
    worker.spec = SimpleNamespace(handoff_dir=str(directory))
    worker.pid = os.getpid()
    worker.state = 2
    worker.instance = None
    worker.healthy = True
    worker.row = Row(state=0, heartbeat=0.0)
    worker.traffic = Traffic()
    worker.counters = Row()
    worker.cluster = None
    worker.publish()
    assert worker.row.heartbeat > 0.0
    beat = worker.row.heartbeat

    def receive() -> None:
        raise OSError(9, "Bad file descriptor")

    receiver = gevent.spawn(receive)
    receiver.link(worker._receiver_ended)
    receiver.join()
    gevent.sleep(0)  # links run in the hub
    assert not worker.healthy
    assert not os.path.exists(handoff.endpoint_path(str(directory), os.getpid()))
    worker.publish()
    assert worker.row.heartbeat == beat and worker.row.published == 2
    endpoint.close()
