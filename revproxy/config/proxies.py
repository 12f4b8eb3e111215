"""Parsers for ``inbounds`` and ``outbounds``: each handler, its protocol settings
(dokodemo-door, vmess, vless, shadowsocks, socks, http, freedom, blackhole), its mux object
and its ``streamSettings`` (parsed in ``config.transport``)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from revproxy.config import compat
from revproxy.config import fields as f
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import NOT_SUPPORTED, Obj
from revproxy.config.model import (
    BlackholeSettings,
    DokodemoSettings,
    FreedomSettings,
    HTTPInboundSettings,
    HTTPOutboundSettings,
    InboundConfig,
    MuxConfig,
    OutboundConfig,
    ProxyAccountConfig,
    ProxyServerConfig,
    ShadowsocksInboundSettings,
    ShadowsocksOutboundSettings,
    ShadowsocksServerConfig,
    SocksInboundSettings,
    SocksOutboundSettings,
    StreamConfig,
    VLESSFallbackConfig,
    VLESSInboundSettings,
    VLESSOutboundSettings,
    VLESSServerConfig,
    VLESSUserConfig,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessServerConfig,
    VMessUserConfig,
)
from revproxy.config.transport import stream_settings

_V2RAY_ONLY_INBOUNDS = ("trojan", "mtproto")
_V2RAY_ONLY_OUTBOUNDS = ("trojan", "mtproto", "dns", "loopback")
# sendThrough values that bind to no address in particular, which is what revproxy does.
_ANY_ADDRESS = (None, "", "0.0.0.0", "::")
_SECURITIES = ("auto", "aes-128-gcm", "chacha20-poly1305", "none", "zero")


def inbound(node: Node, raw: Any) -> InboundConfig:
    o = Obj(node, raw, ("protocol", "port", "listen", "settings", "tag", "streamSettings",
                        "sniffing", "domainOverride", "allocate"))
    sniffing = compat.sniffing(node, o.raw("sniffing"), o.raw("domainOverride"))
    o.nested("allocate", compat.allocate, None)
    tag = o.get("tag", f.tag, None)
    listen = o.get("listen", f.ip_address, "0.0.0.0")
    port = o.get("port", f.single_port, 0, required=True)
    protocol = o.get("protocol", _protocol(_INBOUND_SETTINGS, _V2RAY_ONLY_INBOUNDS), None,
                     required=True)
    stream = o.nested("streamSettings", lambda n, v: stream_settings(n, v, server=True),
                      StreamConfig())
    settings = _settings(o, protocol, _INBOUND_SETTINGS)
    if (isinstance(settings, DokodemoSettings) and settings.follow_redirect
            and "udp" in settings.network and stream.sockopt.tproxy == "tproxy"):
        node.at("settings").at("followRedirect").report(
            'not for UDP with sockopt.tproxy "tproxy": revproxy sends UDP to "address", '
            "not to each datagram's original destination as V2Ray's TPROXY does")
    return InboundConfig(tag, listen, port, protocol or "", settings, stream, sniffing)


def outbound(node: Node, raw: Any) -> OutboundConfig:
    o = Obj(node, raw, ("protocol", "settings", "tag", "streamSettings", "mux", "sendThrough"),
            unsupported=("proxySettings",))
    if o.raw("sendThrough") not in _ANY_ADDRESS:
        node.at("sendThrough").report(NOT_SUPPORTED)
    tag = o.get("tag", f.tag, None)
    protocol = o.get("protocol", _protocol(_OUTBOUND_SETTINGS, _V2RAY_ONLY_OUTBOUNDS), None,
                     required=True)
    stream = o.nested("streamSettings", lambda n, v: stream_settings(n, v, server=False),
                      StreamConfig())
    return OutboundConfig(tag, protocol or "", _settings(o, protocol, _OUTBOUND_SETTINGS),
                          o.nested("mux", _mux, MuxConfig()), stream)


def _protocol(supported: Collection[str], v2ray_only: Collection[str]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if f.string(value).lower() in supported:  # V2Ray looks protocols up in lower case
            return value.lower()
        if value.lower() in v2ray_only:
            raise Invalid(f"protocol {show(value)} is {NOT_SUPPORTED}")
        raise Invalid(f"unknown protocol {show(value)}{f.suggest(value, supported)}")

    return parse


def _settings(o: Obj, protocol: str | None, builders: Mapping[str, Callable[[Node, Any], Any]]
              ) -> Any:
    """The protocol's settings object; V2Ray reads a missing one as {}."""
    if protocol is None:
        return None
    build = builders[protocol]
    return o.nested("settings", build, None) or build(o.node.at("settings"), {})


def _dokodemo(node: Node, raw: Any) -> DokodemoSettings:
    o = Obj(node, raw, ("address", "port", "network", "followRedirect", "timeout",
                        "userLevel"))
    follow_redirect = o.get("followRedirect", f.boolean, False)
    # No "port" is port 0, as V2Ray reads it: V2Ray's own API set-up has none (routing
    # sends the inbound to the API, whatever its destination).
    if o.ok and not follow_redirect and not o.has("address"):
        node.report('missing required key "address" (needed unless followRedirect is true)')
    network = o.get("network", f.networks, ("tcp",))  # "udp": served too
    if o.ok and follow_redirect and "udp" in network and not o.has("address"):
        node.at("followRedirect").report(
            'applies to TCP only: "network" has "udp", which needs "address" (the '
            "destination of every datagram; V2Ray's UDP redirect needs TPROXY)")
    return DokodemoSettings(
        address=o.get("address", f.host, None),
        port=o.get("port", f.port, None),
        network=network,
        follow_redirect=follow_redirect,
        timeout=o.get("timeout", f.integer(0, 2**32 - 1), 0) or 300,
        user_level=o.get("userLevel", f.integer(0, 2**32 - 1), 0),
    )


def _vmess_inbound(node: Node, raw: Any) -> VMessInboundSettings:
    o = Obj(node, raw, ("clients", "default", "disableInsecureEncryption"),
            unsupported=("detour", "features"))
    o.nested("default", _vmess_default, None)
    return VMessInboundSettings(
        clients=o.nested("clients", _users, ()) or _no_clients(o.node),
        disable_insecure_encryption=o.get("disableInsecureEncryption", f.boolean, False),
    )


def _no_clients(node: Node) -> tuple[VMessUserConfig, ...]:
    node.warn('no "clients": this inbound refuses every connection (as in V2Ray, unless a '
              "dynamic port's detour, which revproxy does not have, gives it users)")
    return ()


def _vmess_default(node: Node, raw: Any) -> None:
    o = Obj(node, raw, ("alterId", "level"))
    o.get("alterId", _alter_id, 0)
    o.get("level", f.integer(0, 255), 0)


def _users(node: Node, raw: Any) -> tuple[VMessUserConfig, ...]:
    return f.items(node, raw, _user, nonempty=True)


def _user(node: Node, raw: Any) -> VMessUserConfig:
    o = Obj(node, raw, ("id", "alterId", "security", "email", "level"))
    return VMessUserConfig(
        id=o.get("id", f.uuid, "", required=True),
        alter_id=o.get("alterId", _alter_id, 0),
        security=o.get("security", f.choice(*_SECURITIES), "auto"),
        email=o.get("email", f.string, None) or None,
        level=o.get("level", f.integer(0, 255), 0),
    )


MAX_ALTER_ID = 1024  # each alter id costs 241 user hashes held per worker


def _alter_id(value: Any) -> int:
    """Alter ids enable legacy VMess for the user (inbound) or are noted (outbound: revproxy
    speaks AEAD)."""
    alter_id = f.integer(0, 65535)(value)
    if alter_id > MAX_ALTER_ID:
        raise Invalid(f"alterId {alter_id} is more than revproxy supports ({MAX_ALTER_ID}): "
                      "each alter id means 241 user hashes kept in memory")
    return alter_id


def _vmess_outbound(node: Node, raw: Any) -> VMessOutboundSettings:
    o = Obj(node, raw, ("vnext",))
    servers = o.nested("vnext", lambda n, v: f.items(n, v, _vmess_server, nonempty=True), (),
                       required=True)
    return VMessOutboundSettings(servers=servers)


def _vmess_server(node: Node, raw: Any) -> VMessServerConfig:
    o = Obj(node, raw, ("address", "port", "users"))
    return VMessServerConfig(
        address=o.nested("address", f.server_address, "", required=True),
        port=o.get("port", f.port, 0, required=True),
        users=o.nested("users", _users, (), required=True),
    )


def _freedom(node: Node, raw: Any) -> FreedomSettings:
    o = Obj(node, raw, ("redirect", "domainStrategy", "userLevel"), ignored=("timeout",))
    return FreedomSettings(redirect=o.get("redirect", _redirect, None),
                           domain_strategy=o.get("domainStrategy", compat.freedom_strategy,
                                                 "AsIs"),
                           user_level=o.get("userLevel", f.integer(0, 2**32 - 1), 0))


def _redirect(value: Any) -> tuple[str, int] | None:
    """V2Ray's "redirect": "host:port" (host may be empty, port 0 keeps the session's)."""
    return f.host_port(value) if f.string(value) else None


def _blackhole(node: Node, raw: Any) -> BlackholeSettings:
    o = Obj(node, raw, ("response",))
    return BlackholeSettings(response=o.nested("response", _blackhole_response, "none"))


def _blackhole_response(node: Node, raw: Any) -> str:
    return Obj(node, raw, ("type",)).get("type", f.choice("none", "http"), "none")


def _mux(node: Node, raw: Any) -> MuxConfig:
    o = Obj(node, raw, ("enabled", "concurrency"))
    enabled = o.get("enabled", f.boolean, False)
    concurrency = o.get("concurrency", f.integer(-32768, 1024), 0)
    if concurrency < 0:  # V2Ray: a negative concurrency turns mux off entirely
        return MuxConfig()
    return MuxConfig(enabled=enabled, concurrency=concurrency or 8)


# -- VLESS (V2Ray's infra/conf/vless.go)

def _vless_inbound(node: Node, raw: Any) -> VLESSInboundSettings:
    o = Obj(node, raw, ("clients", "decryption", "fallbacks", "fallback"))
    if o.has("fallback"):
        node.at("fallback").report('use "fallbacks": [{...}] instead of "fallback": {...} '
                                   "(as V2Ray requires)")
    if o.ok and o.get("decryption", f.string, None) != "none":
        node.at("decryption").report('must be "none" (V2Ray requires "decryption": "none")')
    return VLESSInboundSettings(
        clients=o.nested("clients", lambda n, v: f.items(n, v, _vless_client), ()),
        fallbacks=o.nested("fallbacks", lambda n, v: f.items(n, v, _vless_fallback), ()),
    )


def _vless_client(node: Node, raw: Any) -> VLESSUserConfig:
    o = Obj(node, raw, ("id", "email", "level", "flow", "encryption"))
    if o.get("encryption", f.string, ""):
        node.at("encryption").report('"encryption" belongs in an outbound\'s users, not in an '
                                     "inbound's clients (as V2Ray requires)")
    return _vless_user(node, o)


def _vless_user(node: Node, o: Obj) -> VLESSUserConfig:
    flow = o.get("flow", f.string, "")
    if flow:
        node.at("flow").warn(f"flow {show(flow)} is ignored: VLESS in V2Ray 4.34 has no flow "
                             "on the wire")
    return VLESSUserConfig(
        id=o.get("id", f.uuid, "", required=True),
        email=o.get("email", f.string, None) or None,
        level=o.get("level", f.integer(0, 255), 0),
        flow=flow,
    )


def _vless_fallback(node: Node, raw: Any) -> VLESSFallbackConfig:
    o = Obj(node, raw, ("alpn", "path", "type", "dest", "xver"))
    path = o.get("path", f.string, "")
    if path and not path.startswith("/"):
        node.at("path").report('must be empty or start with "/"')
    kind = o.get("type", f.string, "")
    dest = o.get("dest", _fallback_dest, "")
    if not kind and dest:
        if dest == "serve-ws-none":
            kind = "serve"
        elif dest[0] in "@/":
            kind = "unix"
        else:
            if dest.isascii() and dest.isdigit():
                dest = "127.0.0.1:" + dest
            try:
                f.host_port(dest)
                kind = "tcp"
            except Invalid:
                pass
    network = {"tcp": "tcp", "tcp4": "tcp", "tcp6": "tcp", "unix": "unix"}.get(kind.lower())
    if o.ok and not kind:
        node.at("dest").report('please fill in a valid value (a port, "host:port" or a socket '
                               "path)")
    elif o.ok and network is None:
        node.at("type").report(f"fallback type {show(kind)} is {NOT_SUPPORTED} "
                               '(only "tcp" and "unix")')
    elif network == "tcp" and o.ok:
        try:
            f.host_port(dest)
        except Invalid as exc:
            node.at("dest").report(str(exc))
    return VLESSFallbackConfig(
        dest=dest, network=network or "tcp", alpn=o.get("alpn", f.string, ""), path=path,
        xver=o.get("xver", f.integer(0, 2), 0))


def _fallback_dest(value: Any) -> str:
    """A port number or a string (V2Ray reads a number as a port on 127.0.0.1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(f.port(value))
    return f.string(value)


def _vless_outbound(node: Node, raw: Any) -> VLESSOutboundSettings:
    o = Obj(node, raw, ("vnext",))
    servers = o.nested("vnext", lambda n, v: f.items(n, v, _vless_server, nonempty=True), (),
                       required=True)
    return VLESSOutboundSettings(servers=servers)


def _vless_server(node: Node, raw: Any) -> VLESSServerConfig:
    o = Obj(node, raw, ("address", "port", "users"))
    return VLESSServerConfig(
        address=o.nested("address", f.server_address, "", required=True),
        port=o.get("port", f.port, 0, required=True),
        users=o.nested("users", lambda n, v: f.items(n, v, _vless_outbound_user, nonempty=True),
                       (), required=True),
    )


def _vless_outbound_user(node: Node, raw: Any) -> VLESSUserConfig:
    o = Obj(node, raw, ("id", "email", "level", "flow", "encryption"))
    if o.ok and o.get("encryption", f.string, None) != "none":
        node.at("encryption").report('must be "none" (V2Ray requires "encryption": "none" '
                                     "for every user)")
    return _vless_user(node, o)


# -- Shadowsocks (V2Ray's infra/conf/shadowsocks.go)

# V2Ray's method names -> the canonical one (proxy.shadowsocks.crypto.METHODS has them all).
_SS_METHODS = {
    "aes-128-gcm": "aes-128-gcm", "aead_aes_128_gcm": "aes-128-gcm",
    "aes-256-gcm": "aes-256-gcm", "aead_aes_256_gcm": "aes-256-gcm",
    "chacha20-poly1305": "chacha20-poly1305", "chacha20-ietf-poly1305": "chacha20-poly1305",
    "aead_chacha20_poly1305": "chacha20-poly1305", "none": "none", "plain": "none",
}
_SS_STREAM_CIPHERS = ("aes-128-cfb", "aes-192-cfb", "aes-256-cfb", "aes-128-ctr", "aes-192-ctr",
                      "aes-256-ctr", "camellia-128-cfb", "camellia-192-cfb", "camellia-256-cfb",
                      "bf-cfb", "cast5-cfb", "des-cfb", "idea-cfb", "rc2-cfb", "rc4", "rc4-md5",
                      "seed-cfb", "salsa20", "chacha20", "chacha20-ietf", "xchacha20")


def _ss_method(value: Any) -> str:
    name = f.string(value).lower()
    if name in _SS_METHODS:
        return _SS_METHODS[name]
    if name in _SS_STREAM_CIPHERS:
        raise Invalid(f"stream cipher {show(value)} is insecure and {NOT_SUPPORTED} (nor by "
                      'V2Ray 4.x): use "aes-128-gcm", "aes-256-gcm" or "chacha20-poly1305"')
    raise Invalid(f"unknown cipher method {show(value)}{f.suggest(name, _SS_METHODS)}")


def _shadowsocks_inbound(node: Node, raw: Any) -> ShadowsocksInboundSettings:
    o = Obj(node, raw, ("method", "password", "udp", "level", "email", "network"))
    network = o.get("network", f.networks, ("tcp",))
    udp = o.get("udp", f.boolean, False)
    if "tcp" not in network:
        node.at("network").report(f'UDP alone is {NOT_SUPPORTED} yet: include "tcp"')
    return ShadowsocksInboundSettings(
        method=o.get("method", _ss_method, "", required=True),
        password=o.get("password", f.nonempty_string, "", required=True),
        email=o.get("email", f.string, None) or None,
        level=o.get("level", f.integer(0, 255), 0),
        udp=udp,
        network=network,
    )


def _shadowsocks_outbound(node: Node, raw: Any) -> ShadowsocksOutboundSettings:
    o = Obj(node, raw, ("servers",))
    servers = o.nested("servers", lambda n, v: f.items(n, v, _shadowsocks_server, nonempty=True),
                       (), required=True)
    return ShadowsocksOutboundSettings(servers=servers)


def _shadowsocks_server(node: Node, raw: Any) -> ShadowsocksServerConfig:
    o = Obj(node, raw, ("address", "port", "method", "password", "email", "level"),
            ignored=("ota",))
    return ShadowsocksServerConfig(
        address=o.nested("address", f.server_address, "", required=True),
        port=o.get("port", f.port, 0, required=True),
        method=o.get("method", _ss_method, "", required=True),
        password=o.get("password", f.nonempty_string, "", required=True),
        email=o.get("email", f.string, None) or None,
        level=o.get("level", f.integer(0, 255), 0),
    )


# -- SOCKS and HTTP (V2Ray's infra/conf/socks.go, http.go)

def _accounts(node: Node, raw: Any) -> tuple[ProxyAccountConfig, ...]:
    return f.items(node, raw, _account)


def _account(node: Node, raw: Any) -> ProxyAccountConfig:
    o = Obj(node, raw, ("user", "pass"), ignored=("level", "email"))
    return ProxyAccountConfig(user=o.get("user", f.string, ""),
                              password=o.get("pass", f.string, ""))


def _socks_inbound(node: Node, raw: Any) -> SocksInboundSettings:
    o = Obj(node, raw, ("auth", "accounts", "udp", "ip", "timeout", "userLevel"))
    auth = o.get("auth", f.string, "noauth")
    if auth not in ("noauth", "password"):
        node.at("auth").warn(f'unknown auth method {show(auth)}: "noauth" is used (as V2Ray '
                             "does)")
        auth = "noauth"
    accounts = o.nested("accounts", _accounts, ())
    if auth == "password" and not accounts and o.ok:
        node.at("accounts").warn('no accounts with auth "password": every client is refused')
    udp = o.get("udp", f.boolean, False)  # UDP ASSOCIATE: relayed (proxy/socks/udp.py)
    return SocksInboundSettings(
        auth=auth, accounts=accounts, udp=udp, ip=o.get("ip", f.host, None),
        timeout=o.get("timeout", f.integer(0, 2**32 - 1), 0),
        user_level=o.get("userLevel", f.integer(0, 2**32 - 1), 0),
    )


def _http_inbound(node: Node, raw: Any) -> HTTPInboundSettings:
    o = Obj(node, raw, ("timeout", "accounts", "allowTransparent", "userLevel"))
    return HTTPInboundSettings(
        timeout=o.get("timeout", f.integer(0, 2**32 - 1), 0),
        accounts=o.nested("accounts", _accounts, ()),
        allow_transparent=o.get("allowTransparent", f.boolean, False),
        user_level=o.get("userLevel", f.integer(0, 2**32 - 1), 0),
    )


def _proxy_servers(node: Node, raw: Any) -> tuple[ProxyServerConfig, ...]:
    o = Obj(node, raw, ("servers",))
    return o.nested("servers", lambda n, v: f.items(n, v, _proxy_server, nonempty=True), (),
                    required=True)


def _proxy_server(node: Node, raw: Any) -> ProxyServerConfig:
    o = Obj(node, raw, ("address", "port", "users"))
    return ProxyServerConfig(
        address=o.nested("address", f.server_address, "", required=True),
        port=o.get("port", f.port, 0, required=True),
        users=o.nested("users", _accounts, ()),
    )


def _socks_outbound(node: Node, raw: Any) -> SocksOutboundSettings:
    return SocksOutboundSettings(servers=_proxy_servers(node, raw))


def _http_outbound(node: Node, raw: Any) -> HTTPOutboundSettings:
    return HTTPOutboundSettings(servers=_proxy_servers(node, raw))


_INBOUND_SETTINGS: dict[str, Callable[[Node, Any], Any]] = {
    "dokodemo-door": _dokodemo,
    "vmess": _vmess_inbound,
    "vless": _vless_inbound,
    "shadowsocks": _shadowsocks_inbound,
    "socks": _socks_inbound,
    "http": _http_inbound,
}
_OUTBOUND_SETTINGS: dict[str, Callable[[Node, Any], Any]] = {
    "freedom": _freedom,
    "vmess": _vmess_outbound,
    "blackhole": _blackhole,
    "vless": _vless_outbound,
    "shadowsocks": _shadowsocks_outbound,
    "socks": _socks_outbound,
    "http": _http_outbound,
}
