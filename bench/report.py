"""Results: medians, spreads and ratios per row, the targets, the machine's facts and the JSON file.

A row (:class:`Metric`) holds one value per repetition for each column that ran ("direct", the peers
"nginx", "haproxy", "caddy", and "lbproxy"). ``table.py`` prints them.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = ("direct", "nginx", "haproxy", "caddy", "lbproxy")
BASES = ("nginx", "haproxy", "caddy", "direct")  # lbproxy's ratio against each, in the table's order


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, column: str, value: float) -> None:
        self.values.setdefault(column, []).append(value)

    def median(self, column: str) -> float | None:
        vals = self.values.get(column)
        return statistics.median(vals) if vals else None

    def spread(self, column: str) -> float | None:
        vals = self.values.get(column)
        med = self.median(column)
        if not vals or not med:
            return None
        return (max(vals) - min(vals)) / abs(med)

    def ratio(self, column: str, base: str) -> float | None:
        a, b = self.median(column), self.median(base)
        return a / b if a is not None and b else None

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "values": self.values,
            "median": {c: self.median(c) for c in COLUMNS if c in self.values},
            "spread": {c: self.spread(c) for c in COLUMNS if c in self.values},
            "ratio": {f"lbproxy/{b}": self.ratio("lbproxy", b) for b in BASES},
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Target:
    name: str
    limit: str
    value: Callable[[dict[str, Metric]], float | None]
    met: Callable[[float], bool]
    unit: str
    scale: str = ""  # the memory scenario whose connection count must reach the target's for a verdict


def _median(key: str, column: str) -> Callable[[dict[str, Metric]], float | None]:
    return lambda ms: ms[key].median(column) if key in ms else None


def _first_median(keys: tuple[str, ...], column: str) -> Callable[[dict[str, Metric]], float | None]:
    return lambda ms: next((ms[k].median(column) for k in keys if k in ms), None)


def _ratio_of(key: str, base: str = "nginx") -> Callable[[dict[str, Metric]], float | None]:
    return lambda ms: ms[key].ratio("lbproxy", base) if key in ms else None


def _added(key: str) -> Callable[[dict[str, Metric]], float | None]:
    def value(ms: dict[str, Metric]) -> float | None:
        if key not in ms:
            return None
        a, b = ms[key].median("lbproxy"), ms[key].median("direct")
        return a - b if a is not None and b is not None else None

    return value


# The goals of issue 11 ("Speed"), and the earlier ones it keeps (p99, idle clients, controller tick).
TARGETS = (
    Target("throughput, small keep-alive GETs, lbproxy/nginx", ">= 0.5x", _ratio_of("throughput.rps"),
           lambda v: v >= 0.5, "x"),
    Target("throughput, small keep-alive GETs, lbproxy/caddy", ">= 2.5x", _ratio_of("throughput.rps", "caddy"),
           lambda v: v >= 2.5, "x"),
    Target("64 KiB responses, lbproxy/nginx", ">= 0.5x", _ratio_of("body_64k.mbps"), lambda v: v >= 0.5, "x"),
    Target("1 MiB responses, lbproxy/nginx", ">= 0.5x", _ratio_of("body_1m.mbps"), lambda v: v >= 0.5, "x"),
    Target("added latency at 1 connection, p50", "<= 0.1 ms", _added("latency.p50"), lambda v: v <= 0.1, "ms"),
    Target("added latency at 1 connection, p99", "<= 1 ms", _added("latency.p99"), lambda v: v <= 1.0, "ms"),
    Target("WebSocket echo, 1 KiB, 64 sessions, lbproxy/nginx", ">= 0.7x", _ratio_of("ws_echo.mps"),
           lambda v: v >= 0.7, "x"),
    Target("10,000 open WebSockets, RSS", "<= 150 MB",
           _first_median(("websockets.rss_at_target", "websockets.rss"), "lbproxy"), lambda v: v <= 150, "MB",
           scale="websockets"),
    Target("1,000 idle keep-alive clients, RSS over idle", "<= 50 MB", _median("idle.delta", "lbproxy"),
           lambda v: v <= 50, "MB", scale="idle"),
    Target("scale-from-zero, /ping 200 -> first byte", "<= 50 ms", _median("cold_start.ms", "lbproxy"),
           lambda v: v <= 50, "ms"),
    Target("controller tick, 1,000 workers, per decision", "<= 5 ms", _median("tick.ms", "lbproxy"),
           lambda v: v <= 5, "ms"),
)


def evaluate_targets(metrics: list[Metric], full_scale: dict[str, bool]) -> list[dict[str, Any]]:
    """Each target with its value; ``full_scale`` says whether a memory scenario ran at the target's size."""
    by_key = {m.key: m for m in metrics}
    out = []
    for t in TARGETS:
        value = t.value(by_key)
        comparable = full_scale.get(t.scale, True) if t.scale else True
        out.append({
            "target": t.name, "limit": t.limit, "value": value, "unit": t.unit,
            "met": None if value is None or not comparable else t.met(value),
            "note": "" if comparable else "ran with fewer connections than the target: not comparable",
        })
    return out


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout + out.stderr).strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_facts(root: Path, peers: dict[str, str | None], wrk: str | None, usable: list[int]) -> dict[str, Any]:
    """The machine and software the run measured; ``peers`` maps each peer to its version (None: absent)."""
    import aiohttp

    import lbproxy

    git = _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = bool(_run(["git", "-C", str(root), "status", "--porcelain", "--", "lbproxy"]))
    wrk_version = _run([wrk, "-v"]).splitlines()[0] if wrk else None
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cpus_usable": usable,  # before the bench pinned itself
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "aiohttp": aiohttp.__version__,
        "httptools": _version("httptools"),
        "uvloop": _version("uvloop"),  # lbproxy serve runs on it when installed
        "lbproxy": lbproxy.__version__,
        "lbproxy_git": f"{git}{' (lbproxy/ modified)' if dirty else ''}" if git else None,
        **peers,
        "picows": _version("picows"),
        "wrk": wrk_version.split(" Copyright")[0].removeprefix("wrk ") if wrk_version else None,
    }


def write_json(out_dir: Path, data: dict[str, Any]) -> Path:
    """``out_dir/<UTC timestamp>-<hostname>.json``, written whole (through a .tmp file, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"{stamp}-{socket.gethostname()}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
