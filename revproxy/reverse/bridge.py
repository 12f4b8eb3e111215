"""Bridge: keeps tunnels open to the portal and serves the sessions the portal sends in them.

A tunnel is dialed as a TCP session to ``<domain>:0`` with the bridge's inbound tag, so
routing picks the outbound that reaches the portal. In it the bridge is the Mux.Cool server:
each new session is dispatched with the bridge's tag, except the portal's control session.
Every 2 s the monitor drops tunnels that were told DRAIN, closed, or stayed silent for 10 s
(V2Ray waits for its 300 s idle timeout), and dials a new one while there are fewer than
``min_tunnels``, when the tunnels average more than 16 sessions each (V2Ray's rule, counted
over all workers' tunnels; the worker with the fewest dials) or when
one carries more than ``GROW_THROUGHPUT`` bytes/s (up to twice the minimum), at most
``max_tunnels``; idle tunnels beyond the minimum are closed after ``IDLE_EXTRA_CLOSE`` s.
Failed dials back off up to 2 s.
"""

from __future__ import annotations

import itertools
import time

import gevent
from gevent.event import Event

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import NETWORK_UDP, Frame
from revproxy.mux.server import MuxServer
from revproxy.net.session import Session, Target
from revproxy.net.stream import Stream
from revproxy.net.tasks import Tasks
from revproxy.reverse.control import CONTROL_DOMAIN, STATE_ACTIVE, ControlError, decode_control
from revproxy.reverse.tunnel import Tunnel
from revproxy.server.cluster import Cluster
from revproxy.server.statetable import ROLE_BRIDGE

MONITOR_INTERVAL = 2.0
SILENCE_LIMIT = 10.0
SESSIONS_PER_TUNNEL = 16
GROW_THROUGHPUT = 50_000_000.0  # bytes/s on one tunnel that justify another
IDLE_EXTRA_CLOSE = 60.0
DRAINED_IDLE_CLOSE = 30.0
MAX_BACKOFF = 2.0


class BridgeTunnel(Tunnel):
    """One dialed tunnel: the mux server in it and the portal's last control state."""

    def __init__(self, bridge: Bridge, stream: Stream, tunnel_id: int) -> None:
        super().__init__(tunnel_id, bridge.tag, "portal")
        self.bridge = bridge
        self.mux = MuxServer(stream, self._accept, self.name)
        self.drained_at = 0.0
        self.idle_since = time.monotonic()
        self._control: MuxSession | None = None

    def silent_for(self, now: float) -> float:
        return now - self.mux.last_received

    def _accept(self, session: MuxSession, frame: Frame) -> None:
        if frame.address == CONTROL_DOMAIN:
            session.sink = self._on_control
            self._control = session
            return
        network = "udp" if frame.network == NETWORK_UDP else "tcp"
        target = Target(network, frame.address or "", frame.port or 0)
        self.bridge.tasks.spawn(self.bridge.dispatcher.handle,
                                Session(target, self.bridge.tag, source=self.name), session)

    def retire(self) -> None:
        """Ask the portal to send no new sessions here: end the control session (a revproxy
        portal then drains the tunnel; V2Ray's portal does not react)."""
        control, self._control = self._control, None
        if control is not None:
            control.close()

    def _on_control(self, payload: bytes) -> None:
        try:
            state = decode_control(payload)
        except ControlError as exc:
            log.warning("bridge: tunnel %s: bad control message: %s", self.name, exc)
            return
        if state != STATE_ACTIVE and not self.draining:
            log.info("bridge: tunnel %s drained by the portal", self.name)
            self.draining = True
            self.drained_at = time.monotonic()
            self.bridge.wake()  # dial the replacement now, not at the next 2 s tick


class Bridge:
    def __init__(self, tag: str, domain: str, dispatcher: Dispatcher,
                 min_tunnels: int = 1, max_tunnels: int | None = None,
                 cluster: Cluster | None = None) -> None:
        self.tag = tag
        self.domain = domain
        self.dispatcher = dispatcher
        self.min_tunnels = max(1, min_tunnels)
        self.max_tunnels = max_tunnels
        self.cluster = cluster
        self.tasks = Tasks()  # where the portal's sessions are served
        self.tunnels: list[BridgeTunnel] = []  # in service
        self.retired: list[BridgeTunnel] = []  # drained, finishing their sessions
        self.dialing = True
        self._wake = Event()
        self._failures = 0
        self._next_dial = 0.0
        self._ids = itertools.count(1)
        self._runner: gevent.Greenlet | None = None

    @property
    def sessions(self) -> int:
        """Sessions in progress, the control sessions left out."""
        return sum(max(0, t.active_sessions - 1) for t in self.tunnels + self.retired)

    def start(self) -> None:
        self._runner = gevent.spawn(self._run)

    def wake(self) -> None:
        """Run the monitor now."""
        self._wake.set()

    def stop_dialing(self) -> None:
        """For a graceful stop: keep serving the running sessions, open no new tunnel."""
        self.dialing = False

    def retire(self) -> None:
        """For a graceful stop, once replacement tunnels exist: steer the portal away."""
        self.dialing = False
        for tunnel in self.tunnels + self.retired:
            tunnel.retire()

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.kill(block=False)
        for tunnel in self.tunnels + self.retired:
            tunnel.mux.close()

    def _run(self) -> None:
        while True:
            try:
                self.monitor()
            except Exception:
                log.exception("bridge %s: monitor failed", self.tag)
            self._wake.wait(MONITOR_INTERVAL)
            self._wake.clear()

    def monitor(self) -> None:
        now = time.monotonic()
        serving: list[BridgeTunnel] = []
        for tunnel in self.tunnels:
            if tunnel.closed:
                if not tunnel.mux.bytes_received:
                    self._dial_failed(now, "the portal closed the tunnel without a word")
                continue
            if tunnel.draining:
                self.retired.append(tunnel)
            elif tunnel.silent_for(now) > SILENCE_LIMIT:
                log.warning("bridge %s: tunnel %s silent for %.0f s, redialling", self.tag,
                            tunnel.name, tunnel.silent_for(now))
                tunnel.mux.close()
            else:
                serving.append(tunnel)
                if self._failures and tunnel.mux.bytes_received:
                    log.info("bridge %s: portal reachable again", self.tag)
                    self._failures = 0
        self.tunnels = serving
        for tunnel in self.retired:
            if not tunnel.closed and tunnel.active_sessions <= 1 and \
                    now - tunnel.drained_at > DRAINED_IDLE_CLOSE:
                tunnel.mux.close()
        self.retired = [t for t in self.retired if not t.closed]
        self._close_idle_extras(now)
        for tunnel in self.tunnels:
            tunnel.measure(now)
            try:
                tunnel.mux.send_keepalive()  # lets a revproxy portal notice a dead bridge
            except ConnectionError:
                pass
        if self.dialing and self._wants_tunnel() and now >= self._next_dial:
            self._dial(now)

    def _close_idle_extras(self, now: float) -> None:
        for tunnel in self.tunnels:
            if tunnel.active_sessions > 1:
                tunnel.idle_since = now
        extras = len(self.tunnels) - self.min_tunnels
        for tunnel in sorted(self.tunnels, key=lambda t: t.idle_since):
            if extras <= 0 or now - tunnel.idle_since < IDLE_EXTRA_CLOSE:
                break
            log.info("bridge %s: closing idle extra tunnel %s", self.tag, tunnel.name)
            tunnel.mux.close()
            extras -= 1

    def _wants_tunnel(self) -> bool:
        count = len([t for t in self.tunnels if not t.closed])
        if self.max_tunnels is not None and count >= self.max_tunnels:
            return False
        if count < self.min_tunnels:
            return True
        sessions = sum(t.active_sessions for t in self.tunnels)
        tunnels, fewest = count, count
        if self.cluster is not None:
            for sibling_tunnels, sibling_sessions in self.cluster.bridge_pools(self.tag):
                tunnels += sibling_tunnels
                sessions += sibling_sessions
                fewest = min(fewest, sibling_tunnels)
        if sessions // tunnels > SESSIONS_PER_TUNNEL:
            # The portal spreads sessions evenly over tunnels: growing where tunnels are
            # fewest keeps the workers' shares of the load even too.
            return count <= fewest
        # Traffic alone is worth at most as many extra tunnels as the minimum again.
        return count < 2 * self.min_tunnels and any(t.throughput > GROW_THROUGHPUT
                                                     for t in self.tunnels)

    def _dial_failed(self, now: float, reason: object) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF, 0.25 * 2 ** self._failures)
        self._next_dial = now + delay
        if self._failures == 1 or self._failures % 30 == 0:
            log.warning("bridge %s: failed to reach the portal: %s (retrying)", self.tag, reason)
        gevent.spawn_later(delay, self._wake.set)

    def _dial(self, now: float) -> None:
        session = Session(Target("tcp", self.domain, 0), self.tag, source="bridge")
        try:
            stream = self.dispatcher.open(session)
        except (OSError, ConnectionError) as exc:
            self._dial_failed(now, exc)
            return
        tunnel = BridgeTunnel(self, stream, next(self._ids))
        tunnel.mux.on_close(self._wake.set)
        if self.cluster is not None:
            tunnel.row = self.cluster.add_tunnel(ROLE_BRIDGE, tunnel)
            tunnel.mux.on_close(lambda: self.cluster.remove_tunnel(tunnel.row))
        self.tunnels.append(tunnel)
        gevent.spawn(tunnel.mux.run)
        log.info("bridge %s: tunnel %s opened", self.tag, tunnel.name)
        if self._wants_tunnel():
            self._wake.set()  # more to dial (minimum not reached yet)
