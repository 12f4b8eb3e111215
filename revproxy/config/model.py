"""The validated configuration: frozen dataclasses mirroring V2Ray's JSON schema plus
revproxy's own ``server`` section."""

from __future__ import annotations

from dataclasses import dataclass, field

from revproxy.policy import Policy, SessionPolicy, buffer_bytes


@dataclass(frozen=True)
class LogConfig:
    """``access``/``error``: a file path, "none" (disabled), or None (standard error)."""

    level: str = "warning"
    access: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class VMessUserConfig:
    """``id`` is the canonical lowercase UUID text."""

    id: str
    alter_id: int = 0
    security: str = "auto"
    email: str | None = None
    level: int = 0


@dataclass(frozen=True)
class DokodemoSettings:
    address: str | None
    port: int | None
    network: tuple[str, ...] = ("tcp",)
    follow_redirect: bool = False
    timeout: int = 300
    user_level: int = 0


@dataclass(frozen=True)
class VMessInboundSettings:
    clients: tuple[VMessUserConfig, ...]
    disable_insecure_encryption: bool = False


Headers = tuple[tuple[str, tuple[str, ...]], ...]
"""HTTP header fields in order, each with the values one is picked from per connection."""


@dataclass(frozen=True)
class HTTPRequestConfig:
    """``tcpSettings.header.request``: what the client sends first (one of ``paths``)."""

    version: str
    method: str
    paths: tuple[str, ...]
    headers: Headers


@dataclass(frozen=True)
class HTTPResponseConfig:
    """``tcpSettings.header.response``: what the server answers first."""

    version: str
    status: str
    reason: str
    headers: Headers


@dataclass(frozen=True)
class HTTPHeaderConfig:
    """``tcpSettings.header`` of type "http": V2Ray's HTTP disguise of a TCP stream."""

    request: HTTPRequestConfig
    response: HTTPResponseConfig


@dataclass(frozen=True)
class WebSocketConfig:
    """``wsSettings``: ``path`` starts with "/" and may carry a query string."""

    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CertificateConfig:
    """One of ``tlsSettings.certificates``: a file path (absolute) or inline PEM text for the
    certificate and its key; ``usage`` "encipherment" (serve it) or "verify" (trust it)."""

    certificate_file: str | None = None
    certificate: str | None = None
    key_file: str | None = None
    key: str | None = None
    usage: str = "encipherment"


@dataclass(frozen=True)
class TLSConfig:
    """``tlsSettings``; an empty ``alpn`` means V2Ray's default for the transport."""

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    allow_insecure: bool = False
    disable_system_root: bool = False
    session_resumption: bool = False
    certificates: tuple[CertificateConfig, ...] = ()


@dataclass(frozen=True)
class SockoptConfig:
    """``sockopt``: ``mark`` SO_MARK (0: none), ``tcp_fast_open`` None leaves the system's
    default, ``tproxy`` "off", "redirect" or "tproxy"."""

    mark: int = 0
    tcp_fast_open: bool | None = None
    tproxy: str = "off"


@dataclass(frozen=True)
class StreamConfig:
    """``streamSettings``: ``network`` "tcp" (``http_header`` set for the HTTP disguise) or
    "ws" (``websocket`` set); ``tls`` set for ``security: "tls"``; ``accept_proxy_protocol``
    from the selected network's settings."""

    network: str = "tcp"
    http_header: HTTPHeaderConfig | None = None
    websocket: WebSocketConfig | None = None
    accept_proxy_protocol: bool = False
    tls: TLSConfig | None = None
    sockopt: SockoptConfig = SockoptConfig()


@dataclass(frozen=True)
class VLESSUserConfig:
    """A VLESS client or user: ``id`` is the canonical UUID text; ``flow`` is kept as given
    (V2Ray 4.34 sends and reads no flow on the wire)."""

    id: str
    email: str | None = None
    level: int = 0
    flow: str = ""


@dataclass(frozen=True)
class VLESSFallbackConfig:
    """One of ``fallbacks``: ``network`` "tcp" (``dest`` "host:port") or "unix" (``dest`` a
    socket path, "@name" abstract); ``xver`` the PROXY protocol version (0: none)."""

    dest: str
    network: str = "tcp"
    alpn: str = ""
    path: str = ""
    xver: int = 0


@dataclass(frozen=True)
class VLESSInboundSettings:
    clients: tuple[VLESSUserConfig, ...]
    fallbacks: tuple[VLESSFallbackConfig, ...] = ()


@dataclass(frozen=True)
class VLESSServerConfig:
    address: str
    port: int
    users: tuple[VLESSUserConfig, ...]


@dataclass(frozen=True)
class VLESSOutboundSettings:
    servers: tuple[VLESSServerConfig, ...]


@dataclass(frozen=True)
class ShadowsocksInboundSettings:
    """``method`` is the canonical name of an AEAD method or "none"; ``network`` the
    networks served (UDP is parsed; only TCP is served so far)."""

    method: str
    password: str
    email: str | None = None
    level: int = 0
    udp: bool = False
    network: tuple[str, ...] = ("tcp",)


@dataclass(frozen=True)
class ShadowsocksServerConfig:
    address: str
    port: int
    method: str
    password: str
    email: str | None = None
    level: int = 0


@dataclass(frozen=True)
class ShadowsocksOutboundSettings:
    servers: tuple[ShadowsocksServerConfig, ...]


@dataclass(frozen=True)
class ProxyAccountConfig:
    """A SOCKS or HTTP proxy account: ``user`` and ``password`` (V2Ray's "user"/"pass")."""

    user: str
    password: str


@dataclass(frozen=True)
class SocksInboundSettings:
    """``auth`` "noauth" or "password"; ``ip`` the address a UDP ASSOCIATE answer names;
    ``timeout`` (s, 0: the default) the idle limit, applied at user level 0 as in V2Ray."""

    auth: str = "noauth"
    accounts: tuple[ProxyAccountConfig, ...] = ()
    udp: bool = False
    ip: str | None = None
    timeout: int = 0
    user_level: int = 0


@dataclass(frozen=True)
class HTTPInboundSettings:
    """``timeout`` (s, 0: the default) the idle limit, applied at user level 0 as in V2Ray."""

    timeout: int = 0
    accounts: tuple[ProxyAccountConfig, ...] = ()
    allow_transparent: bool = False
    user_level: int = 0


@dataclass(frozen=True)
class ProxyServerConfig:
    """A SOCKS or HTTP proxy server an outbound goes through."""

    address: str
    port: int
    users: tuple[ProxyAccountConfig, ...] = ()


@dataclass(frozen=True)
class SocksOutboundSettings:
    servers: tuple[ProxyServerConfig, ...]


@dataclass(frozen=True)
class HTTPOutboundSettings:
    servers: tuple[ProxyServerConfig, ...]


InboundSettings = (DokodemoSettings | VMessInboundSettings | VLESSInboundSettings
                   | ShadowsocksInboundSettings | SocksInboundSettings | HTTPInboundSettings)


@dataclass(frozen=True)
class InboundConfig:
    tag: str | None
    listen: str
    port: int
    protocol: str
    settings: InboundSettings
    stream: StreamConfig = StreamConfig()
    # None: the inbound does not sniff; else the protocols ("http", "tls") whose sniffed
    # domain replaces the destination (V2Ray's sniffing.destOverride).
    sniffing: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FreedomSettings:
    """``redirect`` is (host, port); host "" keeps the session's address, port 0 its port;
    ``domain_strategy`` "AsIs" (the system resolves), "UseIP", "UseIPv4" or "UseIPv6"
    (the ``dns`` section resolves); ``user_level`` its policy level."""

    redirect: tuple[str, int] | None = None
    domain_strategy: str = "AsIs"
    user_level: int = 0


@dataclass(frozen=True)
class VMessServerConfig:
    address: str
    port: int
    users: tuple[VMessUserConfig, ...]


@dataclass(frozen=True)
class VMessOutboundSettings:
    servers: tuple[VMessServerConfig, ...]


@dataclass(frozen=True)
class BlackholeSettings:
    """``response``: "none" (just close) or "http" (answer 403 first)."""

    response: str = "none"


@dataclass(frozen=True)
class MuxConfig:
    enabled: bool = False
    concurrency: int = 8


@dataclass(frozen=True)
class OutboundConfig:
    tag: str | None
    protocol: str
    settings: (FreedomSettings | VMessOutboundSettings | BlackholeSettings
               | VLESSOutboundSettings | ShadowsocksOutboundSettings | SocksOutboundSettings
               | HTTPOutboundSettings)
    mux: MuxConfig = MuxConfig()
    stream: StreamConfig = StreamConfig()


@dataclass(frozen=True)
class RoutingRule:
    """A "field" rule; ``domains``/``ips``/``source_ips`` keep V2Ray's text (prefixes
    included; ``geosite:``/``geoip:``/``ext:`` lists are expanded into what they hold),
    ports are inclusive ranges; ``attrs`` the expression text; ``balancer_tag`` counts when
    ``outbound_tag`` is empty. Every non-empty condition must hold."""

    outbound_tag: str
    inbound_tags: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    networks: tuple[str, ...] = ()
    source_ips: tuple[str, ...] = ()
    source_ports: tuple[tuple[int, int], ...] = ()
    users: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    attrs: str = ""
    balancer_tag: str = ""


@dataclass(frozen=True)
class RoutingConfig:
    """``routing`` besides its rules: ``strategy`` ("AsIs", "IPIfNonMatch", "IPOnDemand")
    and the ``balancers`` (tag, selectors)."""

    strategy: str = "AsIs"
    balancers: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class BridgeConfig:
    tag: str
    domain: str
    min_tunnels: int | None = None
    max_tunnels: int | None = None


@dataclass(frozen=True)
class PortalConfig:
    """``proxy_protocol``: revproxy's ``proxyProtocol``, the PROXY header version (1 or 2;
    0: none) the portal writes in front of each visitor's bytes."""

    tag: str
    domain: str
    proxy_protocol: int = 0


@dataclass(frozen=True)
class ReverseConfig:
    bridges: tuple[BridgeConfig, ...] = ()
    portals: tuple[PortalConfig, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    """revproxy's own settings; ``workers`` None means one per CPU ("auto"); ``metrics`` the
    (host, port) where Prometheus metrics are served, None for none."""

    workers: int | None = None
    pid_file: str | None = None
    state_file: str | None = None
    user: str | None = None
    group: str | None = None
    graceful_timeout: float = 30.0
    metrics: tuple[str, int] | None = None


@dataclass(frozen=True)
class ApiConfig:
    """``api``: routing sends the API's connections to ``tag``; ``services`` as given."""

    tag: str
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class LevelPolicy:
    """``policy.levels.N``: the user statistics flags, and the timeouts (s) and
    ``buffer_size`` (KiB, as V2Ray reads it: 0 none, below 0 unlimited) given, None when
    left out (revproxy's default then applies)."""

    stats_user_uplink: bool = False
    stats_user_downlink: bool = False
    handshake: int | None = None
    conn_idle: int | None = None
    uplink_only: int | None = None
    downlink_only: int | None = None
    buffer_size: int | None = None

    def session_policy(self) -> SessionPolicy:
        """The limits this level gives a session: what it sets, else revproxy's defaults."""
        default = SessionPolicy()
        return SessionPolicy(
            handshake=default.handshake if self.handshake is None else float(self.handshake),
            conn_idle=default.conn_idle if self.conn_idle is None else float(self.conn_idle),
            uplink_only=(default.uplink_only if self.uplink_only is None
                         else float(self.uplink_only)),
            downlink_only=(default.downlink_only if self.downlink_only is None
                           else float(self.downlink_only)),
            buffer_size=None if self.buffer_size is None else buffer_bytes(self.buffer_size))


@dataclass(frozen=True)
class SystemPolicy:
    """``policy.system``: the inbound and outbound statistics flags."""

    stats_inbound_uplink: bool = False
    stats_inbound_downlink: bool = False
    stats_outbound_uplink: bool = False
    stats_outbound_downlink: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    """``policy``, as far as it is applied; a level not listed has V2Ray's defaults (no
    statistics)."""

    levels: tuple[tuple[int, LevelPolicy], ...] = ()
    system: SystemPolicy = SystemPolicy()

    def level(self, number: int) -> LevelPolicy:
        return next((policy for n, policy in self.levels if n == number), LevelPolicy())

    def sessions(self) -> Policy:
        """The session limits of every level (``revproxy.policy``)."""
        return Policy((number, level.session_policy()) for number, level in self.levels)


@dataclass(frozen=True)
class NameServerConfig:
    """One of ``dns.servers``: ``address`` "localhost", an IP (UDP, ``port``) or a DoH URL
    ("https://…", "https+local://…"); ``domains`` routing-style conditions it is preferred
    for (lists expanded); ``expect_ips`` CIDRs its answers must be in; ``client_ip`` the
    EDNS client subnet sent (None: the section's)."""

    address: str
    port: int = 53
    domains: tuple[str, ...] = ()
    expect_ips: tuple[str, ...] = ()
    client_ip: str | None = None


@dataclass(frozen=True)
class DNSConfig:
    """``dns``: ``hosts`` (condition text such as "domain:x" or "full:x", then an IP or a
    domain it stands for), in V2Ray's order; ``tag`` the inbound tag of its queries."""

    servers: tuple[NameServerConfig, ...] = ()
    hosts: tuple[tuple[str, str], ...] = ()
    client_ip: str | None = None
    tag: str = ""


@dataclass(frozen=True)
class Config:
    """A whole configuration; ``source`` (where it was read from) and ``warnings`` (one line
    each, ``file: path: warning: message``) are not compared."""

    source: str = field(compare=False)
    log: LogConfig
    inbounds: tuple[InboundConfig, ...]
    outbounds: tuple[OutboundConfig, ...]
    routing: tuple[RoutingRule, ...]
    reverse: ReverseConfig
    server: ServerConfig
    warnings: tuple[str, ...] = field(default=(), compare=False)
    api: ApiConfig | None = None
    stats: bool = False  # a ``stats`` object is present: V2Ray counts only then
    policy: PolicyConfig = PolicyConfig()
    routing_options: RoutingConfig = RoutingConfig()
    dns: DNSConfig | None = None
