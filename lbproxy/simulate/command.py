"""``lbproxy simulate CONFIG --trace TRACE [--set k=v ...] [--grid k=v1,v2 ...] [--out DIR] [--json]``.

Exit codes: 0 ok; 2 bad input (the config, a --set/--grid key or value, the trace, an option), one line per
problem naming the key, the line or the option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from ..config import ConfigError, _read_yaml, load_config
from ..durations import format_duration, parse_duration
from .advice import advise
from .coldstart import parse_cold_start
from .endpoint import Model, simulate
from .grid import SettingsError, expand
from .report import Report, write_outputs
from .traces import SYNTHETIC, TraceError, load_trace

__all__ = ["add_arguments", "run"]

EXIT_INVALID = 2
DEFAULT_COLD_START = "30s"
DEFAULT_STOP_TIME = "1s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--trace", required=True, metavar="TRACE",
                   help=f"a CSV/JSONL file of arrival_s,service_s, an lbproxy access log, or a built-in trace "
                        f"({', '.join(SYNTHETIC)}; parameters as bursty:duration=2h,seed=7)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="change one setting for every run (e.g. timeouts.idle=10s)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", dest="grids",
                   help="simulate every value (several --grid: every combination)")
    p.add_argument("--cold-start", default=DEFAULT_COLD_START, metavar="DIST",
                   help="start-to-ready time of a worker: 30s, uniform(20s,40s), lognormal(30s,0.5), seq(1s,2s,...) "
                        f"(default {DEFAULT_COLD_START})")
    p.add_argument("--stop-time", default=DEFAULT_STOP_TIME, metavar="DURATION",
                   help=f"from stop to gone, billed (default {DEFAULT_STOP_TIME})")
    p.add_argument("--seed", type=int, default=0, help="seed of routing's ties and random cold starts (default 0)")
    p.add_argument("--target-p99", type=float, default=None, metavar="SECONDS",
                   help="recommend the cheapest setting whose p99 wait is at most this")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write results.csv, results.json, report.html and PNG plots (matplotlib) there")
    p.add_argument("--json", action="store_true", help="print one JSON object per setting instead of the table")


def _fail(lines: list[str], head: str | None, err: TextIO) -> int:
    if head:
        print(f"lbproxy: {head}", file=err)
    for line in lines:
        print(f"  {line}" if head else f"lbproxy: {line}", file=err)
    return EXIT_INVALID


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        load_config(args.config)
        base = _read_yaml(args.config, args.config)
    except ConfigError as exc:
        return _fail(exc.problems, f"{args.config} is not a valid config:", err)
    assert isinstance(base, dict)
    problems = []
    try:
        cold = parse_cold_start(args.cold_start)
    except ValueError as exc:
        problems.append(f"--cold-start: {exc}")
    try:
        stop = parse_duration(args.stop_time)
    except ValueError as exc:
        problems.append(f"--stop-time: {exc}")
    if args.target_p99 is not None and not args.target_p99 >= 0:
        problems.append("--target-p99: must be a number of seconds >= 0")
    if problems:
        return _fail(problems, None, err)
    try:
        settings = expand(base, args.sets, args.grids, cold, stop)
    except SettingsError as exc:
        return _fail(exc.problems, "invalid --set/--grid:", err)
    try:
        trace = load_trace(args.trace)
    except TraceError as exc:
        return _fail([str(exc)], None, err)

    if settings[0].config.type != "load_balancer":
        print(f"note: {args.config} is a {settings[0].config.type} endpoint: simulated as a load balancer "
              f"(jobs dispatched to workers as requests are)", file=err)
    outcomes = []
    for n, s in enumerate(settings, 1):
        if len(settings) > 1 and not args.json:
            print(f"simulating {n}/{len(settings)}: {', '.join(f'{k}={v}' for k, v in s.labels.items())}",
                  file=err, flush=True)
        outcomes.append(simulate(s.config, trace, Model(s.cold_start, s.stop_time, args.seed), s.labels))
    configs = [s.config for s in settings]
    cold_typical = settings[0].cold_start.typical
    advice = advise(outcomes, configs, cold_typical, trace.duration, args.target_p99)
    assumptions = {"config": args.config, "cold start": str(cold), "stop time": format_duration(stop),
                   "seed": str(args.seed)}
    report = Report(trace, outcomes, advice, assumptions)
    wall = sum(o.wall_seconds for o in outcomes)
    speed = (f"speed: {len(outcomes)} setting(s) x {len(trace):,} requests over {format_duration(trace.duration)} "
             f"simulated in {wall:.2f}s ({wall / len(outcomes):.2f}s per setting, "
             f"{len(trace) * len(outcomes) / wall if wall else 0:,.0f} requests/s)")
    text = report.text(speed)
    if args.json:
        for row in report.rows():
            print(json.dumps(row), file=out)
        print(speed, file=err)
    else:
        print(text, file=out)
    if args.out is not None:
        from . import plots

        plot = plots.write_plots if plots.available() else None
        try:
            written = write_outputs(args.out, report, text, plot)
        except OSError as exc:
            print(f"lbproxy: --out {args.out}: cannot write ({exc.strerror or exc})", file=err)
            return 1
        if plot is None:
            print(f"note: {plots.MISSING}", file=err)
        print(f"wrote {', '.join(written)}", file=err)
    return 0

