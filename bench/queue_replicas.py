"""Queue endpoints on PostgreSQL: jobs/s end to end with one and with two lbproxy replicas on one database, next
to SQLite in the same run, and the dispatch latency to a waiting worker on the same replica and across
replicas (the job committed on one replica, its NOTIFY waking a worker's long poll on the other).

PostgreSQL is a real server started here (Debian's ``postgresql``, tests/queue/pg_server.py) with fsync on, so
a job is as durable when /run answers as with SQLite's fsynced WAL; it runs unpinned. Every lbproxy replica is
pinned to the first core, the lean workers (bench/queue_worker.py) and the load to the second, as in
bench/queue_jobs.py, whose pieces this reuses. Two replicas therefore share lbproxy's one core: the figure is
what coordination through the database costs, not a scale-out (the per-CPU-second figures say what one core of
each part sustains).

    .venv/bin/python bench/queue_replicas.py [--jobs 10000] [--workers 4] [--samples 200] [--quick] [--json F]

Prints the figures; no assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from queue_jobs import ROOT, Endpoint, dispatch, free_port, load_arguments, settle, throughput

sys.path.insert(0, str(ROOT))
from tests.queue.pg_server import PgServer  # the tests' server: both start it one way


def _ticks(pid: int, children: bool) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)


def tree_cpu(root: int) -> Callable[[], float]:
    """CPU seconds of the postmaster and its backends (the exited ones are in the postmaster's children's time)."""
    def seconds() -> float:
        total = _ticks(root, children=True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                        total += _ticks(int(entry.name), children=False)
                except (OSError, ValueError):
                    continue  # a backend that just exited
        return total / os.sysconf("SC_CLK_TCK")
    return seconds


async def run(label: str, eps: list[Endpoint], args: argparse.Namespace, pg_cpu: Callable[[], float] | None,
              submit_to: Endpoint | None = None, jobs: bool = True) -> dict[str, Any]:
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=300)) as session:
            for ep in eps:
                await ep.wait_ready(session)
            out: dict[str, Any] = {"scenario": label, "replicas": len(eps)}
            if jobs:
                out["throughput"] = await throughput(eps, session, args.jobs, args.submitters, pg_cpu)
            out["dispatch"] = await dispatch(submit_to or eps[0], session, args.samples)
            return out
    finally:
        for ep in eps:
            ep.stop()


async def scenarios(args: argparse.Namespace, data: Path, pg: PgServer) -> list[dict[str, Any]]:
    cpus = (str(args.cpus[0]), str(args.cpus[1]))
    os.sched_setaffinity(0, {args.cpus[1]})  # the load generator stays off lbproxy's core
    n, batch = args.workers, args.batch
    pg_cpu = tree_cpu(pg.pid())
    results = [await run("sqlite", [Endpoint("lean", n, batch, data, cpus, name="bench-sqlite")], args, None)]
    url = pg.new_database()
    results.append(await run("postgresql", [Endpoint("lean", n, batch, data, cpus, store=url, name="bench-pg1")],
                             args, pg_cpu))
    # Two replicas, half the workers each (workers.max is the endpoint's total: the leader counts the others').
    url = pg.new_database()
    two = [Endpoint("lean", n, batch, data, cpus, store=url, name="bench-pg2", tag=f"bench-pg2-{r}",
                    active=n // 2, maximum=n) for r in "ab"]
    results.append(await run("postgresql", two, args, pg_cpu))
    # Across replicas: a submits, only b has a worker (a's max is taken by b's worker), so every job reaches
    # b's waiting long poll by NOTIFY, and its result comes back to a's /runsync by NOTIFY too.
    url = pg.new_database()
    a = Endpoint("lean", 1, batch, data, cpus, store=url, name="bench-pgx", tag="bench-pgx-a", active=0, maximum=1)
    b = Endpoint("lean", 1, batch, data, cpus, store=url, name="bench-pgx", tag="bench-pgx-b", active=1, maximum=1)
    results.append(await run("postgresql, across replicas", [a, b], args, pg_cpu, submit_to=a, jobs=False))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_arguments(parser, 10000, "lean workers in all (split over two replicas)")
    args = parser.parse_args()
    settle(args, 300, 10)
    data = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    load = os.getloadavg()[0]
    pg = PgServer(free_port(), durable=True)
    try:
        pg.init()
        pg.start()
        version = pg.sql("SHOW server_version")
        runs = asyncio.run(scenarios(args, data, pg))
    finally:
        pg.close()
        shutil.rmtree(data, ignore_errors=True)
    print(f"queue replicas benchmark: lbproxy replicas on cpu {args.cpus[0]}, {args.workers} lean workers and the "
          f"load on cpu {args.cpus[1]}, PostgreSQL {version} (fsync on) unpinned, SQLite WAL fsynced; "
          f"{args.submitters} submitters; load average {load:.1f} at start")
    for r in runs:
        label = f"{r['scenario']}, {r['replicas']} replica{'s' if r['replicas'] > 1 else ''}"
        if "throughput" in r:
            t = r["throughput"]
            db = (f", PostgreSQL {t['other_cpu_seconds']:.2f} CPU-s = {t['jobs'] / t['other_cpu_seconds']:,.0f} "
                  "jobs per its CPU-second") if t.get("other_cpu_seconds") else ""
            print(f"  {label}: {t['jobs']} jobs /run -> worker -> result in {t['seconds']:.2f}s = "
                  f"{t['jobs_per_s']:,.0f} jobs/s; lbproxy {t['lbproxy_cpu_seconds']:.2f} CPU-s = "
                  f"{t['jobs_per_cpu_second']:,.0f} jobs per its CPU-second{db}")
        d = r["dispatch"]
        print(f"  {label}: /runsync -> handler start on a waiting worker p50 {d['p50_ms']:.2f} ms, "
              f"p90 {d['p90_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms ({d['samples']} samples)")
    if args.json:
        args.json.write_text(json.dumps({"setup": {"load_average": load, "postgresql": version,
                                                   "cpus": args.cpus, "workers": args.workers}, "runs": runs},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
