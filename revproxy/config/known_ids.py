"""User ids published in V2Ray's documentation, popular guides and revproxy's own examples.

Anyone can read them, so a server that accepts one from the network accepts anybody. A VMess
inbound that listens beyond this host with the placeholder id of revproxy's own examples (the
Debian package's config among them, which listens on loopback as shipped) is refused by
``check`` and at start; with an id published elsewhere (V2Ray's documents and guides, whose
configs must load as V2Ray loads them) it gets a warning.
"""

from __future__ import annotations

import ipaddress

from revproxy.config.errors import Node
from revproxy.config.model import Config, VMessInboundSettings

PLACEHOLDER_ID = "11111111-2222-4333-8444-555555555555"  # conf/*.yaml, packaging/config.yaml
PUBLISHED_IDS = frozenset({
    PLACEHOLDER_ID,
    "27848739-7e62-4138-9fd3-098a63964b6b",  # V2Ray's reverse-proxy document
    "b831381d-6324-4d53-ad4f-8cda48b30811",  # V2Ray's configuration documentation
    "23ad6b10-8d1a-40f7-8ad0-e3e35cd38297",  # the V2Ray beginners' guide (toutyrater)
    "00000000-0000-0000-0000-000000000000",
})


def is_loopback(listen: str) -> bool:
    try:
        return ipaddress.ip_address(listen.strip("[]")).is_loopback
    except ValueError:
        return listen == "localhost"


def check_published_ids(config: Config, node: Node, inbound_paths: tuple[str, ...]) -> None:
    """Refuse (the placeholder) or warn about VMess inbounds reachable beyond this host that
    accept a published id."""
    for path, inbound in zip(inbound_paths, config.inbounds, strict=True):
        settings = inbound.settings
        if not isinstance(settings, VMessInboundSettings) or is_loopback(inbound.listen):
            continue
        for index, client in enumerate(settings.clients):
            if client.id not in PUBLISHED_IDS:
                continue
            message = (f"{client.id} is a published example id, and this inbound listens on "
                       f"{inbound.listen}: anyone could use it (make a new one with "
                       "\"revproxy uuid\")")
            here = node.at(f"{path}.settings.clients[{index}].id")
            (here.report if client.id == PLACEHOLDER_ID else here.warn)(message)
