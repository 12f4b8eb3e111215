"""The DNS client of V2Ray's ``dns`` section (app/dns in V2Ray 4.34): what freedom outbounds
with ``domainStrategy`` "UseIP*" and routing's IP strategies resolve names with.

``DNSClient.lookup(domain)`` looks in ``hosts`` first (a name may stand for addresses or for
another name), then asks the name servers: those whose ``domains`` match the name first,
then the others in order, each for at most ``QUERY_TIMEOUT``. As in V2Ray, the next server
is asked only when one timed out or gave no address within its ``expectIPs``; any other
answer (no such name, no address) is final. No servers means the system's resolver.

The servers: "localhost" (the system's resolver, through gevent's cooperative resolver);
a plain DNS server over UDP (an IP or a name, ``port`` 53 by default); DNS over HTTPS
("https://host/path", RFC 8484: one POST of an ``application/dns-message`` over HTTP/1.1
and TLS; "https+local://" the same). Messages are made and read by dnspython; the queries
travel as V2Ray's do, as connections routed like any other with the section's ``tag`` as
their inbound tag (``open_stream``, the dispatcher's), except "https+local" ones, which
are dialed directly. Answers are cached for their TTL (at most ``MAX_TTL``).

Every wait has a deadline; the cache and the messages read are bounded.
"""

from __future__ import annotations

import ipaddress
import random
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult

from revproxy.log import log
from revproxy.net.dial import connect
from revproxy.net.session import Target
from revproxy.net.stream import SocketStream, Stream, TunnelStream
from revproxy.routing import DomainMatcher, IPMatcher
from revproxy.transport.http1 import HeadError, HeadReader, parse_head
from revproxy.transport.tls import TLSStream

if TYPE_CHECKING:
    # dnspython is imported when a DNS server is first asked (it costs a worker some MiB at
    # start: its importlib.metadata brings zipfile, csv, email), not by every worker.
    import dns.edns
    import dns.message

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
OpenStream = Callable[[Target], Stream]

QUERY_TIMEOUT = 4.0  # s per server, as V2Ray's
MAX_TTL = 600  # s an answer is kept at most (V2Ray keeps every answer this long)
CACHE_ENTRIES = 4096
MAX_MESSAGE = 65535  # bytes of a DoH answer read at most
HEAD_LIMIT = 16 * 1024
HOSTS_DEPTH = 5  # a hosts name standing for a name standing for …: V2Ray follows 5

# V2Ray sends the names these match to "localhost" first (app/dns/config.go).
LOCAL_DOMAINS = ("regexp:^[^.]+$", "domain:local", "domain:localdomain", "domain:localhost",
                 "domain:lan", "domain:home.arpa", "domain:example", "domain:invalid",
                 "domain:test")


class DNSError(Exception):
    """No address: the name does not exist, has none, or no server answered."""


class _Final(DNSError):
    """An answer that ends the lookup (V2Ray asks no other server after it)."""


class _NoExpected(DNSError):
    """Addresses came, none within the server's ``expectIPs``: the next server is asked."""


class NameServer(Protocol):
    name: str

    def query(self, domain: str, v4: bool, v6: bool, deadline: float) -> list[IPAddress]:
        """The addresses of ``domain``; raises _Final, TimeoutError or OSError."""
        ...


# -- hosts

class Hosts:
    """``hosts``: conditions ("full:x", "domain:x", …, geosite lists expanded) and what they
    stand for: an IP, or another name looked up in turn. A name matching several entries
    gets the addresses of all."""

    __slots__ = ("_entries",)

    def __init__(self, hosts: Iterable[tuple[str, str]]) -> None:
        grouped: dict[str, list[str]] = {}
        for pattern, address in hosts:  # one matcher per address (a geosite list is many)
            grouped.setdefault(address, []).append(pattern)
        self._entries = [(DomainMatcher(patterns), _host_value(address))
                         for address, patterns in grouped.items()]

    def lookup(self, domain: str, v4: bool, v6: bool, depth: int = HOSTS_DEPTH
               ) -> list[IPAddress] | str | None:
        """The addresses ``domain`` stands for (of the families asked, maybe none), the
        name it stands for, or None if no entry matches."""
        found: list[IPAddress | str] = []
        for matcher, value in self._entries:
            if matcher.match(domain):
                found += value
        if not found:
            return None
        if len(found) == 1 and isinstance(found[0], str):
            name = found[0]
            if depth > 0:
                deeper = self.lookup(name, v4, v6, depth - 1)
                if deeper is not None:
                    return deeper
            return name
        return [ip for ip in found if not isinstance(ip, str)
                and (ip.version == 4 and v4 or ip.version == 6 and v6)]


def _host_value(address: str) -> list[IPAddress | str]:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return [address]
    if ip == ipaddress.IPv4Address("127.0.0.1"):
        return [ip, ipaddress.IPv6Address("::1")]  # V2Ray's localhost addition
    return [ip]


# -- the cache

class _Cache:
    """Answers by (domain, record type) until their TTL ends; the oldest go first past
    ``CACHE_ENTRIES``."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, int], tuple[float, list[IPAddress]]] = \
            OrderedDict()

    def get(self, key: tuple[str, int]) -> list[IPAddress] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key]
            return None
        return item[1]

    def put(self, key: tuple[str, int], ips: list[IPAddress], ttl: int) -> None:
        if ttl <= 0 or not ips:  # a TTL of 0 means "do not keep" (V2Ray keeps 600 s)
            return
        self._items[key] = (time.monotonic() + min(ttl, MAX_TTL), ips)
        self._items.move_to_end(key)
        while len(self._items) > CACHE_ENTRIES:
            self._items.popitem(last=False)


# -- DNS messages (dnspython)

def _queries(domain: str, v4: bool, v6: bool, client_ip: str | None
             ) -> list[dns.message.QueryMessage]:
    import dns.edns
    import dns.message
    import dns.rdatatype

    options: list[dns.edns.Option] = []
    if client_ip is not None:
        ip = ipaddress.ip_address(client_ip)
        # V2Ray sends a /24 (IPv4) or /96 (IPv6) of the client's address.
        options.append(dns.edns.ECSOption(client_ip, 24 if ip.version == 4 else 96))
    messages = []
    for wanted, rdtype in ((v4, dns.rdatatype.A), (v6, dns.rdatatype.AAAA)):
        if wanted:
            query = dns.message.make_query(domain + ".", rdtype)
            if options:
                query.use_edns(0, payload=1350, options=options)
            query.id = random.randrange(65536)
            messages.append(query)
    return messages


Answer = tuple[list[IPAddress], int, str]
"""The addresses a response gives, their smallest TTL, and its error ("" for none)."""


def _answer(query: dns.message.QueryMessage, wire: bytes) -> Answer | None:
    """What a response to ``query`` says; None if it answers another query."""
    import dns.exception
    import dns.message
    import dns.rcode

    try:
        response = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        log.info("dns: an invalid answer: %s", exc)
        return None
    if response.id != query.id or not query.is_response(response):
        return None
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        return [], 0, f"the server answered {dns.rcode.to_text(rcode)}"
    rdtype = query.question[0].rdtype
    ips: list[IPAddress] = []
    ttl = MAX_TTL
    for rrset in response.answer:
        if rrset.rdtype != rdtype:
            continue  # CNAMEs on the way
        ttl = min(ttl, rrset.ttl)
        for record in rrset:
            ips.append(ipaddress.ip_address(record.address))
    return ips, ttl, ""


class _CachingServer:
    """What UDP and DoH servers share: the cache, one query at a time for the same name
    (those asking meanwhile wait for its answer), and asking for A and AAAA at once."""

    name = ""
    client_ip: str | None = None

    def __init__(self) -> None:
        self.cache = _Cache()
        self._asking: dict[tuple[str, bool, bool], AsyncResult] = {}

    def query(self, domain: str, v4: bool, v6: bool, deadline: float) -> list[IPAddress]:
        import dns.rdatatype

        wanted = [rdtype for flag, rdtype in ((v4, dns.rdatatype.A), (v6, dns.rdatatype.AAAA))
                  if flag]
        cached = [self.cache.get((domain, rdtype)) for rdtype in wanted]
        if all(ips is not None for ips in cached):
            return [ip for ips in cached if ips is not None for ip in ips]
        key = (domain, v4, v6)
        asking = self._asking.get(key)
        if asking is not None:
            try:
                found: list[IPAddress] = asking.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except gevent.Timeout:
                raise TimeoutError("no answer in time") from None
            return found
        asking = self._asking[key] = AsyncResult()
        try:
            ips = self._ask(domain, v4, v6, deadline)
        except BaseException as exc:
            asking.set_exception(exc)
            raise
        finally:
            del self._asking[key]
        asking.set(ips)
        return ips

    def _ask(self, domain: str, v4: bool, v6: bool, deadline: float) -> list[IPAddress]:
        queries = _queries(domain, v4, v6, self.client_ip)
        answers = self.exchange(queries, deadline)
        ips: list[IPAddress] = []
        errors = []
        for query, (found, ttl, error) in zip(queries, answers, strict=True):
            self.cache.put((domain, query.question[0].rdtype), found, ttl)
            ips += found
            if error:
                errors.append(error)
        if not ips:  # (V2Ray too gives the addresses of one type when the other failed)
            raise _Final(errors[-1] if errors else "no address")
        return ips

    def exchange(self, queries: list[dns.message.QueryMessage], deadline: float
                 ) -> list[Answer]:
        raise NotImplementedError


class UDPServer(_CachingServer):
    """A plain DNS server over UDP, reached through ``open_stream``."""

    def __init__(self, address: str, port: int, client_ip: str | None,
                 open_stream: OpenStream) -> None:
        super().__init__()
        self.target = Target("udp", address, port or 53)
        self.client_ip = client_ip
        self.open_stream = open_stream
        self.name = f"UDP:{address}:{port or 53}"

    def exchange(self, queries: list[dns.message.QueryMessage], deadline: float
                 ) -> list[Answer]:
        with gevent.Timeout(max(0.0, deadline - time.monotonic()), TimeoutError):
            stream = self.open_stream(self.target)
            try:
                for query in queries:
                    stream.send(query.to_wire())
                answers: dict[int, Answer] = {}
                while len(answers) < len(queries):
                    wire = stream.recv()
                    if not wire:
                        raise OSError("the server's stream ended")
                    for index, query in enumerate(queries):
                        if index not in answers:
                            found = _answer(query, wire)
                            if found is not None:
                                answers[index] = found
                                break
            finally:
                stream.close()
        return [answers[index] for index in range(len(queries))]


class DoHServer(_CachingServer):
    """DNS over HTTPS (RFC 8484), one POST per query over HTTP/1.1; ``open_stream`` None
    dials directly ("https+local")."""

    def __init__(self, url: str, client_ip: str | None, open_stream: OpenStream | None,
                 context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "https+local") or not parts.hostname:
            raise ValueError(f"not a DNS-over-HTTPS URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.client_ip = client_ip
        self.open_stream = open_stream
        self.context = context if context is not None else ssl.create_default_context()
        self.context.set_alpn_protocols(["http/1.1"])
        local = "L" if open_stream is None else ""
        self.name = f"DOH{local}//{self.host}"

    def exchange(self, queries: list[dns.message.QueryMessage], deadline: float
                 ) -> list[Answer]:
        # The queries go out side by side, each on its own connection, as V2Ray's do.
        jobs = [gevent.spawn(self._post, query, deadline) for query in queries]
        try:
            gevent.joinall(jobs, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for job in jobs:
                job.kill(block=False)
        answers = []
        for query, job in zip(queries, jobs, strict=True):
            if not job.ready():
                raise TimeoutError("no answer in time")
            if job.exception is not None:
                raise job.exception
            wire = job.value
            found = _answer(query, wire) if wire is not None else None
            if found is None:
                raise OSError("the DoH server answered another question")
            answers.append(found)
        return answers

    def _post(self, query: dns.message.QueryMessage, deadline: float) -> bytes:
        with gevent.Timeout(max(0.0, deadline - time.monotonic()), TimeoutError):
            if self.open_stream is None:
                inner: Stream = SocketStream(connect(self.host, self.port))
            else:
                inner = self.open_stream(Target("tcp", self.host, self.port))
            tls = TLSStream(_tunnel(inner), self.context, server_hostname=self.host)
            try:
                tls.handshake()
                body = query.to_wire()
                host = f"[{self.host}]" if ":" in self.host else self.host
                tls.send(f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\n"
                         "Accept: application/dns-message\r\n"
                         "Content-Type: application/dns-message\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode() + body)
                return _read_response(tls)
            finally:
                tls.close()


def _read_response(stream: Stream) -> bytes:
    """The body of a 200 answer (by Content-Length, chunked, or up to the end)."""
    reader = HeadReader(HEAD_LIMIT)
    while True:
        data = stream.recv()
        if not data:
            raise OSError("the DoH server closed before answering")
        try:
            found = reader.feed(data)
        except HeadError as exc:
            raise OSError(f"DoH: {exc}") from None
        if found is not None:
            break
    raw, rest = found
    first, _, fields = raw.partition(b"\r\n")
    parts = first.split(b" ")
    status = parts[1].decode("latin-1") if len(parts) > 1 else ""
    try:  # (a status line without a reason is fine here)
        head = parse_head(b"HTTP/1.1 200 OK\r\n" + fields)
    except HeadError as exc:
        raise OSError(f"DoH: {exc}") from None
    if status != "200":
        raise OSError(f"DOH server returned code {status}")
    length = head.get("content-length")
    chunked = head.has_token("transfer-encoding", "chunked")
    body = rest
    while True:
        if length is not None and length.isdigit() and len(body) >= int(length):
            return body[:int(length)]
        if chunked:
            decoded = _dechunk(body)
            if decoded is not None:
                return decoded
        if len(body) > MAX_MESSAGE + HEAD_LIMIT:
            raise OSError("DoH: the answer is too long")
        data = stream.recv()
        if not data:
            if length is None and not chunked:
                return body
            raise OSError("DoH: the answer was cut short")
        body += data


def _dechunk(body: bytes) -> bytes | None:
    """A complete chunked body decoded, None if more is needed."""
    out = b""
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return None
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            raise OSError("DoH: a bad chunk") from None
        if size == 0:
            return out
        start = end + 2
        if len(body) < start + size + 2:
            return None
        out += body[start:start + size]
        pos = start + size + 2


class _Tunneled:
    """A stream that lacks ``send_nowait``/``flush`` (what TLS needs) given them."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def recv(self) -> bytes:
        return self.stream.recv()

    def send(self, data: bytes | memoryview) -> None:
        self.stream.send(data)

    def send_nowait(self, data: bytes) -> bool:
        self.stream.send(data)
        return True

    def flush(self) -> None:
        """Nothing is kept back."""

    def close_write(self) -> None:
        self.stream.close_write()

    def close(self) -> None:
        self.stream.close()

    def settimeout(self, seconds: float | None) -> None:
        self.stream.settimeout(seconds)


def _tunnel(stream: Stream) -> TunnelStream:
    if hasattr(stream, "send_nowait") and hasattr(stream, "flush"):
        return stream  # type: ignore[return-value]
    return _Tunneled(stream)


class LocalServer:
    """The system's resolver ("localhost"), through gevent's cooperative resolver."""

    name = "localhost"

    def query(self, domain: str, v4: bool, v6: bool, deadline: float) -> list[IPAddress]:
        family = gsocket.AF_UNSPEC if v4 and v6 else gsocket.AF_INET if v4 else gsocket.AF_INET6
        try:
            with gevent.Timeout(max(0.0, deadline - time.monotonic()), TimeoutError):
                infos = gsocket.getaddrinfo(domain, None, family, gsocket.SOCK_STREAM)
        except gsocket.gaierror as exc:
            raise _Final(str(exc)) from None
        ips: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if ip not in ips and (ip.version == 4 and v4 or ip.version == 6 and v6):
                ips.append(ip)
        if not ips:
            raise _Final("no address")
        return ips


@dataclass(frozen=True)
class Server:
    """A name server with what V2Ray's client adds: the names it is preferred for and the
    networks its answers must be in."""

    server: NameServer
    domains: DomainMatcher | None = None
    expect: IPMatcher | None = None


class DNSClient:
    """Resolves names as V2Ray's DNS does (see the module docstring)."""

    def __init__(self, servers: Sequence[Server], hosts: Hosts | None = None,
                 query_timeout: float = QUERY_TIMEOUT) -> None:
        self.servers = tuple(servers) or (Server(LocalServer(), DomainMatcher(LOCAL_DOMAINS)),)
        self.hosts = hosts
        self.query_timeout = query_timeout
        # DoH servers' own names are resolved by the system: asking them about themselves
        # would wait on itself.
        self.bootstrap = frozenset(
            entry.server.host for entry in self.servers if isinstance(entry.server, DoHServer))

    def lookup(self, domain: str, v4: bool = True, v6: bool = True) -> list[IPAddress]:
        """The addresses of ``domain`` (of the families asked); raises DNSError."""
        domain = domain.removesuffix(".")
        if not domain:
            raise DNSError("empty domain name")
        if self.hosts is not None:
            found = self.hosts.lookup(domain, v4, v6)
            if isinstance(found, list):
                if not found:
                    raise DNSError(f"{domain}: no address of the family asked in hosts")
                return found
            if found is not None:
                log.debug("dns: domain replaced: %s -> %s", domain, found)
                domain = found
        if domain in self.bootstrap:
            return LocalServer().query(domain, v4, v6, time.monotonic() + self.query_timeout)
        problems = []
        for entry in self._order(domain):
            server = entry.server
            try:
                ips = server.query(domain, v4, v6, time.monotonic() + self.query_timeout)
                if entry.expect is not None:
                    ips = [ip for ip in ips if entry.expect.match(ip)]
                    if not ips:
                        raise _NoExpected("expectIPs not match")
                return ips
            except _NoExpected as exc:
                problems.append(f"{server.name}: {exc}")
            except _Final as exc:
                raise DNSError(f"{domain} at {server.name}: {exc}") from None
            except (TimeoutError, gevent.Timeout) as exc:
                problems.append(f"{server.name}: timed out")
                log.info("dns: failed to lookup ip for domain %s at server %s: %s", domain,
                         server.name, exc or "timed out")
            except (OSError, ValueError) as exc:
                # V2Ray's server would time out (it logs and drops what it cannot read)
                problems.append(f"{server.name}: {exc}")
                log.info("dns: failed to lookup ip for domain %s at server %s: %s", domain,
                         server.name, exc)
        raise DNSError(f"no address for {domain} ({'; '.join(problems)})")

    def _order(self, domain: str) -> list[Server]:
        preferred = [entry for entry in self.servers
                     if entry.domains is not None and entry.domains.match(domain)]
        return preferred + [entry for entry in self.servers if entry not in preferred]


def server_for(address: str, port: int, client_ip: str | None, open_stream: OpenStream
               ) -> NameServer:
    """The name server an address of ``dns.servers`` names (the loader checked it)."""
    if address == "localhost":
        return LocalServer()
    if address.startswith("https+local://"):
        return DoHServer(address, client_ip, None)
    if address.startswith("https://"):
        return DoHServer(address, client_ip, open_stream)
    return UDPServer(address.strip("[]"), port, client_ip, open_stream)
