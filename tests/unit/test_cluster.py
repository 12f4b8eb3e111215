"""The cluster over a real state table: it lists this worker's tunnels for the siblings, shows
a sibling's portal tunnels, knows which pids are siblings, and stops offering hand-offs to a
sibling that took none in time."""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace

import pytest

from revproxy.net.session import Session, Target
from revproxy.reverse.directory import Role, SiblingTunnel, TunnelDirectory
from revproxy.server import handoff
from revproxy.server.cluster import Cluster
from revproxy.server.statetable import (
    ROLE_PORTAL,
    TUNNEL_ACTIVE,
    TUNNEL_DRAINING,
    WORKER_RUNNING,
    StateTable,
    TunnelRow,
    WorkerRow,
)

SIBLING = 4343


@pytest.fixture
def table(tmp_path):
    with StateTable.create(str(tmp_path / "revproxy.state"), 1) as created:
        now = time.time()
        created.worker_writer(0, WorkerRow(os.getpid(), state=WORKER_RUNNING, heartbeat=now))
        created.worker_writer(1, WorkerRow(SIBLING, state=WORKER_RUNNING, heartbeat=now))
        yield created


@pytest.fixture
def cluster(table, tmp_path):
    directory = tmp_path / "handoff"
    directory.mkdir(0o700)
    endpoint = handoff.bind_endpoint(str(directory), os.getpid())
    made = Cluster(table, 0, 1, handoff.Sender(str(directory), no_room))
    yield made
    made.sender.close()
    endpoint.close()


def no_room(fd: int, timeout: float) -> None:
    """A sender's wait for room in a full queue, at once out of patience."""
    raise TimeoutError


def tunnel(**changes) -> SimpleNamespace:
    fields = dict(tunnel_id=1, tag="portal", peer="127.0.0.1:1", draining=False, suspect=False,
                  throughput=0.0, opened=time.time(), active_sessions=3, total_sessions=9,
                  bytes_up=10, bytes_down=20, last_heard=time.time())
    fields.update(changes)
    return SimpleNamespace(**fields)


def test_the_cluster_is_a_tunnel_directory(cluster) -> None:
    directory: TunnelDirectory = cluster
    assert directory.bridge_pools("bridge") == [(0, 0)]


def test_a_listed_tunnel_shows_its_state_until_withdrawn(cluster, table) -> None:
    mine = tunnel()
    listing = cluster.list_tunnel(Role.PORTAL, mine)
    assert listing is not None
    [(slot, _, row)] = table.tunnels()
    assert (slot, row.role, row.state, row.active_sessions) == (0, ROLE_PORTAL, TUNNEL_ACTIVE, 3)
    mine.draining, mine.active_sessions = True, 1
    listing.refresh()
    [(_, _, row)] = table.tunnels()
    assert (row.state, row.active_sessions) == (TUNNEL_DRAINING, 1)
    listing.withdraw()
    listing.withdraw()  # twice is harmless
    assert table.tunnels() == []


def test_siblings_and_their_portal_tunnels(cluster, table) -> None:
    assert cluster.is_sibling(SIBLING)
    assert not cluster.is_sibling(os.getpid()) and not cluster.is_sibling(1)
    table.tunnel_writer(1, 0, TunnelRow(owner_pid=SIBLING, slot=1, tunnel_id=7, role=ROLE_PORTAL,
                                        tag="portal", state=TUNNEL_ACTIVE, active_sessions=2))
    assert list(cluster.sibling_portal_tunnels("portal")) == [
        SiblingTunnel(SIBLING, 7, "portal", 2, 0.0, False)]
    assert cluster.portal_tunnel_counts() == {SIBLING: 1}
    assert cluster.siblings_hold(Role.PORTAL, "portal")
    assert not cluster.siblings_hold(Role.BRIDGE, "portal")


def test_a_sibling_that_takes_nothing_is_offered_nothing_for_a_while(cluster, table,
                                                                      tmp_path) -> None:
    table.tunnel_writer(1, 0, TunnelRow(owner_pid=SIBLING, slot=1, tunnel_id=7, role=ROLE_PORTAL,
                                        tag="portal", state=TUNNEL_ACTIVE))
    [target] = cluster.sibling_portal_tunnels("portal")
    full = handoff.bind_endpoint(cluster.sender.directory, SIBLING)  # bound, never read
    session = Session(Target("tcp", "backend", 80), "public")
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as visitor:
        try:
            results = [cluster.hand_off(target, session, visitor) for _ in range(40)]
        finally:
            full.close()
    assert True in results and results[-1] is False  # queued until the queue was full
    time.sleep(0.02)  # past the cached read
    assert list(cluster.sibling_portal_tunnels("portal")) == []


def test_a_long_portal_tag_is_found_as_the_table_cuts_it(cluster, table) -> None:
    tag = "a-portal-tag-longer-than-the-thirty-two-bytes-of-a-row"
    table.tunnel_writer(1, 0, TunnelRow(owner_pid=SIBLING, slot=1, tunnel_id=7, role=ROLE_PORTAL,
                                        tag=tag, state=TUNNEL_ACTIVE))
    [found] = cluster.sibling_portal_tunnels(tag)
    assert found.tag == tag  # the whole tag travels with a hand-off
    assert cluster.siblings_hold(Role.PORTAL, tag)
