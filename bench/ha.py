"""``scripts/bench --ha``: what visitors see when a host vanishes, revproxy beside V2Ray.

Scenarios on network namespaces (bench/netlab.py), each host in its own:

``bridge-host``
    two bridge hosts serve one portal; under a loop of GETs (new connections, ``--rate`` per
    second) one host's link goes down. Reported: requests failed, when the failed ones
    started, until when visitors failed or waited more than 1 s, the longest wait. Run with
    each combination of portal and bridges: revproxy/revproxy, revproxy portal with stock
    V2Ray bridges, V2Ray/V2Ray (the reference).
``portal``
    one bridge serves two portals (one outbound listing both); the loop visits the second
    portal while the first one vanishes: its visitors should see nothing.

Run as root: ``scripts/bench --ha [--rate R] [--after S] [--only bridge-host,portal]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import netlab
from bench.netlab import (
    PUBLIC_PORT,
    SITE_PORT,
    TUNNEL_PORT,
    Lab,
    LoadLoop,
    bridge_config,
    disruption,
    portal_config,
    wait_serving,
)
from bench.procs import free_port

SCENARIOS = ("bridge-host", "portal")
COMBINATIONS = (("revproxy", "revproxy"), ("revproxy", "v2ray"), ("v2ray", "v2ray"))


def vanishing_bridge_host(directory: Path, portal_kind: str = "revproxy",
                          bridge_kind: str = "revproxy", rate: float = 10.0,
                          before: float = 2.0, after: float = 15.0,
                          timeout: float = 20.0, loglevel: str = "warning") -> dict:
    """Two bridge hosts ``b1``, ``b2`` serve one portal (in the root namespace); ``b1``
    vanishes ``before`` s into the load; the load goes on ``after`` s more. Returns
    ``disruption()``'s summary plus ``outcomes`` (start and end relative to the event)."""
    with Lab(directory) as lab:
        hosts = [lab.add_host("b1"), lab.add_host("b2")]
        public, tunnel = free_port(), free_port()  # (the root namespace's ports are shared)
        portal = lab.start_end(portal_kind, "portal", portal_config(
            ("127.0.0.1", public), ("0.0.0.0", tunnel), loglevel))
        bridges = []
        for host in hosts:
            lab.start_site(host.name, host)
            bridges.append(lab.start_end(bridge_kind, f"bridge-{host.name}", bridge_config(
                SITE_PORT, [(host.gateway, tunnel)], loglevel), host))
        if portal_kind == "v2ray":
            # V2Ray's picker sends sequential visitors to its first tunnel only: wait for
            # one host to serve, then give the other's bridge time to register.
            wait_serving("127.0.0.1", public, [], [portal, *bridges], any_name=True)
            time.sleep(3.0)
        else:
            wait_serving("127.0.0.1", public, [h.name for h in hosts], [portal, *bridges])
        loop = LoadLoop("127.0.0.1", public, rate, timeout).start()
        time.sleep(before)
        lab.vanish(hosts[0])
        event = time.monotonic()
        time.sleep(after)
        outcomes = loop.stop()
        alive = portal.alive()
    summary = disruption(outcomes, event)
    summary["portal_alive"] = alive
    summary["outcomes"] = [(round(o.start - event, 3), round(o.end - event, 3), o.answer, o.ok)
                           for o in outcomes]
    return summary


def vanishing_portal(directory: Path, separate: bool = False, rate: float = 10.0,
                     before: float = 2.0, after: float = 12.0, timeout: float = 20.0,
                     loglevel: str = "warning") -> dict:
    """One revproxy bridge (root namespace) serves portals ``p1`` and ``p2`` (a ``vnext``
    entry each, or with ``separate`` a ``bridges`` entry each); the load visits ``p2`` while
    ``p1`` vanishes."""
    with Lab(directory) as lab:
        hosts = [lab.add_host("p1"), lab.add_host("p2")]
        portals = [lab.start_end("revproxy", f"portal-{h.name}", portal_config(
            ("0.0.0.0", PUBLIC_PORT), ("0.0.0.0", TUNNEL_PORT), loglevel), h) for h in hosts]
        site = lab.start_site("hidden", None, 0)
        bridge = lab.start_end("revproxy", "bridge", bridge_config(
            site, [(h.address, TUNNEL_PORT) for h in hosts], loglevel, separate))
        for host in hosts:
            wait_serving(host.address, PUBLIC_PORT, ["hidden"], [*portals, bridge])
        loop = LoadLoop(hosts[1].address, PUBLIC_PORT, rate, timeout).start()
        time.sleep(before)
        lab.vanish(hosts[0])
        event = time.monotonic()
        time.sleep(after)
        outcomes = loop.stop()
        alive = bridge.alive()
    summary = disruption(outcomes, event)
    summary["bridge_alive"] = alive
    return summary


def _window(result: dict) -> str:
    started = result["failed_started"]
    return f"{started[0]:+.1f}..{started[1]:+.1f} s" if started else "-"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --ha", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="GETs per second (20)")
    parser.add_argument("--after", type=float, default=20.0,
                        help="seconds of load after the host vanishes (20)")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="a visitor's patience: seconds per GET (15)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--results", type=Path,
                        default=netlab.ROOT / "bench" / "results-ha.json")
    args = parser.parse_args(argv)
    if reason := netlab.unavailable():
        print(f"bench --ha: {reason}", file=sys.stderr)
        return 1
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="revproxy-ha-") as tmp:
        if "bridge-host" in only:
            for portal_kind, bridge_kind in COMBINATIONS:
                name = f"bridge-host {portal_kind} portal, {bridge_kind} bridges"
                print(f"{name}: ...", flush=True)
                result = vanishing_bridge_host(Path(tmp), portal_kind, bridge_kind, args.rate,
                                               after=args.after, timeout=args.timeout)
                result.pop("outcomes")
                results[name] = result
        if "portal" in only:
            for separate in (False, True):
                name = "portal: one of two vanishes (" + (
                    "a bridges entry each)" if separate else "one vnext list)")
                print(f"{name}: ...", flush=True)
                results[name] = vanishing_portal(Path(tmp), separate, args.rate,
                                                 after=args.after, timeout=args.timeout)
    print()
    print(f"{'scenario':58} {'reqs':>5} {'failed':>6} {'failed started':>16} "
          f"{'disrupted':>10} {'slowest':>8}")
    for name, r in results.items():
        print(f"{name:58} {r['requests']:>5} {r['failed']:>6} {_window(r):>16} "
              f"{r['disrupted_until']:>9.1f}s {r['slowest']:>7.1f}s")
    print("\n(times relative to the moment the host vanished; 'disrupted': until when GETs "
          f"failed or took over 1 s; rate {args.rate:g}/s, patience {args.timeout:g} s)")
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
