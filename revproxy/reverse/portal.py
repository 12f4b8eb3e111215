"""Portal: registers the tunnels bridges dial in and serves visitors through them.

The portal is an outbound. A session whose destination is the portal's domain *is* a tunnel:
the portal becomes its Mux.Cool client, opens the UDP control session and sends a Control
message at once and every 2 s. Any other session is a visitor, carried as a new mux session
on the tunnel the picker chooses. A tunnel that has opened more than 256 sessions is drained.
"""

from __future__ import annotations

import time

import gevent
from gevent.event import Event

from revproxy.log import log
from revproxy.mux.client import MuxClient
from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import NETWORK_TCP, NETWORK_UDP
from revproxy.relay import relay
from revproxy.reverse.balance import pick_tunnel
from revproxy.reverse.control import CONTROL_DOMAIN, STATE_ACTIVE, STATE_DRAIN, encode_control
from revproxy.session import Session
from revproxy.stream import Stream

HEARTBEAT_INTERVAL = 2.0
DRAIN_AFTER_SESSIONS = 256
DRAINED_IDLE_CLOSE = 16.0  # V2Ray closes a drained tunnel once idle at its 16 s check
PEER_SILENCE_LIMIT = 10.0  # only for peers that send KeepAlive frames (revproxy bridges)
FIRST_PAYLOAD_WAIT = 0.1
TUNNEL_WAIT = 5.0  # how long a visitor may wait for a tunnel to (re)appear


class PortalTunnel:
    """One registered tunnel: a mux client plus its control session and heartbeat."""

    def __init__(self, stream: Stream, name: str) -> None:
        self.mux = MuxClient(stream, name)
        self.name = name
        self.draining = False
        self.drained_at = 0.0
        self._control: MuxSession | None = None

    @property
    def closed(self) -> bool:
        return self.mux.closed

    @property
    def active_sessions(self) -> int:
        return self.mux.active_sessions

    def serve(self) -> None:
        """Run the tunnel until it closes (blocks the calling greenlet)."""
        try:
            self._control = self.mux.open_session(NETWORK_UDP, CONTROL_DOMAIN, 0,
                                                  encode_control(STATE_ACTIVE))
        except ConnectionError:
            self.mux.close()
            return
        self._control.sink = _discard
        heartbeat = gevent.spawn(self._heartbeat)
        try:
            self.mux.run()
        finally:
            heartbeat.kill(block=False)

    def drain(self) -> None:
        """Tell the bridge to stop using this tunnel; running sessions go on."""
        if self.draining:
            return
        self.draining = True
        self.drained_at = time.monotonic()
        control, self._control = self._control, None
        if control is not None:
            try:
                control.send(encode_control(STATE_DRAIN))
            except ConnectionError:
                pass
            control.close()

    def _heartbeat(self) -> None:
        while not self.mux.closed:
            gevent.sleep(HEARTBEAT_INTERVAL)
            now = time.monotonic()
            if (self.mux.peer_sends_keepalive
                    and now - self.mux.last_received > PEER_SILENCE_LIMIT):
                log.warning("portal: tunnel %s silent for %.0f s, closing", self.name,
                            now - self.mux.last_received)
                self.mux.close()
                return
            if self.draining:
                if not self.mux.active_sessions and now - self.drained_at >= DRAINED_IDLE_CLOSE:
                    self.mux.close()
                    return
                continue
            if self.mux.total_sessions > DRAIN_AFTER_SESSIONS:
                log.info("portal: draining tunnel %s after %d sessions", self.name,
                         self.mux.total_sessions)
                self.drain()
                continue
            control = self._control
            if control is not None:
                try:
                    control.send(encode_control(STATE_ACTIVE))
                except ConnectionError:
                    return


def _discard(_payload: bytes) -> None:
    """The bridge has nothing to say on the control session."""


class PortalOutbound:
    def __init__(self, tag: str, domain: str) -> None:
        self.tag = tag
        self.domain = domain
        self.tunnels: list[PortalTunnel] = []
        self._tunnel_added = Event()
        self._counter = 0

    def open(self, session: Session) -> Stream:
        raise ConnectionRefusedError(f"portal {self.tag}: cannot dial out")

    def handle(self, session: Session, stream: Stream) -> None:
        if session.target.address == self.domain:
            self.serve_tunnel(session, stream)
        else:
            self.serve_visitor(session, stream)

    def serve_tunnel(self, session: Session, stream: Stream) -> None:
        self._counter += 1
        tunnel = PortalTunnel(stream, f"{self.tag}#{self._counter}({session.source})")
        log.info("portal: tunnel %s registered", tunnel.name)
        self.tunnels.append(tunnel)
        added, self._tunnel_added = self._tunnel_added, Event()
        added.set()  # wakes visitors waiting for a tunnel
        try:
            tunnel.serve()
        finally:
            self.tunnels.remove(tunnel)
            log.info("portal: tunnel %s closed", tunnel.name)

    def pick(self, wait: float = TUNNEL_WAIT) -> PortalTunnel | None:
        deadline = time.monotonic() + wait
        while True:
            tunnel = pick_tunnel(self.tunnels)
            remaining = deadline - time.monotonic()
            if tunnel is not None or remaining <= 0:
                return tunnel
            self._tunnel_added.wait(remaining)  # replaced by a fresh Event on each set

    def serve_visitor(self, session: Session, stream: Stream) -> None:
        first: bytes | None = None
        stream.settimeout(FIRST_PAYLOAD_WAIT)
        try:
            first = stream.recv()
            if not first:
                stream.close()
                return
        except TimeoutError:
            first = None
        except OSError:
            stream.close()
            return
        tunnel = self.pick()
        if tunnel is None:
            log.warning("portal %s: no tunnel available for %s", self.tag, session.describe())
            stream.close()
            return
        network = NETWORK_UDP if session.target.network == "udp" else NETWORK_TCP
        try:
            mux_session = tunnel.mux.open_session(network, session.target.address,
                                                  session.target.port, first)
        except ConnectionError as exc:
            log.warning("portal %s: tunnel %s refused %s: %s", self.tag, tunnel.name,
                        session.describe(), exc)
            stream.close()
            return
        relay(stream, mux_session)

    def drain_all(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.drain()
