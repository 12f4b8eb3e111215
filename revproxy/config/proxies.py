"""Parsers for ``inbounds`` and ``outbounds``: each handler, its protocol settings
(dokodemo-door, vmess, freedom, blackhole), its mux object and its ``streamSettings`` (parsed
in ``config.transport``)."""

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
    InboundConfig,
    MuxConfig,
    OutboundConfig,
    StreamConfig,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessServerConfig,
    VMessUserConfig,
)
from revproxy.config.transport import stream_settings

_V2RAY_ONLY_INBOUNDS = ("http", "shadowsocks", "socks", "vless", "trojan", "mtproto")
_V2RAY_ONLY_OUTBOUNDS = ("http", "shadowsocks", "socks", "vless", "trojan", "mtproto", "dns",
                         "loopback")
_SECURITIES = ("auto", "aes-128-gcm", "chacha20-poly1305", "none", "zero")


def inbound(node: Node, raw: Any) -> InboundConfig:
    o = Obj(node, raw, ("protocol", "port", "listen", "settings", "tag", "streamSettings",
                        "sniffing", "domainOverride", "allocate"))
    compat.sniffing(node, o.raw("sniffing"), o.raw("domainOverride"))
    o.nested("allocate", compat.allocate, None)
    tag = o.get("tag", f.tag, None)
    listen = o.get("listen", f.ip_address, "0.0.0.0")
    port = o.get("port", f.single_port, 0, required=True)
    protocol = o.get("protocol", _protocol(_INBOUND_SETTINGS, _V2RAY_ONLY_INBOUNDS), None,
                     required=True)
    stream = o.nested("streamSettings", lambda n, v: stream_settings(n, v, server=True),
                      StreamConfig())
    return InboundConfig(tag, listen, port, protocol or "",
                         _settings(o, protocol, _INBOUND_SETTINGS), stream)


def outbound(node: Node, raw: Any) -> OutboundConfig:
    o = Obj(node, raw, ("protocol", "settings", "tag", "streamSettings", "mux"),
            unsupported=("sendThrough", "proxySettings"))
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
    o = Obj(node, raw, ("address", "port", "network", "followRedirect", "timeout"),
            ignored=("userLevel",))
    follow_redirect = o.get("followRedirect", f.boolean, False)
    if o.ok and not follow_redirect:
        for key in ("address", "port"):
            if not o.has(key):
                node.report(f'missing required key "{key}" (needed unless followRedirect is true)')
    return DokodemoSettings(
        address=o.get("address", f.host, None),
        port=o.get("port", f.port, None),
        network=o.get("network", _tcp_network, ("tcp",)),
        follow_redirect=follow_redirect,
        timeout=o.get("timeout", f.integer(0, 2**32 - 1), 0) or 300,
    )


def _tcp_network(value: Any) -> tuple[str, ...]:
    networks = f.networks(value)
    if "tcp" not in networks:
        raise Invalid(f'network "udp" is {NOT_SUPPORTED}: include "tcp"')
    return networks


def _vmess_inbound(node: Node, raw: Any) -> VMessInboundSettings:
    o = Obj(node, raw, ("clients", "default", "disableInsecureEncryption"),
            unsupported=("detour", "features"))
    o.nested("default", _vmess_default, None)
    return VMessInboundSettings(
        clients=o.nested("clients", _users, (), required=True),
        disable_insecure_encryption=o.get("disableInsecureEncryption", f.boolean, False),
    )


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
        address=o.get("address", f.host, "", required=True),
        port=o.get("port", f.port, 0, required=True),
        users=o.nested("users", _users, (), required=True),
    )


def _freedom(node: Node, raw: Any) -> FreedomSettings:
    o = Obj(node, raw, ("redirect",), ignored=("domainStrategy", "timeout", "userLevel"))
    return FreedomSettings(redirect=o.get("redirect", _redirect, None))


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


_INBOUND_SETTINGS: dict[str, Callable[[Node, Any], Any]] = {
    "dokodemo-door": _dokodemo,
    "vmess": _vmess_inbound,
}
_OUTBOUND_SETTINGS: dict[str, Callable[[Node, Any], Any]] = {
    "freedom": _freedom,
    "vmess": _vmess_outbound,
    "blackhole": _blackhole,
}
