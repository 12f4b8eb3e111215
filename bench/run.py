"""``scripts/bench``: the same workloads through nginx directly, a V2Ray portal+bridge and a
revproxy portal+bridge on loopback, interleaved, with medians and ratios at the end."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import clients, report, udp
from bench.procs import CpuMeter, stop_all
from bench.systems import ROOT, TRANSPORTS, Backend, Ends

WORKLOADS = ("download", "download4", "rps", "rps-close", "latency", "rss", "udp")
DEFAULT_WORKLOADS = [w for w in WORKLOADS if w != "udp"]  # udp: only when asked (--only)
MIB = 2**20

System = Backend | Ends


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 256M)") from None


def _only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {unknown}; choose from "
                                         + ",".join(WORKLOADS))
    return [w for w in WORKLOADS if w in names]  # canonical order


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark nginx direct vs V2Ray vs revproxy (portal+bridge) on loopback. "
                    "--micro runs the in-process codec micro-benchmarks instead "
                    "(see bench/micro.py --help); --ha the failure windows when a host "
                    "vanishes, beside V2Ray's (root; see bench/ha.py --help); --faults "
                    "stalled and slow visitors, a stalled backend and the fd limit, beside "
                    "V2Ray's (see bench/faults.py --help).")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --size 64M --duration 2 --warmup 0 --repeat 1 --hold 200 "
                        "--settle 0.5 (about half a minute)")
    p.add_argument("--duration", type=float, help="seconds per wrk/latency run (default 10)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each wrk/latency "
                                                "run (default 1)")
    p.add_argument("--repeat", type=int, help="repetitions of every workload (default 3)")
    p.add_argument("--size", type=_size, help="bulk file size (default 1G)")
    p.add_argument("--only", type=_only, default=DEFAULT_WORKLOADS,
                   help="comma-separated workloads: " + ",".join(WORKLOADS)
                        + " (default: all but udp)")
    p.add_argument("--workers", type=int, default=None,
                   help="revproxy processes per side, written as server.workers into both "
                        "revproxy configs (omitted by default; V2Ray is unaffected)")
    p.add_argument("--security", default="auto",
                   choices=("auto", "aes-128-gcm", "chacha20-poly1305", "none"),
                   help="VMess security of both bridges (default auto = aes-128-gcm)")
    p.add_argument("--transport", default="tcp", choices=TRANSPORTS,
                   help="the bridge-portal link of both systems: plain tcp (default), tcp with "
                        "V2Ray's http header, ws, tls or ws+tls (a self-signed certificate)")
    p.add_argument("--connections", type=int, default=50,
                   help="connections for wrk and the latency client (default 50)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="fixed request rate of the latency workload (default 1000/s)")
    p.add_argument("--hold", type=int, help="idle connections held for RSS (default 1000)")
    p.add_argument("--settle", type=float,
                   help="seconds to wait before reading memory (default 2)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json",
                   help="where to write the JSON results (default bench/results.json)")
    p.add_argument("--chart", type=Path, default=ROOT / "bench" / "ratios.png",
                   help="PNG chart of the ratios, if matplotlib is importable")
    return p


def _defaults(args: argparse.Namespace) -> None:
    quick = {"duration": 2.0, "warmup": 0.0, "repeat": 1, "size": 64 * MIB, "hold": 200,
             "settle": 0.5}
    full = {"duration": 10.0, "warmup": 1.0, "repeat": 3, "size": 2**30, "hold": 1000,
            "settle": 2.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _on_signal(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare(workload: str, system: System, args: argparse.Namespace) -> None:
    """What a measurement needs beforehand, outside its CPU accounting."""
    if workload == "rss" and isinstance(system, Ends):
        system.stop()  # fresh processes: "idle" means started, tunnel up, one request served
        system.start()  # on new ports
        time.sleep(args.settle)


def measure(workload: str, system: System, args: argparse.Namespace,
            udp_echo: int = 0) -> clients.Measure:
    port = system.public_port
    if workload == "udp":  # direct: to the echo server itself
        port = system.udp_port if isinstance(system, udp.UdpEnds) else udp_echo
        values, extra, error = udp.measure(port, args.duration, args.warmup,
                                           system.children() if isinstance(system, Ends) else None)
        return clients.Measure(values, extra, error)
    if workload == "download":
        m = clients.download(port, args.size, 1)
        return clients.Measure({"download_1": m.values["mbps"]}, m.extra, m.error)
    if workload == "download4":
        m = clients.download(port, args.size, 4)
        return clients.Measure({"download_4": m.values["mbps"]}, m.extra, m.error)
    if workload in ("rps", "rps-close"):
        close = workload == "rps-close"
        if args.warmup > 0:
            clients.wrk(port, args.warmup, args.connections, close)
        m = clients.wrk(port, args.duration, args.connections, close)
        key = "rps_close" if close else "rps_keepalive"
        return clients.Measure({key: m.values["rps"]}, m.extra, m.error)
    if workload == "latency":
        m = clients.latency(port, args.rate, args.duration, args.warmup, args.connections)
        return clients.Measure({"latency_p50": m.values["p50"], "latency_p99": m.values["p99"]},
                               m.extra, m.error)
    if workload == "rss":
        assert isinstance(system, Ends)
        idle = system.memory()
        loaded: dict[str, int] = {}

        def weigh() -> dict:
            loaded.update(system.memory())
            return {}

        m = clients.hold_connections(system.public_port, args.hold, weigh, settle=args.settle)
        values = {"rss_idle": idle["rss"] / MIB, "pss_idle": idle["pss"] / MIB,
                  "rss_conns": loaded["rss"] / MIB if loaded else None,
                  "pss_conns": loaded["pss"] / MIB if loaded else None}
        extra = {**m.extra, "idle": idle, "loaded": loaded}
        return clients.Measure(values, extra, m.error)
    raise ValueError(workload)


def _show(value: float | None) -> str:
    return "failed" if value is None else f"{value:,.1f}"


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="revproxy-bench-"))
    runs: list[dict] = []
    machine = report.machine_info(ROOT)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    started = time.monotonic()
    try:
        backend = Backend(tmp, args.size)
        backend.start()
        log(f"nginx backend on 127.0.0.1:{backend.port} ({args.size / MIB:g} MiB file)")
        options = {"security": args.security, "transport": args.transport}
        echo = udp.EchoServer(tmp) if "udp" in args.only else None
        if echo is not None:
            log(f"UDP echo server on 127.0.0.1:{echo.port}")
        ends = [udp.UdpEnds(kind, tmp, backend.port, echo.port, **options,
                            workers=args.workers if kind == "revproxy" else None)
                if echo is not None else
                Ends(kind, tmp, backend.port, **options,
                     workers=args.workers if kind == "revproxy" else None)
                for kind in ("v2ray", "revproxy")]
        for e in ends:
            seconds = e.start()
            log(f"{e.name} portal on 127.0.0.1:{e.public_port}, serving after {seconds:.1f} s")
        systems: list[System] = [backend, *ends]
        for workload in args.only:
            for rep in range(1, args.repeat + 1):
                for system in systems:
                    if workload == "rss" and isinstance(system, Backend):
                        continue  # no ends to weigh
                    if isinstance(system, Ends) and (system.portal is None
                                                     or not all(c.alive()
                                                                for c in system.children())):
                        log(f"  {system.name}: an end was down, restarting:\n"
                            + "\n".join(c.tail(800) for c in system.children()))
                        system.stop()
                        system.start()
                    prepare(workload, system, args)
                    t = time.monotonic()
                    meter = CpuMeter()
                    try:
                        m = measure(workload, system, args, echo.port if echo else 0)
                    except (OSError, subprocess.SubprocessError, ValueError) as exc:
                        m = clients.Measure({}, error=f"{type(exc).__name__}: {exc}")
                    cpu = meter.read()
                    runs.append({"workload": workload, "rep": rep, "system": system.name,
                                 "values": m.values, "extra": m.extra, "error": m.error,
                                 "cpu_cores": cpu, "seconds": round(time.monotonic() - t, 2)})
                    shown = ", ".join(f"{k} {_show(v)}" for k, v in m.values.items())
                    notes = [m.error] if m.error else []
                    if cpu["other"] >= 0.2:
                        notes.append(f"other load {cpu['other']:.1f} cores")
                    log(f"[{workload} {rep}/{args.repeat}] {report.TITLES[system.name]:>8}: "
                        f"{shown}" + (f"  ({'; '.join(notes)})" if notes else ""))
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    figs = report.figures(args.rate, args.hold) + udp.figures()
    other = [r["cpu_cores"]["other"] for r in runs]
    return {"machine": machine, "params": params,
            "elapsed_seconds": round(time.monotonic() - started, 1),
            "other_load_cores": {"mean": round(sum(other) / len(other), 2) if other else None,
                                 "max": max(other, default=None)},
            "summary": report.summarize(figs, runs), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--micro" in argv:
        argv.remove("--micro")
        from bench import micro

        return micro.main(argv)
    if "--ha" in argv:
        argv.remove("--ha")
        from bench import ha

        return ha.main(argv)
    if "--faults" in argv:
        argv.remove("--faults")
        from bench import faults

        return faults.main(argv)
    args = build_parser().parse_args(argv)
    _defaults(args)
    _raise_nofile()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with INT ignored
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        results = run(args, log)
    except KeyboardInterrupt:
        print("interrupted; every process the bench started is stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print()
    print(report.table(results["summary"]))
    m = results["machine"]
    print(f"\n{m['cpu_model']}, {m['cores_logical']} cores, kernel {m['kernel']}, "
          f"Python {m['python']}, gevent {m['gevent']}, {m['v2ray']}; "
          f"{results['elapsed_seconds']:.0f} s")
    procs = {r["system"]: r["extra"]["idle"]["processes"] for r in results["runs"]
             if r["workload"] == "rss" and "idle" in r["extra"]}
    if procs:
        print("processes weighed (portal+bridge trees): "
              + ", ".join(f"{report.TITLES[k]} {v}" for k, v in procs.items()))
    other = results["other_load_cores"]
    if other["mean"] is not None:
        print(f"CPU used by other processes during the measurements: mean {other['mean']:.2f} "
              f"cores, max {other['max']:.2f} (see runs[].cpu_cores)")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {args.results}")
    if png := report.chart(results["summary"], args.chart):
        print(f"chart: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
