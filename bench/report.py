"""What a bench run reports: the figures and their direction, medians and ratios, the machine
it ran on, a text/Markdown table and an optional PNG chart of the ratios."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEMS = ("direct", "v2ray", "revproxy")
TITLES = {"direct": "direct", "v2ray": "V2Ray", "revproxy": "revproxy"}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    workload: str


def figures(rate: float, hold: int) -> list[Figure]:
    return [
        Figure("download_1", "download, 1 stream", "MB/s", True, "download"),
        Figure("download_4", "download, 4 streams", "MB/s", True, "download4"),
        Figure("rps_keepalive", "keep-alive, 50 conns", "req/s", True, "rps"),
        Figure("rps_close", "new connection, 50 conns", "req/s", True, "rps-close"),
        Figure("latency_p50", f"latency p50 at {rate:g} req/s", "ms", False, "latency"),
        Figure("latency_p99", f"latency p99 at {rate:g} req/s", "ms", False, "latency"),
        Figure("rss_idle", "RSS idle, portal+bridge", "MiB", False, "rss"),
        Figure("rss_conns", f"RSS with {hold} conns, portal+bridge", "MiB", False, "rss"),
        Figure("pss_idle", "PSS idle, portal+bridge", "MiB", False, "rss"),
        Figure("pss_conns", f"PSS with {hold} conns, portal+bridge", "MiB", False, "rss"),
    ]


def summarize(figs: list[Figure], runs: list[dict]) -> dict:
    """Median per figure and system over the repetitions, and revproxy's ratios to the others."""
    out: dict = {}
    for fig in figs:
        values: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        for run in runs:
            value = run["values"].get(fig.key)
            if value is not None:
                values[run["system"]].append(value)
        if not any(values.values()):
            continue
        median = {s: statistics.median(v) if v else None for s, v in values.items()}
        rp = median["revproxy"]
        out[fig.key] = {
            "label": fig.label, "unit": fig.unit, "higher_is_better": fig.higher_is_better,
            "values": values, "median": median,
            "revproxy/v2ray": _ratio(rp, median["v2ray"]),
            "revproxy/direct": _ratio(rp, median["direct"]),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(summary: dict) -> str:
    """A Markdown table: medians, then revproxy/V2Ray and revproxy/direct (↑/↓ = better)."""
    head = ["figure", "unit", *(TITLES[s] for s in SYSTEMS), "revproxy/V2Ray", "revproxy/direct"]
    rows = [head, ["---", "---", *["---:"] * (len(head) - 2)]]
    for fig in summary.values():
        arrow = "↑" if fig["higher_is_better"] else "↓"
        rows.append([f"{fig['label']} {arrow}", fig["unit"],
                     *(_fmt(fig["median"][s]) for s in SYSTEMS),
                     _fmt(fig["revproxy/v2ray"]), _fmt(fig["revproxy/direct"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                   strict=True))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _git_commit(root: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "revproxy"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head}{' (revproxy/ modified)' if dirty else ''}" if head else "unknown"


def machine_info(root: Path) -> dict:
    import psutil

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gevent": _version("gevent"),
        "cryptography": _version("cryptography"),
        "psutil": _version("psutil"),
        "revproxy": f"{_version('revproxy')} @ {_git_commit(root)}",
        "v2ray": _first_line(["v2ray", "-version"]),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "curl": _first_line(["curl", "--version"]),
    }


def chart(summary: dict, path: Path) -> Path | None:
    """A bar chart of revproxy's ratios, if matplotlib is importable; None otherwise."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k, f in summary.items() if f["revproxy/v2ray"] or f["revproxy/direct"]]
    if not keys:
        return None
    labels = [f"{summary[k]['label']} {'↑' if summary[k]['higher_is_better'] else '↓'}"
              for k in keys]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(keys) + 1.5))
    ys = range(len(keys))
    for offset, (ratio, name) in ((-0.2, ("revproxy/v2ray", "revproxy / V2Ray")),
                                  (0.2, ("revproxy/direct", "revproxy / direct"))):
        ax.barh([y + offset for y in ys], [summary[k][ratio] or float("nan") for k in keys],
                height=0.4, label=name)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (↑: higher is better, ↓: lower is better)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
