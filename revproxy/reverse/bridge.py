"""Bridge: keeps tunnels open to the portal and serves the sessions the portal sends in them.

A tunnel is dialed as a TCP session to ``<domain>:0`` with the bridge's inbound tag, so
routing picks the outbound that reaches the portal. In it the bridge is the Mux.Cool server:
each new session is dispatched with the bridge's tag, except the portal's control session.
Every 2 s the monitor drops tunnels that were told DRAIN, closed, or stayed silent for 10 s
(V2Ray waits for its 300 s idle timeout), and dials a new one when there is none or when the
tunnels average more than 16 sessions each, backing off while dials fail.
"""

from __future__ import annotations

import time

import gevent
from gevent.event import Event

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import NETWORK_UDP, Frame
from revproxy.mux.server import MuxServer
from revproxy.reverse.control import CONTROL_DOMAIN, STATE_ACTIVE, ControlError, decode_control
from revproxy.routing import Target
from revproxy.session import Session

MONITOR_INTERVAL = 2.0
SILENCE_LIMIT = 10.0
SESSIONS_PER_TUNNEL = 16
DRAINED_IDLE_CLOSE = 30.0
MAX_BACKOFF = 2.0


class BridgeTunnel:
    """One dialed tunnel: the mux server in it and the portal's last control state."""

    def __init__(self, bridge: Bridge, stream, name: str) -> None:
        self.bridge = bridge
        self.name = name
        self.mux = MuxServer(stream, self._accept, name)
        self.draining = False
        self.drained_at = 0.0

    @property
    def closed(self) -> bool:
        return self.mux.closed

    @property
    def active_sessions(self) -> int:
        return self.mux.active_sessions

    def silent_for(self, now: float) -> float:
        return now - self.mux.last_received

    def _accept(self, session: MuxSession, frame: Frame) -> None:
        if frame.address == CONTROL_DOMAIN:
            session.sink = self._on_control
            return
        network = "udp" if frame.network == NETWORK_UDP else "tcp"
        target = Target(network, frame.address or "", frame.port or 0)
        gevent.spawn(self.bridge.dispatcher.handle,
                     Session(target, self.bridge.tag, source=self.name), session)

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


class Bridge:
    def __init__(self, tag: str, domain: str, dispatcher: Dispatcher,
                 min_tunnels: int = 1, max_tunnels: int | None = None) -> None:
        self.tag = tag
        self.domain = domain
        self.dispatcher = dispatcher
        self.min_tunnels = max(1, min_tunnels)
        self.max_tunnels = max_tunnels
        self.tunnels: list[BridgeTunnel] = []  # in service
        self.retired: list[BridgeTunnel] = []  # drained, finishing their sessions
        self._wake = Event()
        self._failures = 0
        self._next_dial = 0.0
        self._counter = 0
        self._runner: gevent.Greenlet | None = None

    def start(self) -> None:
        self._runner = gevent.spawn(self._run)

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
        self.retired = [t for t in self.retired if not t.closed]
        for tunnel in self.retired:
            if not tunnel.active_sessions and now - tunnel.drained_at > DRAINED_IDLE_CLOSE:
                tunnel.mux.close()
        for tunnel in serving:
            try:
                tunnel.mux.send_keepalive()  # lets a revproxy portal notice a dead bridge
            except ConnectionError:
                pass
        if self._wants_tunnel() and now >= self._next_dial:
            self._dial(now)

    def _wants_tunnel(self) -> bool:
        count = len(self.tunnels)
        if self.max_tunnels is not None and count >= self.max_tunnels:
            return False
        if count < self.min_tunnels:
            return True
        sessions = sum(t.active_sessions for t in self.tunnels)
        return sessions // count > SESSIONS_PER_TUNNEL

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
        self._counter += 1
        tunnel = BridgeTunnel(self, stream, f"{self.tag}#{self._counter}")
        tunnel.mux.on_close(self._wake.set)
        self.tunnels.append(tunnel)
        gevent.spawn(tunnel.mux.run)
        log.info("bridge %s: tunnel %s opened", self.tag, tunnel.name)
