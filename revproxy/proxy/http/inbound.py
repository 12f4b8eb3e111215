"""HTTP proxy inbound, as V2Ray 4.34 serves it (see ``codec`` for the rules).

CONNECT: answered "200 Connection established", then the client's stream is dispatched like
any inbound's. A plain request: a session of its own per request, dispatched with one end of
an in-memory pipe; this side writes the rewritten request into the other end and reads the
response back from it, so any outbound serves it (a portal's tunnel to a bridge included).
The client's connection carries another request only when it asked with
``Proxy-Connection: keep-alive`` and the response had a known length.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import gevent

from revproxy.dispatcher import Dispatcher
from revproxy.log import log
from revproxy.net.relay import IDLE_TIMEOUT
from revproxy.net.session import Ending, Session, Target
from revproxy.net.stream import Stream, TunnelStream
from revproxy.proxy.http.codec import (
    AUTH_REQUIRED,
    BAD_REQUEST,
    CONNECT_OK,
    SERVICE_UNAVAILABLE,
    Body,
    HeadReader,
    HTTPError,
    Request,
    basic_credentials,
    destination,
    forward_request,
    forward_response,
    parse_request,
    parse_response,
    request_body,
    response_body,
    without_hop_by_hop,
)
from revproxy.proxy.streams import HANDSHAKE_TIMEOUT, IdleLimit, PipeEnd, pipe, prefixed
from revproxy.proxy.wire import ProtocolError
from revproxy.transport import PLAIN, Transport, wrap


class HTTPInbound:
    """``accounts``: user -> password (Basic auth required when any); ``timeout`` (s, 0 = the
    default) limits a tunnel's idleness as V2Ray's ``timeout`` does at user level 0.
    ``level`` (V2Ray's ``userLevel``) is its sessions' policy level and ``handshake`` (s)
    that level's ``handshake``: the time a client has to send each request's head."""

    def __init__(self, tag: str | None, dispatcher: Dispatcher, *,
                 accounts: Mapping[str, str] | None = None, allow_transparent: bool = False,
                 timeout: float = 0, level: int = 0, handshake: float = HANDSHAKE_TIMEOUT,
                 transport: Transport = PLAIN) -> None:
        self.tag = tag
        self.level = level
        self.handshake = handshake
        self.dispatcher = dispatcher
        self.accounts = dict(accounts or {})
        self.allow_transparent = allow_transparent
        self.idle = timeout if timeout and timeout != IDLE_TIMEOUT else None
        self.transport = transport

    def handle_connection(self, sock: socket.socket, address: tuple, ending: Ending) -> None:
        try:
            stream, peer = wrap(self.transport, sock, address)
        except OSError as exc:
            log.info("http: %s:%s: transport handshake failed: %s", address[0], address[1],
                     exc)
            ending.end()
            return
        source = f"{peer[0]}:{peer[1]}"
        try:
            served = self._serve(stream, source, ending)
        except (OSError, ProtocolError) as exc:
            log.info("http: %s: %s", source, exc)
            served = False
        if not served:
            stream.close()
            ending.end()

    def _serve(self, stream: TunnelStream, source: str, ending: Ending) -> bool:
        """Whether the connection was handed to the dispatcher (a CONNECT tunnel)."""
        leftover = b""
        while True:
            received = _read_head(stream, HeadReader(), leftover, self.handshake)
            if received is None:
                return False
            head, leftover = received
            request = parse_request(head)
            user = None
            if self.accounts:
                credentials = basic_credentials(request)
                if credentials is None or self.accounts.get(credentials[0]) != credentials[1]:
                    stream.send(AUTH_REQUIRED)
                    return False
                user = credentials[0]
            address, port = destination(request)
            target = Target("tcp", address, port)
            if request.connect:
                stream.send(CONNECT_OK)
                session = Session(target, self.tag, source=source, email=user,
                                  level=self.level, ending=ending)
                client = (IdleLimit(stream, leftover, self.idle) if self.idle
                          else prefixed(stream, leftover))
                self.dispatcher.handle(session, client)
                return True
            if not self.allow_transparent and not request.authority:
                stream.send(BAD_REQUEST)  # RFC 2068: a proxy wants an absolute URI
                return False
            # What routing's "protocol" and "attrs" rules see, as V2Ray sets them.
            session = Session(target, self.tag, source=source, email=user, level=self.level,
                              protocol="http/1.1", attributes=request_attributes(request))
            after = self._exchange(stream, request, session, leftover)
            if after is None or not request.proxy_keep_alive:
                return False
            leftover = after

    def _exchange(self, client: TunnelStream, request: Request, session: Session,
                  early: bytes) -> bytes | None:
        """Carry one plain request and its response; the client's bytes after the request
        when the connection may go on, else None."""
        near, far = pipe()
        gevent.spawn(self.dispatcher.handle, session, far)
        upload = gevent.spawn(_send_request, client, near, request, early)
        try:
            keep = _relay_response(client, near, request.method)
            if not upload.ready():
                keep = False  # the response came before the whole request: give up the rest
            rest = upload.get() if keep else None
        finally:
            upload.kill(block=False)
            near.close()
        return rest if keep else None


def _read_head(stream: Stream, reader: HeadReader, early: bytes,
               timeout: float | None) -> tuple[bytes, bytes] | None:
    """A head and the bytes after it; None if the stream ends first."""
    if early:
        found = reader.feed(early)
        if found is not None:
            return found
    with gevent.Timeout(timeout, TimeoutError("timed out waiting for an HTTP head")):
        while True:
            data = stream.recv()
            if not data:
                return None
            found = reader.feed(data)
            if found is not None:
                return found


def _send_request(client: Stream, upstream: PipeEnd, request: Request,
                  early: bytes) -> bytes | None:
    """Write the rewritten request and its body upstream; give the client's bytes after the
    body, or None on failure."""
    try:
        body = request_body(request)
        upstream.send(forward_request(request))
        rest = _pass_body(body, early, upstream)
        while not body.done:
            data = client.recv()
            if not data:
                return None
            rest = _pass_body(body, data, upstream)
        return rest
    except (OSError, HTTPError) as exc:
        log.debug("http: request not carried: %s", exc)
        upstream.close()
        return None


def _pass_body(body: Body, data: bytes, to: Stream) -> bytes:
    part, rest = body.feed(data)
    if part:
        to.send(part)
    return rest


def _relay_response(client: Stream, upstream: PipeEnd, method: str) -> bool:
    """Read the response from upstream and pass it to the client, rewritten; whether the
    client's connection may carry another request."""
    early = b""
    while True:
        try:
            received = _read_head(upstream, HeadReader(), early, None)
            if received is None:
                raise HTTPError("no response")
            head, early = received
            response = parse_response(head)
            body = response_body(response, method)
        except (OSError, HTTPError) as exc:
            log.info("http: failed to read the response: %s", exc)
            client.send(SERVICE_UNAVAILABLE)
            return False
        if 100 <= response.status < 200:  # an interim answer: the real one follows
            client.send(head)
            continue
        break
    out, keep = forward_response(response, body)
    part, _ = body.feed(early)
    client.send(out + part)
    while not body.done:
        data = upstream.recv()
        if not data:
            return False  # ended early, or delimited by the close
        part, _ = body.feed(data)
        client.send(part)
    return keep


def request_attributes(request: Request) -> dict[str, str]:
    """A plain request's attributes for routing's ``attrs`` rules, as V2Ray 4.34 sets them:
    ":method" (upper case), ":path" (without the query), and each header field but Host left
    after the hop-by-hop ones, by its name in lower case (the first value; "user-agent" is ""
    when absent, since V2Ray sets it so)."""
    path = request.uri.split("?", 1)[0] if request.authority else request.target.split("?", 1)[0]
    found = {":method": request.method.upper(), ":path": path}
    for name, value in without_hop_by_hop(request.head.headers):
        if name.lower() != "host":  # Go's request keeps Host apart from the header fields
            found.setdefault(name.lower(), value)
    found.setdefault("user-agent", "")
    return found
