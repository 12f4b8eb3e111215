"""Bridge: keeps tunnels open to the portals and serves the sessions they send in them.

A tunnel is dialed as a TCP session to ``<domain>:0`` with the bridge's inbound tag, so
routing picks the outbound that reaches the portal. In it the bridge is the Mux.Cool server:
each new session is dispatched with the bridge's tag, except the portal's control session,
whose arrival means the portal registered the tunnel.

An outbound that lists several servers (VMess ``vnext``, VLESS, Shadowsocks) names several
portals: the bridge keeps a ``TunnelPool`` to each (V2Ray would pick one server per dial),
and the pools know nothing of each other, so a portal that is down slows no other. Each
pool's monitor, every 2 s, sends a KeepAlive frame on every open tunnel (drained ones too:
their sessions go on, and a revproxy portal closes a tunnel silent for 10 s), moves tunnels
told DRAIN aside, closes tunnels silent for 10 s (V2Ray waits for its 300 s idle timeout; the
socket's ``TCP_USER_TIMEOUT``, see reverse/tunnel.py, is often quicker), and dials a new one
while there are fewer than ``min_tunnels``, when the tunnels average more than 16 sessions
each (V2Ray's rule, counted over all workers' tunnels to that portal; the worker with the
fewest dials) or when one carries more than ``GROW_THROUGHPUT`` bytes/s (up to twice the
minimum), at most ``max_tunnels``; idle tunnels beyond the minimum are closed after
``IDLE_EXTRA_CLOSE`` s. A dial runs in a greenlet of its own, one at a time per pool. Failed
dials back off up to 2 s; why a tunnel cannot be established (dial errors, a portal that
closes or never registers it) is logged at warning, at most once per ``COMPLAINT_INTERVAL``
s per pool.
"""
from __future__ import annotations

import itertools
import time

import gevent
from gevent.event import Event

from revproxy.dispatcher import Dispatcher, NoRoute, ServerListOutbound
from revproxy.log import log
from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import NETWORK_UDP, Frame
from revproxy.mux.server import MuxServer
from revproxy.net.session import Session, Target
from revproxy.net.stream import TunnelStream
from revproxy.net.tasks import Tasks
from revproxy.reverse.control import CONTROL_DOMAIN, STATE_ACTIVE, ControlError, decode_control
from revproxy.reverse.directory import Role, TunnelDirectory
from revproxy.reverse.tunnel import PeerWatch, Tunnel, tunnel_stream

MONITOR_INTERVAL = 2.0
SILENCE_LIMIT = 10.0
SESSIONS_PER_TUNNEL = 16
GROW_THROUGHPUT = 50_000_000.0  # bytes/s on one tunnel that justify another
IDLE_EXTRA_CLOSE = 60.0
# A drained tunnel whose sessions have all ended is closed by the bridge this long after the
# DRAIN, if the portal has not closed it by then (a portal closes it after 16 s).
PORTAL_CLOSE_WAIT = 30.0
MAX_BACKOFF = 2.0
COMPLAINT_INTERVAL = 10.0  # at most one warning this often about failing tunnels


class BridgeTunnel(Tunnel):
    """One dialed tunnel: the mux server in it and the portal's last control state."""

    def __init__(self, pool: TunnelPool, stream: TunnelStream, tunnel_id: int) -> None:
        super().__init__(tunnel_id, pool.bridge.tag, pool.peer)
        self.pool = pool
        self.bridge = pool.bridge
        self.mux = MuxServer(stream, self._accept, self.name)
        PeerWatch.of(stream)  # the kernel closes it if the portal host vanishes
        self.registered = False  # the portal opened its control session
        self.drained_at = 0.0
        self.idle_since = time.monotonic()

    def silent_for(self, now: float) -> float:
        return now - self.mux.last_received

    def _accept(self, session: MuxSession, frame: Frame) -> None:
        if frame.address == CONTROL_DOMAIN:
            session.sink = self._on_control
            self.control = session
            if not self.registered:
                self.registered = True
                self.pool.tunnel_registered(self)
            return
        network = "udp" if frame.network == NETWORK_UDP else "tcp"
        target = Target(network, frame.address or "", frame.port or 0)
        self.bridge.tasks.spawn(self.bridge.dispatcher.handle,
                                Session(target, self.bridge.tag, source=self.name), session)

    def leave(self) -> None:
        """Ask the portal to send no new sessions here: end the control session (a revproxy
        portal then drains the tunnel; V2Ray's portal does not react)."""
        control, self.control = self.control, None
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
            self.pool.wake()  # dial the replacement now, not at the next 2 s tick


class _Complaints:
    """Warnings about one recurring trouble: the first at once, then at most one per
    ``interval`` s, saying how many were left out."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -interval
        self._left_out = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        if self._left_out:
            message += " (%d more like it since the last warning)"
            args += (self._left_out,)
        log.warning(message, *args)
        self._last = now
        self._left_out = 0


class Bridge:
    """One ``bridges`` entry: a ``TunnelPool`` per portal server that its outbound lists."""

    def __init__(self, tag: str, domain: str, dispatcher: Dispatcher,
                 min_tunnels: int = 1, max_tunnels: int | None = None,
                 directory: TunnelDirectory | None = None) -> None:
        self.tag = tag
        self.domain = domain
        self.dispatcher = dispatcher
        self.min_tunnels = max(1, min_tunnels)
        self.max_tunnels = max_tunnels
        self.directory = directory
        self.tasks = Tasks()  # where the portal's sessions are served
        self.pools: list[TunnelPool] = []
        self.dialing = True
        self.ids = itertools.count(1)  # tunnel ids, unique over the pools

    @property
    def tunnels(self) -> list[BridgeTunnel]:
        """In service, in every pool."""
        return [t for pool in self.pools for t in pool.tunnels]

    @property
    def open_tunnels(self) -> list[BridgeTunnel]:
        """In service and drained ones: every tunnel that may still carry sessions."""
        return [t for pool in self.pools for t in pool.open_tunnels]

    @property
    def sessions(self) -> int:
        """Sessions in progress, the control sessions left out."""
        return sum(t.visitor_sessions for t in self.open_tunnels)

    def portals(self) -> list[tuple[object | None, str]]:
        """(server, its "address:port") for each portal server of the outbound that routing
        picks for the tunnels; one (None, "portal") when it lists none."""
        session = Session(Target("tcp", self.domain, 0), self.tag, source="bridge")
        try:
            outbound = self.dispatcher.route(session)
        except NoRoute:
            return [(None, "portal")]  # each dial will say why
        if not isinstance(outbound, ServerListOutbound) or not outbound.servers:
            return [(None, "portal")]
        return [(server, _hostport(server.address, server.port))
                for server in outbound.servers]

    def start(self) -> None:
        if not self.pools:
            self.pools = [TunnelPool(self, server, peer) for server, peer in self.portals()]
        if len(self.pools) > 1:
            log.info("bridge %s: a pool of tunnels to each of %s", self.tag,
                     ", ".join(pool.peer for pool in self.pools))
        for pool in self.pools:
            pool.start()

    def wake(self) -> None:
        """Run the monitors now."""
        for pool in self.pools:
            pool.wake()

    def stop_dialing(self) -> None:
        """For a graceful stop: keep serving the running sessions, open no new tunnel."""
        self.dialing = False

    def leave(self) -> None:
        """For a graceful stop, once replacement tunnels exist: steer the portals away."""
        self.dialing = False
        for tunnel in self.open_tunnels:
            tunnel.leave()

    def stop(self) -> None:
        for pool in self.pools:
            pool.stop()

    def replaced(self) -> bool:
        """Whether running siblings hold an active tunnel to every portal this worker has
        tunnels to (a worker that stops waits for that)."""
        directory = self.directory
        return directory is None or all(
            not pool.tunnels or directory.siblings_hold(Role.BRIDGE, self.tag, pool.peer)
            for pool in self.pools)


class TunnelPool:
    """The tunnels of one bridge to one portal server, with their monitor (see the module
    docstring); pools to different portals know nothing of each other."""

    def __init__(self, bridge: Bridge, server: object | None, peer: str) -> None:
        self.bridge = bridge
        self.server = server  # what the dispatcher dials (None: the outbound's choice)
        self.peer = peer
        self.tunnels: list[BridgeTunnel] = []  # in service
        self.drained: list[BridgeTunnel] = []  # told DRAIN, finishing their sessions
        self._wake = Event()
        self._failures = 0  # attempts since a tunnel was last registered by the portal
        self._complaints = _Complaints(COMPLAINT_INTERVAL)
        self._next_dial = 0.0
        self._runner: gevent.Greenlet | None = None
        self._dialer: gevent.Greenlet | None = None

    @property
    def name(self) -> str:
        return self.bridge.tag if self.peer == "portal" else f"{self.bridge.tag} to {self.peer}"

    @property
    def open_tunnels(self) -> list[BridgeTunnel]:
        return self.tunnels + self.drained

    def start(self) -> None:
        self._runner = gevent.spawn(self._run)

    def wake(self) -> None:
        """Run the monitor now."""
        self._wake.set()

    def stop(self) -> None:
        for greenlet in (self._runner, self._dialer):
            if greenlet is not None:
                greenlet.kill(block=False)
        for tunnel in self.open_tunnels:
            tunnel.mux.close()

    def _run(self) -> None:
        while True:
            try:
                self.monitor()
            except Exception:
                log.exception("bridge %s: monitor failed", self.name)
            self._wake.wait(MONITOR_INTERVAL)
            self._wake.clear()

    @property
    def dialing_now(self) -> bool:
        return self._dialer is not None and not self._dialer.dead

    def monitor(self) -> None:
        now = time.monotonic()
        serving: list[BridgeTunnel] = []
        for tunnel in self.tunnels:
            if tunnel.closed:
                if tunnel.registered:
                    log.info("bridge %s: tunnel %s closed", self.name, tunnel.name)
                else:
                    self._dial_failed(now, tunnel, "the portal closed it without a word "
                                      f"({_silence_hint(self.server)})"
                                      if not tunnel.mux.bytes_received else
                                      "the portal closed it before registering it")
                continue
            if tunnel.draining:
                self.drained.append(tunnel)
            elif tunnel.worn:
                # Its cipher nears its nonce limit: steer a revproxy portal away (V2Ray's does
                # not listen) and dial a replacement; its sessions finish here.
                log.info("bridge %s: tunnel %s is worn, replacing it", self.name, tunnel.name)
                tunnel.leave()
                tunnel.draining = True
                tunnel.drained_at = now
                self.drained.append(tunnel)
            elif tunnel.silent_for(now) > SILENCE_LIMIT:
                if tunnel.registered:
                    log.warning("bridge %s: tunnel %s silent for %.0f s, redialling",
                                self.name, tunnel.name, tunnel.silent_for(now))
                else:
                    self._dial_failed(now, tunnel, "the portal accepted the connection but "
                                      f"has not registered it in {tunnel.silent_for(now):.0f} s")
                tunnel.mux.close()
            else:
                serving.append(tunnel)
        self.tunnels = serving
        for tunnel in self.drained:
            if not tunnel.closed and not tunnel.visitor_sessions and \
                    now - tunnel.drained_at > PORTAL_CLOSE_WAIT:
                tunnel.mux.close()
        self.drained = [t for t in self.drained if not t.closed]
        self._close_idle_extras(now)
        for tunnel in self.tunnels:
            tunnel.measure(now)
        for tunnel in self.open_tunnels:
            # Lets a revproxy portal tell a live bridge from a dead one, on drained tunnels
            # too (their sessions go on). A tunnel busy sending needs none, and the monitor
            # must not wait on one.
            if not tunnel.mux.congested:
                try:
                    tunnel.mux.send_keepalive()
                except ConnectionError:
                    pass
        if (self.bridge.dialing and not self.dialing_now and self._wants_tunnel()
                and now >= self._next_dial):
            # Dialing waits for the portal (up to the connect and handshake timeouts): in a
            # greenlet of its own, so that the monitor keeps its rounds meanwhile.
            self._dialer = gevent.spawn(self._dial)

    def tunnel_registered(self, tunnel: BridgeTunnel) -> None:
        """The portal opened its control session in ``tunnel``: the tunnel is up."""
        if self._failures:
            log.warning("bridge %s: tunnel %s registered by the portal after %d failed "
                        "attempts", self.name, tunnel.name, self._failures)
            self._failures = 0
        else:
            log.info("bridge %s: tunnel %s registered by the portal", self.name, tunnel.name)

    def _close_idle_extras(self, now: float) -> None:
        for tunnel in self.tunnels:
            if tunnel.visitor_sessions:
                tunnel.idle_since = now
        extras = len(self.tunnels) - self.bridge.min_tunnels
        for tunnel in sorted(self.tunnels, key=lambda t: t.idle_since):
            if extras <= 0 or now - tunnel.idle_since < IDLE_EXTRA_CLOSE:
                break
            log.info("bridge %s: closing idle extra tunnel %s", self.name, tunnel.name)
            tunnel.mux.close()
            extras -= 1

    def _wants_tunnel(self) -> bool:
        bridge = self.bridge
        count = len([t for t in self.tunnels if not t.closed])
        if bridge.max_tunnels is not None and count >= bridge.max_tunnels:
            return False
        if count < bridge.min_tunnels:
            return True
        sessions = sum(t.active_sessions for t in self.tunnels)
        tunnels, fewest = count, count
        if bridge.directory is not None:
            for sibling_tunnels, sibling_sessions in bridge.directory.bridge_pools(
                    bridge.tag, self.peer):
                tunnels += sibling_tunnels
                sessions += sibling_sessions
                fewest = min(fewest, sibling_tunnels)
        if sessions // tunnels > SESSIONS_PER_TUNNEL:
            # The portal spreads sessions evenly over tunnels: growing where tunnels are
            # fewest keeps the workers' shares of the load even too.
            return count <= fewest
        # Traffic alone is worth at most as many extra tunnels as the minimum again.
        return count < 2 * bridge.min_tunnels and any(t.throughput > GROW_THROUGHPUT
                                                       for t in self.tunnels)

    def _dial_failed(self, now: float, tunnel: BridgeTunnel | None, reason: object) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF, 0.25 * 2 ** self._failures)
        self._next_dial = now + delay
        what = f"tunnel {tunnel.name}" if tunnel is not None else "a tunnel"
        to = f"{self.bridge.domain}:0" + ("" if self.peer == "portal" else f" via {self.peer}")
        self._complaints.warn("bridge %s: cannot establish %s to the portal (%s): %s "
                              "(%d failed attempts, retrying)", self.bridge.tag, what, to,
                              reason, self._failures)
        gevent.spawn_later(delay, self._wake.set)

    def _dial(self) -> None:
        bridge = self.bridge
        session = Session(Target("tcp", bridge.domain, 0), bridge.tag, source="bridge")
        try:
            stream = bridge.dispatcher.open(session, self.server)
        except (OSError, ConnectionError) as exc:
            self._dial_failed(time.monotonic(), None, exc)
            return
        try:
            carrier = tunnel_stream(stream)
        except ConnectionError as exc:
            stream.close()
            self._dial_failed(time.monotonic(), None, exc)
            return
        if not bridge.dialing:  # stopping meanwhile
            stream.close()
            return
        tunnel = BridgeTunnel(self, carrier, next(bridge.ids))
        tunnel.mux.on_close(self._wake.set)
        if bridge.directory is not None:
            tunnel.listing = bridge.directory.list_tunnel(Role.BRIDGE, tunnel)
            tunnel.mux.on_close(tunnel.withdraw_listing)
        self.tunnels.append(tunnel)
        gevent.spawn(tunnel.mux.run)
        log.info("bridge %s: tunnel %s opened", self.name, tunnel.name)
        if self._wants_tunnel():
            self._wake.set()  # more to dial (minimum not reached yet)


def _silence_hint(server: object | None) -> str:
    """Why a portal may close a tunnel before it sends a byte: the ``refusal_hint`` of the
    protocol of ``server`` (one of the outbound's servers; None: it lists none)."""
    return getattr(server, "refusal_hint", "a wrong id or password, or no portal there?")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
