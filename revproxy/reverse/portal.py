"""Portal: registers the tunnels bridges dial in and serves visitors through them.

The portal is an outbound. A session whose destination is the portal's domain *is* a tunnel:
the portal becomes its Mux.Cool client, opens the UDP control session and sends a Control
message at once and every 2 s. Any other session is a visitor, carried as a new mux session
on the tunnel the picker chooses among this worker's tunnels and, through the tunnel
directory, its siblings'. A visitor bound for a sibling's tunnel is handed to that sibling
(one that is not a bare socket through a pair of sockets this worker relays to it, see
net/pairs.py), whose dispatcher brings it back here as a session carrying the chosen
``tunnel_id``. A tunnel
that has opened more than 256 sessions is drained.

Bridge hosts that vanish. Every tunnel carries something every 2 s (control messages, or
KeepAlive frames once drained), and its socket closes when that stays unacknowledged
(``reverse.tunnel.PeerWatch``): a tunnel of a vanished host, stock V2Ray bridges included,
closes within about 8 s; it turns *suspect* as soon as its retransmissions go unanswered and
is then picked only if nothing else is open. A session the tunnel cannot open is tried on
another tunnel (as V2Ray's dispatcher retries); a visitor whose tunnel died with its bridge
host silent since before the visitor's session was opened, and that had no answer yet, is
carried again on another tunnel (the bridge never received it); every other visitor of a
dead tunnel is reset, so that a cut download looks cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence

import gevent
from gevent.event import Event

from revproxy.log import log
from revproxy.mux.client import MuxClient
from revproxy.mux.frame import NETWORK_TCP, NETWORK_UDP
from revproxy.mux.splice import SocketSplice
from revproxy.net.pairs import Carrier
from revproxy.net.relay import relay
from revproxy.net.session import Session, Target
from revproxy.net.stream import SocketStream, Stream, TunnelStream, reset_on_close
from revproxy.net.udp import SourceStream
from revproxy.reverse.balance import pick_tunnel
from revproxy.reverse.control import CONTROL_DOMAIN, STATE_ACTIVE, STATE_DRAIN, encode_control
from revproxy.reverse.directory import Role, SiblingTunnel, TunnelDirectory
from revproxy.reverse.tunnel import PeerWatch, Tunnel, tunnel_stream
from revproxy.transport.proxyheader import encode as encode_proxy_header
from revproxy.transport.proxyheader import split_address

HEARTBEAT_INTERVAL = 2.0
DRAIN_AFTER_SESSIONS = 256
# A drained tunnel with no session left is closed this long after DRAIN was sent (V2Ray
# closes it at its 16 s check).
CLOSE_EMPTY_DRAINED_AFTER = 16.0
PEER_SILENCE_LIMIT = 10.0  # only for peers that send KeepAlive frames (revproxy bridges)
FIRST_PAYLOAD_WAIT = 0.1
TUNNEL_WAIT = 5.0  # how long a visitor may wait for a tunnel to (re)appear
PEER_CHECK_INTERVAL = 0.5  # how often a tunnel asks the kernel whether its peer answers
MAX_ATTEMPTS = 16  # tunnels (or siblings) tried for one visitor, as V2Ray's dispatcher
MAX_RESCUES = 2  # times one visitor is carried again after its tunnel vanished


class PortalTunnel(Tunnel):
    """One registered tunnel: a mux client plus its control session and heartbeat."""

    mux: MuxClient

    def __init__(self, stream: TunnelStream, tunnel_id: int, tag: str, peer: str,
                 watch: PeerWatch | None = None) -> None:
        super().__init__(tunnel_id, tag, peer)
        self.mux = MuxClient(stream, self.name)
        self.watch = watch  # the kernel's view of the bridge host, if over TCP
        self.drained_at = 0.0

    def serve(self) -> None:
        """Run the tunnel until it closes (blocks the calling greenlet)."""
        try:
            control = self.mux.open_session(NETWORK_UDP, CONTROL_DOMAIN, 0,
                                            encode_control(STATE_ACTIVE))
        except ConnectionError:
            self.mux.close()
            return
        control.sink = _discard
        control.on_end = self._bridge_leaves
        self.control = control
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
        control, self.control = self.control, None
        if control is not None:
            try:
                control.send(encode_control(STATE_DRAIN))
            except ConnectionError:
                pass
            control.close()

    def vanished_before(self, when: float) -> bool:
        """Whether this tunnel died with its peer silent since before ``when`` (monotonic):
        nothing sent after that reached the peer's application."""
        watch = self.watch
        return self.mux.closed and self.suspect and watch is not None and watch.last_ack < when

    def _bridge_leaves(self, _error: Exception | None) -> None:
        """A revproxy bridge that is going away ends the control session: use other tunnels."""
        if not self.draining and not self.mux.closed:
            log.info("portal: tunnel %s: its bridge is leaving", self.name)
            self.leaving = True
            self.drain()

    def _check_peer(self) -> None:
        """Mark the tunnel suspect while the bridge host leaves our data unacknowledged."""
        watch = self.watch
        unanswered = watch.unanswered() if watch is not None else None
        if unanswered is None or unanswered == self.suspect:
            return
        self.suspect = unanswered
        if unanswered:
            log.warning("portal: tunnel %s: %s acknowledges nothing: picked no more unless "
                        "nothing else is open", self.name, self.peer)
        else:
            log.info("portal: tunnel %s: %s answers again", self.name, self.peer)
        self.refresh_listing()

    def _heartbeat(self) -> None:
        ticks = 0
        every = max(1, round(HEARTBEAT_INTERVAL / PEER_CHECK_INTERVAL))
        while not self.mux.closed:
            gevent.sleep(PEER_CHECK_INTERVAL)
            self._check_peer()
            ticks += 1
            if ticks % every:
                continue
            now = time.monotonic()
            if (self.mux.peer_sends_keepalive
                    and now - self.mux.last_received > PEER_SILENCE_LIMIT):
                log.warning("portal: tunnel %s silent for %.0f s, closing", self.name,
                            now - self.mux.last_received)
                self.mux.close()
                return
            if self.draining:
                if (not self.visitor_sessions
                        and now - self.drained_at >= CLOSE_EMPTY_DRAINED_AFTER):
                    self.mux.close()
                    return
                # No control messages any more: a KeepAlive frame (which V2Ray discards)
                # keeps data in flight, so that a vanished bridge host is still noticed.
                if not self.mux.congested:
                    self.mux.send_keepalive()
                continue
            if self.mux.total_sessions > DRAIN_AFTER_SESSIONS:
                log.info("portal: draining tunnel %s after %d sessions", self.name,
                         self.mux.total_sessions)
                self.drain()
                continue
            if self.worn:
                log.info("portal: draining tunnel %s: its cipher nears its nonce limit",
                         self.name)
                self.drain()
                continue
            control = self.control
            if control is not None:
                try:
                    control.send(encode_control(STATE_ACTIVE))
                except ConnectionError:
                    return


def proxy_header(version: int, source: str, stream: Stream) -> bytes:
    """The PROXY header of a visitor from ``source`` ("ip:port", which a PROXY header the
    inbound accepted may have given) to the address it reached here (its socket's)."""
    local = None
    for layer in (stream, getattr(stream, "inner", None)):
        sock = getattr(layer, "sock", None)
        if sock is not None:
            try:
                host, port = sock.getsockname()[:2]
                local = (host, port)
            except OSError:
                pass
            break
    return encode_proxy_header(version, split_address(source), local)


def _discard(_payload: bytes) -> None:
    """The bridge has nothing to say on the control session."""


def _reset(stream: Stream) -> None:
    """A visitor that cannot be served is reset when closed, not closed in good order: it
    learns at once that it was not served."""
    if isinstance(stream, SocketStream):
        reset_on_close(stream.sock)


class PortalOutbound:
    def __init__(self, tag: str, domain: str, directory: TunnelDirectory | None = None,
                 proxy_protocol: int = 0) -> None:
        """``proxy_protocol`` 1 or 2: each visitor's bytes start with a PROXY header of
        that version naming the visitor (revproxy's ``proxyProtocol``)."""
        self.tag = tag
        self.domain = domain
        self.directory = directory
        self.proxy_protocol = proxy_protocol
        self.tunnels: list[PortalTunnel] = []
        self._tunnel_added = Event()
        self._last_id = 0  # tunnel ids are issued in order from 1
        self._turn = 0  # equally loaded bridge hosts take turns (pick_tunnel)

    def open(self, session: Session) -> Stream:
        raise ConnectionRefusedError(f"portal {self.tag}: cannot dial out")

    def handle(self, session: Session, stream: Stream) -> None:
        if session.tunnel_id is not None:
            self.serve_handed_over(session, stream)
        elif session.target.address == self.domain:
            self.serve_tunnel(session, stream)
        else:
            self.serve_visitor(session, stream)

    # -- tunnels
    def serve_tunnel(self, session: Session, stream: Stream) -> None:
        try:
            carrier = tunnel_stream(stream)
        except ConnectionError as exc:
            log.warning("portal %s: tunnel from %s refused: %s", self.tag, session.source, exc)
            session.ending.end()
            return
        self._last_id += 1
        tunnel = PortalTunnel(carrier, self._last_id, self.tag, session.source,
                              PeerWatch.of(stream))
        log.info("portal: tunnel %s from %s registered", tunnel.name, session.source)
        self.tunnels.append(tunnel)
        if self.directory is not None:
            tunnel.listing = self.directory.list_tunnel(Role.PORTAL, tunnel)
        added, self._tunnel_added = self._tunnel_added, Event()
        added.set()  # wakes visitors waiting for a tunnel
        try:
            tunnel.serve()
        finally:
            self.tunnels.remove(tunnel)
            tunnel.withdraw_listing()
            log.info("portal: tunnel %s closed", tunnel.name)
            session.ending.end()

    def drain_all(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.drain()
            tunnel.refresh_listing()

    # -- visitors
    def pick(self, wait: float = TUNNEL_WAIT, local_only: bool = False,
             exclude: frozenset[int] | set[int] = frozenset(),
             avoid: Collection[PortalTunnel] = ()) -> PortalTunnel | SiblingTunnel | None:
        """The tunnel for the next visitor, waiting up to ``wait`` s for one to appear; not
        one of the siblings in ``exclude`` (pids) nor one of this worker's in ``avoid``."""
        deadline = time.monotonic() + wait
        while True:
            local: Sequence[PortalTunnel | SiblingTunnel] = (
                [t for t in self.tunnels if t not in avoid] if avoid else self.tunnels)
            remote: Sequence[PortalTunnel | SiblingTunnel] = ()
            if self.directory is not None and not local_only:
                remote = self.directory.sibling_portal_tunnels(self.tag)
                if exclude:
                    remote = [t for t in remote if t.pid not in exclude]
            self._turn += 1
            tunnel = pick_tunnel(local, remote, self._turn)
            remaining = deadline - time.monotonic()
            if tunnel is not None or remaining <= 0:
                return tunnel
            # Sleep until a tunnel registers here, or poll the siblings' tunnels now and then.
            self._tunnel_added.wait(min(remaining, 0.25 if self.directory else remaining))

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
        self._place(session, stream, first)

    def _place(self, session: Session, stream: Stream, first: bytes | None,
               avoid: set[PortalTunnel] | None = None, local_only: bool = False,
               wait: float = TUNNEL_WAIT, rescues: int = 0) -> None:
        """Carry the visitor on the tunnel the picker chooses, or hand it to the sibling that
        owns that tunnel; a tunnel that cannot open the session (it closed meanwhile) is
        avoided and the next one tried, as V2Ray's dispatcher does; with none left the
        visitor is reset."""
        ending = session.ending
        deadline = time.monotonic() + wait
        avoid = set() if avoid is None else avoid
        gone: set[int] = set()
        carrier: Carrier | None = None
        for _ in range(MAX_ATTEMPTS):
            choice = self.pick(wait=max(0.0, deadline - time.monotonic()),
                               local_only=local_only, exclude=gone, avoid=avoid)
            if choice is None:
                break
            if isinstance(choice, SiblingTunnel):
                assert self.directory is not None
                session.first_payload = first or b""
                # A bare socket or a UDP source's own socket (net/udp.py) moves; any other
                # stream is carried to the sibling through a pair (net/pairs.py).
                try:
                    if isinstance(stream, SocketStream):
                        visitor = stream.sock
                    elif isinstance(stream, SourceStream):
                        visitor = stream.connected_socket()
                    else:
                        if carrier is None:
                            carrier = Carrier(datagrams=session.target.network == "udp")
                        visitor = carrier.far
                except OSError as exc:
                    log.warning("portal %s: cannot move %s to a sibling: %s", self.tag,
                                session.describe(), exc)
                    break
                if self.directory.hand_off(choice, session, visitor):
                    if carrier is not None:
                        carrier.relay(stream, session.policy, on_done=ending.end)
                        return
                    ending.end()  # closes our copy: the sibling received its own descriptor
                    return
                # That sibling went away or cannot take it: choose again among what is left.
                gone.add(choice.pid)
                continue
            if carrier is not None:  # no sibling took it: served here after all
                carrier.close()
                carrier = None
            if self._carry(choice, session, stream, first, rescues):
                return
            avoid.add(choice)
        if carrier is not None:
            carrier.close()
        if session.tunnel_id is not None:
            log.warning("portal %s: handed-over %s from %s found no tunnel", self.tag,
                        session.describe(), session.source)
        else:
            log.warning("portal %s: no tunnel available for %s", self.tag, session.describe())
        _reset(stream)
        ending.end()

    def handoff_refusal(self, tunnel_id: int, target: Target) -> str | None:
        """Why a visitor that a sibling handed over for tunnel ``tunnel_id`` must be refused,
        or None if it may be served."""
        if not 0 < tunnel_id <= self._last_id:
            return f"portal {self.tag} has no tunnel {tunnel_id}"
        if target.address in (self.domain, CONTROL_DOMAIN):
            return f"target {target.address} is not a visitor's"
        return None

    def serve_handed_over(self, session: Session, stream: Stream) -> None:
        """A sibling accepted this visitor for the tunnel ``session.tunnel_id`` here."""
        first = session.first_payload or None
        tunnel = next((t for t in self.tunnels if t.tunnel_id == session.tunnel_id
                       and not t.closed), None)
        if tunnel is not None:
            log.debug("portal %s: hand-over of %s for tunnel %s", self.tag, session.source,
                      session.tunnel_id)
            if self._carry(tunnel, session, stream, first):
                return
        # It closed meanwhile: any local tunnel will do (not another hand-off: no ping-pong).
        self._place(session, stream, first, avoid={tunnel} if tunnel else None,
                    local_only=True, wait=0.0)

    def _carry(self, tunnel: PortalTunnel, session: Session, stream: Stream,
               first: bytes | None, rescues: int = 0) -> bool:
        """Relay ``stream`` through a new session of ``tunnel`` (the session's ending closes
        the stream when done); False if the tunnel cannot open one."""
        target = session.target
        network = NETWORK_UDP if target.network == "udp" else NETWORK_TCP
        sent = first
        if self.proxy_protocol and network == NETWORK_TCP:
            sent = proxy_header(self.proxy_protocol, session.source, stream) + (first or b"")
        try:
            mux_session = tunnel.mux.open_session(network, target.address, target.port, sent)
        except ConnectionError as exc:
            log.info("portal %s: tunnel %s cannot carry %s: %s", self.tag, tunnel.name,
                     session.describe(), exc)
            return False
        if session.policy.buffer_size is not None:  # the visitor's level's bufferSize
            mux_session.buffer_size = session.policy.buffer_size
        opened = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):  # (describe() costs on every visitor)
            log.debug("portal %s: %s carried as session %d of tunnel %s", self.tag,
                      session.describe(), mux_session.id, tunnel.name)
        ending = session.ending
        tunnel.refresh_listing_soon()
        ending.add(tunnel.refresh_listing_soon)
        if not isinstance(stream, SocketStream):
            relay(stream, mux_session, session.policy, on_done=ending.end)
            return True
        stream.settimeout(None)
        mux_session.settimeout(None)

        def rescue() -> bool:
            """The session failed: if its tunnel died with the bridge host silent since
            before it was opened, and nothing moved but ``first``, the bridge never saw it:
            carry the visitor on another tunnel (called from the tunnel's reader: spawns)."""
            if (rescues >= MAX_RESCUES or mux_session.bytes_in
                    or mux_session.bytes_out != len(sent or b"")
                    or not tunnel.vanished_before(opened)):
                return False
            log.info("portal %s: %s was never answered by tunnel %s, whose bridge host "
                     "vanished: trying another", self.tag, session.describe(), tunnel.name)
            gevent.spawn(self._place, session, stream, first, {tunnel}, False, TUNNEL_WAIT,
                         rescues + 1)
            return True

        SocketSplice(stream, mux_session, session.policy, ending.end, rescue).start()
        return True
