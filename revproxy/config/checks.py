"""Whole-configuration checks run after parsing: unique tags, routing references that
resolve, and a sane route for each bridge's tunnels."""

from __future__ import annotations

import re
from collections.abc import Iterable

from revproxy.config.errors import Node, show
from revproxy.config.fields import suggest
from revproxy.config.model import Config
from revproxy.net.session import Target
from revproxy.routing import Router

MUX_WARNING = ("Reverse proxy has Mux enabled by default. "
               "Do not enable Mux again on the outbound proxies it uses")


def check(config: Config, node: Node) -> None:
    """Report cross-reference problems. References are checked only against tag lists that
    parsed cleanly, and bridge routes only when nothing else is wrong, so one mistake does
    not cascade into several."""
    inbound_tags = _unique(node, [(f"inbounds[{i}].tag", inbound.tag)
                                  for i, inbound in enumerate(config.inbounds)]
                           + [(f"reverse.bridges[{i}].tag", bridge.tag)
                              for i, bridge in enumerate(config.reverse.bridges)])
    outbound_tags = _unique(node, [(f"outbounds[{i}].tag", outbound.tag)
                                   for i, outbound in enumerate(config.outbounds)]
                            + [(f"reverse.portals[{i}].tag", portal.tag)
                               for i, portal in enumerate(config.reverse.portals)])
    paths = node.problem_paths()
    check_inbounds = _tags_clean(paths, "inbounds", "reverse.bridges")
    check_outbounds = _tags_clean(paths, "outbounds", "reverse.portals")
    for i, rule in enumerate(config.routing):
        path = f"routing.rules[{i}]"
        if check_outbounds and rule.outbound_tag not in outbound_tags:
            node.at(f"{path}.outboundTag").report(
                f"no outbound or portal is tagged {show(rule.outbound_tag)}"
                f"{suggest(rule.outbound_tag, outbound_tags)}")
        for j, tag in enumerate(rule.inbound_tags):
            if check_inbounds and tag not in inbound_tags:
                node.at(f"{path}.inboundTag[{j}]").report(
                    f"no inbound or bridge is tagged {show(tag)}{suggest(tag, inbound_tags)}")
    if node.problem_count() == 0:
        _check_bridge_routes(config, node)


def _tags_clean(problem_paths: Iterable[str], *lists: str) -> bool:
    """Whether no problem was reported at a tag in ``lists``, at one of their items, or
    at a parent of the lists (say "reverse", or the top level)."""
    for path in problem_paths:
        for name in lists:
            if re.fullmatch(rf"{re.escape(name)}(\[\d+\](\.tag)?)?", path) or (
                    path == "" or name.startswith(path + ".")):
                return False
    return True


def _unique(node: Node, tags: Iterable[tuple[str, str | None]]) -> set[str]:
    first_seen: dict[str, str] = {}
    for path, tag in tags:
        if tag is None:
            continue
        if tag in first_seen:
            node.at(path).report(f"duplicate tag {show(tag)} (first used at {first_seen[tag]})")
        else:
            first_seen[tag] = path
    return set(first_seen)


def _check_bridge_routes(config: Config, node: Node) -> None:
    """Each bridge dials its portal by dispatching "<domain>:0" with its own tag as inbound
    tag; the outbound routing picks for that must be a proxy without mux."""
    tags = [outbound.tag for outbound in config.outbounds]
    router = Router(config.routing, tags[0] if tags else None)
    portal_tags = {portal.tag for portal in config.reverse.portals}
    for i, bridge in enumerate(config.reverse.bridges):
        here = node.at(f"reverse.bridges[{i}]")
        tag = router.pick(bridge.tag, Target("tcp", bridge.domain, 0))
        if tag in portal_tags:
            continue
        index = tags.index(tag) if tag is not None else 0
        if index >= len(tags):
            here.report(f"no outbound to carry its tunnels: add one and a routing rule for "
                        f"inboundTag {show(bridge.tag)} and domain \"full:{bridge.domain}\"")
            continue
        outbound = config.outbounds[index]
        if outbound.protocol in ("freedom", "blackhole"):
            here.report(f"its tunnels to {show(bridge.domain)} are routed to the "
                        f"{outbound.protocol} outbound outbounds[{index}], which cannot reach a "
                        f"portal: add a routing rule for inboundTag {show(bridge.tag)} and "
                        f"domain \"full:{bridge.domain}\"")
        elif outbound.mux.enabled:
            node.at(f"outbounds[{index}].mux").report(
                f"{MUX_WARNING} (bridge {show(bridge.tag)} sends its tunnels here)")
