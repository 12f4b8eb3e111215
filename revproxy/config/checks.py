"""Whole-configuration checks run after parsing: unique tags, routing references that
resolve, and a sane route for each bridge's tunnels. Paths come from the parser's Layout,
since inbounds, outbounds and rules may come from several keys (and files)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from revproxy.config.errors import Node, show
from revproxy.config.fields import suggest
from revproxy.config.known_ids import check_published_ids
from revproxy.config.model import Config, RoutingRule
from revproxy.config.sections import Layout
from revproxy.net.session import Target
from revproxy.routing import Router

MUX_WARNING = ("Reverse proxy has Mux enabled by default. "
               "Do not enable Mux again on the outbound proxies it uses")


def check(config: Config, node: Node, layout: Layout | None = None) -> Config:
    """Report cross-reference problems, and give the configuration with rules naming no
    outbound sent to the first outbound, as V2Ray sends their traffic. References are
    checked only against tag lists that parsed cleanly, and bridge routes only when nothing
    else is wrong, so one mistake does not cascade into several."""
    if layout is None:
        layout = Layout(tuple(f"inbounds[{i}]" for i in range(len(config.inbounds))),
                        tuple(f"outbounds[{i}]" for i in range(len(config.outbounds))),
                        tuple(f"routing.rules[{i}]" for i in range(len(config.routing))))
    inbounds = zip(layout.inbounds, config.inbounds, strict=True)
    outbounds = zip(layout.outbounds, config.outbounds, strict=True)
    inbound_tags = _unique(node, [(f"{path}.tag", inbound.tag) for path, inbound in inbounds]
                           + [(f"reverse.bridges[{i}].tag", bridge.tag)
                              for i, bridge in enumerate(config.reverse.bridges)])
    outbound_tags = _unique(node, [(f"{path}.tag", outbound.tag)
                                   for path, outbound in outbounds]
                            + [(f"reverse.portals[{i}].tag", portal.tag)
                               for i, portal in enumerate(config.reverse.portals)])
    if layout.api_tag is not None:
        outbound_tags.add(layout.api_tag)
    paths = node.problem_paths()
    check_inbounds = _tags_clean(paths, ("reverse.bridges", *layout.inbounds), _HANDLER_LISTS)
    check_outbounds = _tags_clean(paths, ("reverse.portals", *layout.outbounds),
                                  _HANDLER_LISTS)
    rules = list(config.routing)
    for index, (path, rule) in enumerate(zip(layout.rules, config.routing, strict=True)):
        if check_outbounds and rule.outbound_tag and rule.outbound_tag not in outbound_tags:
            rules[index] = _to_default(config, node.at(f"{path}.outboundTag"), rule,
                                       outbound_tags, layout)
        for j, tag in enumerate(rule.inbound_tags):
            if check_inbounds and tag not in inbound_tags:
                node.at(f"{path}.inboundTag[{j}]").warn(
                    f"no inbound or bridge is tagged {show(tag)}{suggest(tag, inbound_tags)}: "
                    "this tag never matches (as in V2Ray)")
    config = dataclasses.replace(config, routing=tuple(rules))
    check_published_ids(config, node, layout.inbounds)
    if node.problem_count() == 0:
        _check_bridge_routes(config, node, layout)
    return config


def _to_default(config: Config, node: Node, rule: RoutingRule, tags: set[str],
                layout: Layout) -> RoutingRule:
    """A rule naming no outbound: V2Ray sends what it matches to the first outbound."""
    missing = f"no outbound or portal is tagged {show(rule.outbound_tag)}"
    missing += suggest(rule.outbound_tag, tags)
    first = config.outbounds[0].tag if config.outbounds else None
    if not (tags or config.inbounds or config.reverse.bridges):
        # Routing alone, as in a file meant to be merged with others: nothing to check it by.
        node.warn(f"{missing}, nor any other, and nothing sends traffic here: V2Ray accepts "
                  "such a file, and so does revproxy")
        return rule
    if first is None:
        whose = "which has no tag: give it one" if config.outbounds else "and there is none"
        node.report(f"{missing} (V2Ray would send this traffic to the first outbound, {whose})")
        return rule
    node.warn(f"{missing}: V2Ray sends this traffic to the first outbound, "
              f"{node.describe(layout.outbounds[0])} ({show(first)}), and so does revproxy")
    return dataclasses.replace(rule, outbound_tag=first)


_HANDLER_LISTS = ("inbounds", "outbounds", "inboundDetour", "outboundDetour", "inbound",
                  "outbound", "reverse")


def _tags_clean(problem_paths: Iterable[str], items: Iterable[str],
                lists: Iterable[str]) -> bool:
    """Whether no problem was reported at one of ``items`` or its tag, at one of the
    ``lists`` holding them, or at the top level."""
    watched = {path for item in items for path in (item, f"{item}.tag")}
    watched.update(lists)
    for path in problem_paths:
        if path == "" or path in watched or re.fullmatch(r"reverse\.(bridges|portals)\[\d+\]"
                                                         r"(\.tag)?", path):
            return False
    return True


def _unique(node: Node, tags: Iterable[tuple[str, str | None]]) -> set[str]:
    first_seen: dict[str, str] = {}
    for path, tag in tags:
        if tag is None:
            continue
        if tag in first_seen:
            here = node.at(path)
            here.report(f"duplicate tag {show(tag)} (first used at "
                        f"{here.describe(first_seen[tag])})")
        else:
            first_seen[tag] = path
    return set(first_seen)


def _check_bridge_routes(config: Config, node: Node, layout: Layout) -> None:
    """Each bridge dials its portal by dispatching "<domain>:0" with its own tag as inbound
    tag; the outbound routing picks for that must be a proxy without mux."""
    tags = [outbound.tag for outbound in config.outbounds]
    router = Router(config.routing, tags[0] if tags else None,
                    balancers=dict(config.routing_options.balancers),
                    outbound_tags=[tag for tag in tags if tag])
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
                        f"{outbound.protocol} outbound {here.describe(layout.outbounds[index])}"
                        ", which cannot reach a "
                        f"portal: add a routing rule for inboundTag {show(bridge.tag)} and "
                        f"domain \"full:{bridge.domain}\"")
        elif outbound.mux.enabled:
            node.at(f"{layout.outbounds[index]}.mux").report(
                f"{MUX_WARNING} (bridge {show(bridge.tag)} sends its tunnels here)")
