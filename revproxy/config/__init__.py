"""Configuration: V2Ray's JSON schema (JSON with comments, or the same keys in YAML) plus
revproxy's ``server`` section, validated into frozen dataclasses.

``load_config``/``parse_config`` either return a complete ``Config`` or raise ``ConfigError``
with one line per problem, each naming the file and the path of the offending value.
Modules: ``reader`` (file -> data), ``fields`` (value parsers), ``proxies`` and ``sections``
(data -> model), ``checks`` (cross references), ``model`` (the dataclasses).
"""

from revproxy.config.errors import ConfigError
from revproxy.config.loader import load_config, parse_config
from revproxy.config.model import (
    BlackholeSettings,
    BridgeConfig,
    Config,
    DokodemoSettings,
    FreedomSettings,
    InboundConfig,
    LogConfig,
    MuxConfig,
    OutboundConfig,
    PortalConfig,
    ReverseConfig,
    RoutingRule,
    ServerConfig,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessServerConfig,
    VMessUserConfig,
)

__all__ = [
    "BlackholeSettings",
    "BridgeConfig",
    "Config",
    "ConfigError",
    "DokodemoSettings",
    "FreedomSettings",
    "InboundConfig",
    "LogConfig",
    "MuxConfig",
    "OutboundConfig",
    "PortalConfig",
    "ReverseConfig",
    "RoutingRule",
    "ServerConfig",
    "VMessInboundSettings",
    "VMessOutboundSettings",
    "VMessServerConfig",
    "VMessUserConfig",
    "load_config",
    "parse_config",
]
