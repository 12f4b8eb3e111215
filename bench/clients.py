"""Load generators: curl for bulk downloads, wrk for requests/s, and asyncio clients for
fixed-rate latency and for holding many idle keep-alive connections open."""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.procs import Child, run_tool
from bench.systems import BIG, SMALL

HOST = "127.0.0.1"


@dataclass
class Measure:
    """One measurement of one system: ``values`` by figure name, plus anything worth keeping."""

    values: dict[str, float | None]
    extra: dict = field(default_factory=dict)
    error: str | None = None


# --- bulk download (curl) ---------------------------------------------------------------------

_CURL_OUT = "%{http_code} %{size_download} %{time_total}"


def _curl_argv(port: int, max_time: float, byte_range: str | None) -> list[str]:
    argv = [shutil.which("curl") or "curl", "-sS", "-o", "/dev/null", "--max-time",
            f"{max_time:.0f}", "-w", _CURL_OUT, "--noproxy", "*"]
    if byte_range:
        argv += ["-r", byte_range]
    return [*argv, f"http://{HOST}:{port}{BIG}"]


def download(port: int, size: int, streams: int) -> Measure:
    """Fetch ``size`` bytes of the big file over ``streams`` parallel connections (each a
    distinct range); MB/s = total bytes / wall time from the first launch to the last byte."""
    max_time = 60 + size / 5e6
    bounds = [size * i // streams for i in range(streams + 1)]
    ranges = [None] if streams == 1 else [f"{bounds[i]}-{bounds[i + 1] - 1}"
                                          for i in range(streams)]
    start = time.monotonic()
    children = [Child(f"curl-{i}", _curl_argv(port, max_time, r)) for i, r in enumerate(ranges)]
    try:
        outputs = [c.communicate(max_time + 10) for c in children]
    finally:
        for child in children:
            child.stop()  # no-op for those that finished
    wall = time.monotonic() - start
    got = 0
    curl_time = 0.0
    for out in outputs:
        parts = out.split()
        if len(parts) != 3 or parts[0] not in ("200", "206"):
            return Measure({"mbps": None}, error=f"curl: {out.strip()[-200:]}")
        got += int(parts[1])
        curl_time = max(curl_time, float(parts[2]))
    if got != size:
        return Measure({"mbps": None}, error=f"received {got} of {size} bytes")
    # One stream: curl's own clock (no exec overhead); several: the harness's wall clock.
    seconds = curl_time if streams == 1 else wall
    return Measure({"mbps": size / seconds / 1e6}, {"seconds": round(seconds, 3)})


# --- requests/s (wrk) -------------------------------------------------------------------------

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_TOTAL = re.compile(r"(\d+) requests in")


def wrk(port: int, duration: float, connections: int, close: bool, threads: int = 2) -> Measure:
    """``wrk -t2 -cN -dD`` on the 1 KiB page, keep-alive or with ``Connection: close``."""
    argv = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{connections}",
            f"-d{max(duration, 1):.0f}s", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}{SMALL}")
    out = run_tool("wrk", argv, timeout=duration + 30)
    match = _RPS.search(out)
    if not match:
        return Measure({"rps": None}, error=f"wrk: {out.strip()[-300:]}")
    extra: dict = {}
    if total := _TOTAL.search(out):
        extra["requests"] = int(total.group(1))
    if errors := _SOCKET_ERRORS.search(out):
        extra["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                          map(int, errors.groups()), strict=True))
    if non2xx := _NON_2XX.search(out):
        extra["non_2xx"] = int(non2xx.group(1))
    return Measure({"rps": float(match.group(1))}, extra)


# --- asyncio HTTP/1.1 keep-alive client -------------------------------------------------------

_REQUEST = f"GET {SMALL} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _get(conn: Conn) -> int:
    """One keep-alive GET of the small page on ``conn``; returns the status code."""
    reader, writer = conn
    writer.write(_REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("response without Content-Length")
    length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
    await reader.readexactly(length)
    return status


async def _connect(port: int) -> Conn:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)


def _close(conn: Conn | None) -> None:
    if conn is not None:
        conn[1].close()


_FAILURES = (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError,
             asyncio.LimitOverrunError)


async def _fixed_rate(port: int, rate: float, duration: float, warmup: float,
                      connections: int) -> Measure:
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _connect(port))
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    t0 = loop.time() + 0.1
    measure_from = t0 + warmup

    async def one(dispatched: float, measured: bool) -> None:
        nonlocal errors
        conn: Conn | None = None
        ok = False
        try:
            conn = await asyncio.wait_for(pool.get(), 10)
            ok = await asyncio.wait_for(_get(conn), 10) == 200
        except _FAILURES:
            _close(conn)
            conn = None
            try:
                conn = await _connect(port)
            except _FAILURES:
                conn = None
        done = loop.time()
        if conn is not None:
            pool.put_nowait(conn)
        if measured:
            if ok:
                latencies.append(done - dispatched)
            else:
                errors += 1

    tasks = []
    total = int(rate * (warmup + duration))
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        measured = scheduled >= measure_from
        if measured:
            lags.append(now - scheduled)
        tasks.append(asyncio.create_task(one(now, measured)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        _close(pool.get_nowait())
    if not latencies:
        return Measure({"p50": None, "p99": None}, error=f"no successful request ({errors} errors)")
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000

    extra = {"requests": n, "errors": errors, "p90_ms": round(pct(0.90), 3),
             "p999_ms": round(pct(0.999), 3), "max_ms": round(latencies[-1] * 1000, 3),
             "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
             "dispatch_lag_p99_ms": round(sorted(lags)[int(0.99 * (len(lags) - 1))] * 1000, 3)}
    return Measure({"p50": pct(0.50), "p99": pct(0.99)}, extra,
                   error=f"{errors} failed requests" if errors else None)


def latency(port: int, rate: float, duration: float, warmup: float,
            connections: int = 50) -> Measure:
    """Open-loop load at a fixed ``rate`` over ``connections`` keep-alive connections; latency
    of each request from its dispatch (including any wait for a free connection) to its last
    byte, in ms. The first ``warmup`` seconds are not counted."""
    return asyncio.run(_fixed_rate(port, rate, duration, warmup, connections))


async def _hold(port: int, count: int, measure: Callable[[], dict], deadline: float,
                parallel: int, settle: float) -> Measure:
    held: list[Conn] = []
    attempts = 0
    gate = asyncio.Semaphore(parallel)
    stop_at = time.monotonic() + deadline

    async def open_one() -> None:
        nonlocal attempts
        async with gate:
            while time.monotonic() < stop_at:
                attempts += 1
                conn: Conn | None = None
                try:
                    conn = await _connect(port)
                    if await asyncio.wait_for(_get(conn), 10) == 200:
                        held.append(conn)
                        return
                except _FAILURES:
                    pass
                _close(conn)
                await asyncio.sleep(0.2)

    started = time.monotonic()
    try:
        await asyncio.gather(*(open_one() for _ in range(count)))
        opened_in = time.monotonic() - started
        await asyncio.sleep(settle)  # let the ends settle before reading their memory
        values = measure()
    finally:
        for conn in held:
            _close(conn)
        await asyncio.sleep(0)
    extra = {"held": len(held), "attempts": attempts, "open_seconds": round(opened_in, 2)}
    error = None if len(held) == count else f"only {len(held)} of {count} connections held"
    return Measure(values, extra, error)


def hold_connections(port: int, count: int, measure: Callable[[], dict],
                     deadline: float = 60.0, parallel: int = 50, settle: float = 1.0) -> Measure:
    """Open ``count`` keep-alive connections (one GET each, ``parallel`` at a time, failed ones
    retried until ``deadline``), call ``measure()`` while all are held, then close them."""
    return asyncio.run(_hold(port, count, measure, deadline, parallel, settle))
