"""SOCKS5 UDP relay: the datagrams of a UDP ASSOCIATE, as V2Ray 4.34's socks server relays
them (proxy/socks/server.go handleUDPPayload): each datagram from a client carries its
destination in a SOCKS5 UDP header (``codec.decode_udp``); the client's datagrams for one
destination form one session with a "udp" target, and what comes back is sent to the client
with that destination's header (``codec.encode_udp``). Fragments and bad headers are
dropped. The client's own session (net/udp.py) ends when idle, and its destinations with it.

The Shadowsocks inbound relays its UDP the same way, with its own packet codec (``decode``,
``encode``: a packet's destination is inside its sealed payload).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.session import Session, Target
from revproxy.net.udp import QUEUE_BYTES, SourceStream
from revproxy.proxy.socks.codec import decode_udp, encode_udp
from revproxy.proxy.wire import ProtocolError

MAX_DESTINATIONS = 64  # sessions at once per client; datagrams to more are dropped


class _Destination:
    """One destination of a client, as a datagram stream (payloads without the header)."""

    __slots__ = ("client", "key", "closed", "_items", "_queued", "_readable", "_timeout",
                 "_relay")

    def __init__(self, relay: SocksUDPRelay, client: SourceStream, key: tuple[str, int]) -> None:
        self.client = client
        self.key = key
        self.closed = False
        self._items: deque[bytes] = deque()
        self._queued = 0
        self._readable = Event()
        self._timeout: float | None = None
        self._relay = relay

    def deliver(self, payload: bytes) -> None:
        if self.closed or not payload or self._queued + len(payload) > QUEUE_BYTES:
            return  # (dropped, as UDP may)
        self._items.append(payload)
        self._queued += len(payload)
        self._readable.set()

    def recv(self) -> bytes:
        while not self._items:
            if self.closed:
                raise ConnectionAbortedError("socks udp: session ended")
            self._readable.clear()
            if not self._readable.wait(self._timeout):
                raise TimeoutError("socks udp: no datagram")
        data = self._items.popleft()
        self._queued -= len(data)
        return data

    def send(self, data: bytes | memoryview) -> None:
        self.client.send(self._relay.encode(self.key[0], self.key[1], data))

    def close_write(self) -> None:
        """Datagrams have no half-close."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._items.clear()
            self._readable.set()
            self._relay.forget(self)

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds


class SocksUDPRelay:
    """Serves one client's datagrams (``handle_datagrams``, a ``PacketSessions`` handler).
    ``decode``: a datagram's (address, port, payload), raising ``ProtocolError`` (or
    ``ValueError``) for a bad one; ``encode``: an answer from (address, port)."""

    def __init__(self, tag: str | None, dispatcher: Dispatcher, *,
                 decode: Callable[[bytes], tuple[str, int, bytes]] = decode_udp,
                 encode: Callable[[str, int, bytes | memoryview], bytes] = encode_udp,
                 email: str | None = None) -> None:
        self.tag = tag
        self.dispatcher = dispatcher
        self.decode = decode
        self.encode = encode
        self.email = email
        self._destinations: dict[int, dict[tuple[str, int], _Destination]] = {}

    def forget(self, destination: _Destination) -> None:
        table = self._destinations.get(id(destination.client))
        if table is not None and table.get(destination.key) is destination:
            del table[destination.key]

    def handle_datagrams(self, client: SourceStream) -> None:
        host, port = client.source[:2]
        source = f"{host}:{port}"
        table: dict[tuple[str, int], _Destination] = {}
        self._destinations[id(client)] = table
        client.settimeout(None)  # the client's session ends when idle (net/udp.py)
        try:
            while True:
                try:
                    address, dport, payload = self.decode(client.recv())
                except (ProtocolError, ValueError) as exc:
                    log.debug("%s: %s: UDP datagram dropped: %s", self.tag or "udp", source,
                              exc)
                    continue
                destination = table.get((address, dport))
                if destination is None:
                    if len(table) >= MAX_DESTINATIONS:
                        continue
                    destination = table[(address, dport)] = _Destination(
                        self, client, (address, dport))
                    session = Session(Target("udp", address, dport), self.tag, source=source,
                                      email=self.email)
                    gevent.spawn(self.dispatcher.handle, session, destination)
                destination.deliver(payload)
        except (OSError, TimeoutError):
            pass  # the client's session ended
        finally:
            del self._destinations[id(client)]
            for destination in list(table.values()):
                destination.close()
            client.close()
