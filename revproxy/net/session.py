"""What the dispatcher routes: one proxied connection (``Session``): its destination
(``Target``), where it came from, and what to do once it is over (``Ending``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from revproxy.log import log
from revproxy.policy import DEFAULT as DEFAULT_POLICY
from revproxy.policy import SessionPolicy


@dataclass(frozen=True, slots=True)
class Target:
    """Where a session goes: network "tcp"/"udp", a domain or IP text, a port."""

    network: str
    address: str
    port: int


class Ending:
    """Callbacks that run once, last added first, when a connection is over.

    A connection may outlive the greenlet that set it up (a relay between a socket and a mux
    session runs in hub callbacks), so the work to do at its end (counters, closing the
    accepted socket) is registered here instead of in ``finally`` blocks. Callbacks added
    after the end run at once.
    """

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], object]] | None = []

    @property
    def ended(self) -> bool:
        return self._callbacks is None

    def add(self, callback: Callable[[], object]) -> None:
        if self._callbacks is None:
            _run(callback)
        else:
            self._callbacks.append(callback)

    def end(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        while callbacks:
            _run(callbacks.pop())


def _run(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # the others must still run; this may be in the hub
        log.exception("error at the end of a connection in %r", callback)


@dataclass(slots=True)
class Session:
    """One proxied connection on its way to an outbound.

    Most sessions are routed by the dispatcher. One that arrives already routed (a visitor a
    sibling worker accepted and handed over to this one) carries the ``outbound_tag`` routing
    chose there, the reverse ``tunnel_id`` the portal picked for it and the ``first_payload``
    the sibling read from it before the hand-off.
    """

    target: Target
    inbound_tag: str | None
    source: str = ""
    email: str | None = None
    # The user's policy level when the inbound knows it (VMess/VLESS users), else None: the
    # inbound's own level applies. The dispatcher sets ``policy`` from it.
    level: int | None = None
    policy: SessionPolicy = DEFAULT_POLICY
    # What routing's "protocol" and "attrs" rules see: the sniffed protocol ("http1",
    # "tls", "bittorrent") and an HTTP proxy request's attributes (":method", ":path", the
    # header fields named in lower case).
    protocol: str = ""
    attributes: Mapping[str, str] | None = None
    outbound_tag: str | None = None
    tunnel_id: int | None = None
    first_payload: bytes = b""
    # The connection the outbound opened for it, once open: its bytes are the outbound's
    # traffic (net/traffic.py).
    upstream: object = None
    ending: Ending = field(default_factory=Ending, compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.target.network}:{_hostport(self.target.address, self.target.port)}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
