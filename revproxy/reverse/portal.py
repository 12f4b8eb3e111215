"""Portal: registers the tunnels bridges dial in and serves visitors through them.

The portal is an outbound. A session whose destination is the portal's domain *is* a tunnel:
the portal becomes its Mux.Cool client, opens the UDP control session and sends a Control
message at once and every 2 s. Any other session is a visitor, carried as a new mux session
on the tunnel the picker chooses among this worker's tunnels and, through the cluster, its
siblings'; a visitor bound for a sibling's tunnel is handed to that sibling. A tunnel that has
opened more than 256 sessions is drained.
"""

from __future__ import annotations

import functools
import itertools
import time

import gevent
from gevent import socket
from gevent.event import Event

from revproxy.log import log
from revproxy.mux.client import MuxClient
from revproxy.mux.connection import MuxSession
from revproxy.mux.frame import NETWORK_TCP, NETWORK_UDP
from revproxy.net.relay import relay
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import SocketStream, Stream
from revproxy.reverse.balance import pick_tunnel
from revproxy.reverse.control import CONTROL_DOMAIN, STATE_ACTIVE, STATE_DRAIN, encode_control
from revproxy.reverse.tunnel import Tunnel
from revproxy.server.cluster import Cluster, RemoteTunnel
from revproxy.server.handoff import Handoff
from revproxy.server.statetable import ROLE_PORTAL

HEARTBEAT_INTERVAL = 2.0
DRAIN_AFTER_SESSIONS = 256
DRAINED_IDLE_CLOSE = 16.0  # V2Ray closes a drained tunnel once idle at its 16 s check
PEER_SILENCE_LIMIT = 10.0  # only for peers that send KeepAlive frames (revproxy bridges)
FIRST_PAYLOAD_WAIT = 0.1
TUNNEL_WAIT = 5.0  # how long a visitor may wait for a tunnel to (re)appear


class PortalTunnel(Tunnel):
    """One registered tunnel: a mux client plus its control session and heartbeat."""

    def __init__(self, stream: Stream, tunnel_id: int, tag: str, peer: str) -> None:
        super().__init__(tunnel_id, tag, peer)
        self.mux = MuxClient(stream, self.name)
        self.drained_at = 0.0
        self._control: MuxSession | None = None

    def serve(self) -> None:
        """Run the tunnel until it closes (blocks the calling greenlet)."""
        try:
            self._control = self.mux.open_session(NETWORK_UDP, CONTROL_DOMAIN, 0,
                                                  encode_control(STATE_ACTIVE))
        except ConnectionError:
            self.mux.close()
            return
        self._control.sink = _discard
        self._control.on_end = self._bridge_retires
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

    def _bridge_retires(self, _error: Exception | None) -> None:
        """A revproxy bridge that is going away ends the control session: use other tunnels."""
        if not self.draining and not self.mux.closed:
            log.info("portal: tunnel %s: the bridge retires it", self.name)
            self.leaving = True
            self.drain()

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
    def __init__(self, tag: str, domain: str, cluster: Cluster | None = None) -> None:
        self.tag = tag
        self.domain = domain
        self.cluster = cluster
        self.tunnels: list[PortalTunnel] = []
        self.handed_in = 0  # visitors a sibling passed here, in progress (for graceful stop)
        self._tunnel_added = Event()
        self._ids = itertools.count(1)

    def open(self, session: Session) -> Stream:
        raise ConnectionRefusedError(f"portal {self.tag}: cannot dial out")

    def handle(self, session: Session, stream: Stream) -> None:
        if session.target.address == self.domain:
            self.serve_tunnel(session, stream)
        else:
            self.serve_visitor(session, stream)

    # -- tunnels
    def serve_tunnel(self, session: Session, stream: Stream) -> None:
        tunnel = PortalTunnel(stream, next(self._ids), self.tag, session.source)
        log.info("portal: tunnel %s from %s registered", tunnel.name, session.source)
        self.tunnels.append(tunnel)
        if self.cluster is not None:
            tunnel.row = self.cluster.add_tunnel(ROLE_PORTAL, tunnel)
        added, self._tunnel_added = self._tunnel_added, Event()
        added.set()  # wakes visitors waiting for a tunnel
        try:
            tunnel.serve()
        finally:
            self.tunnels.remove(tunnel)
            if self.cluster is not None:
                self.cluster.remove_tunnel(tunnel.row)
            log.info("portal: tunnel %s closed", tunnel.name)
            session.ending.end()

    def drain_all(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.drain()
            self._publish(tunnel)

    def _publish(self, tunnel: PortalTunnel) -> None:
        if self.cluster is not None:
            self.cluster.publish(tunnel.row)

    # -- visitors
    def pick(self, wait: float = TUNNEL_WAIT, local_only: bool = False,
             exclude: frozenset[int] | set[int] = frozenset()
             ) -> PortalTunnel | RemoteTunnel | None:
        deadline = time.monotonic() + wait
        while True:
            remote: list[RemoteTunnel] = []
            if self.cluster is not None and not local_only:
                remote = [t for t in self.cluster.remote_portal_tunnels(self.tag)
                          if t.pid not in exclude]
            tunnel = pick_tunnel(self.tunnels, remote)
            remaining = deadline - time.monotonic()
            if tunnel is not None or remaining <= 0:
                return tunnel
            # Sleep until a tunnel registers here, or poll the siblings' tunnels now and then.
            self._tunnel_added.wait(min(remaining, 0.25 if self.cluster else remaining))

    def serve_visitor(self, session: Session, stream: Stream) -> None:
        ending = session.ending
        first: bytes | None = None
        stream.settimeout(FIRST_PAYLOAD_WAIT)
        try:
            first = stream.recv()
            if not first:
                ending.end()
                return
        except TimeoutError:
            first = None
        except OSError:
            ending.end()
            return
        can_hand_off = isinstance(stream, SocketStream)
        deadline = time.monotonic() + TUNNEL_WAIT
        choice = self.pick(local_only=not can_hand_off)
        gone: set[int] = set()
        while isinstance(choice, RemoteTunnel):
            assert self.cluster is not None and isinstance(stream, SocketStream)
            meta = Handoff(choice.tunnel_id, self.tag, session.target.network,
                           session.target.address, session.target.port, session.source,
                           first or b"")
            if self.cluster.hand_off(choice, meta, stream.sock):
                ending.end()  # closes our copy: the sibling received its own descriptor
                return
            # That sibling just went away: choose again among what is left.
            gone.add(choice.pid)
            choice = self.pick(wait=max(0.0, deadline - time.monotonic()), exclude=gone)
        if choice is None:
            log.warning("portal %s: no tunnel available for %s", self.tag, session.describe())
            ending.end()
            return
        self._carry(choice, session.target, stream, first, session.describe(), ending)

    def serve_handoff(self, meta: Handoff, sock: socket.socket) -> None:
        """A sibling accepted this visitor for one of our tunnels."""
        tunnel = next((t for t in self.tunnels if t.tunnel_id == meta.tunnel_id
                       and not t.closed), None)
        if tunnel is None:  # it closed meanwhile: any local tunnel will do
            tunnel = self.pick(wait=0, local_only=True)
        stream = SocketStream(sock)
        target = Target(meta.network, meta.address, meta.port)
        if tunnel is None:
            log.warning("portal %s: handed-off %s found no tunnel", self.tag, meta.source)
            stream.close()
            return
        log.debug("portal %s: hand-off of %s for tunnel %d", self.tag, meta.source,
                  meta.tunnel_id)
        self.handed_in += 1
        ending = Ending()
        ending.add(self._handoff_ended)
        ending.add(stream.close)
        self._carry(tunnel, target, stream, meta.first_payload or None, meta.source, ending)

    def _handoff_ended(self) -> None:
        self.handed_in -= 1

    def _carry(self, tunnel: PortalTunnel, target: Target, stream: Stream,
               first: bytes | None, what: str, ending: Ending) -> None:
        """Relay ``stream`` through a new session of ``tunnel``; ends ``ending`` (which closes
        the stream) when done."""
        network = NETWORK_UDP if target.network == "udp" else NETWORK_TCP
        try:
            mux_session = tunnel.mux.open_session(network, target.address, target.port, first)
        except ConnectionError as exc:
            log.warning("portal %s: tunnel %s refused %s: %s", self.tag, tunnel.name, what, exc)
            ending.end()
            return
        log.debug("portal %s: %s carried as session %d of tunnel %s", self.tag, what,
                  mux_session.id, tunnel.name)
        self._publish(tunnel)
        ending.add(functools.partial(self._publish, tunnel))
        relay(stream, mux_session, on_done=ending.end)
