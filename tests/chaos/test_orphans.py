"""No orphaned GPU processes: local workers die with lbproxy even on SIGKILL, and a restarted lbproxy stops what an
earlier one left (issue 10, section 4)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap

import pytest

from ..conftest import base_config, launch, pid_alive, until

# A worker with a child in its process group (as a model loader forked by an ML server), which ignores SIGTERM.
# It serves nothing: workers.active starts it regardless, and the test only watches processes.
_PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen(["bash", "-c", "trap '' TERM; while :; do sleep 1; done"])
    print("CHILD", child.pid, flush=True)
    time.sleep(3600)
""")
_CHILD = re.compile(r"\| CHILD (\d+)")


def _config(n: int = 2) -> dict:
    return base_config(workers={"active": n, "max": n},
                       worker={"command": [sys.executable, "-c", _PARENT], "stop_grace": "1s"})


async def _processes(ep, n: int) -> tuple[list[int], list[int], list[int]]:
    """(worker pids, their guards' pids, their children's pids) once all n workers run."""
    workers = await ep.wait_workers(lambda ws: len(ws) == n, f"{n} workers", timeout=20)
    await until(lambda: len(_CHILD.findall(ep.log())) >= n, 20, "each worker's child")
    return ([w["pid"] for w in workers], [w["process_group"] for w in workers],
            [int(pid) for pid in _CHILD.findall(ep.log())])


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_workers_and_their_children_die_with_a_sigkilled_lbproxy(tmp_path):
    ep = await launch(_config(), tmp_path)
    workers, guards, children = await _processes(ep, 2)
    try:
        ep.proc.kill()  # the OOM killer
        ep.proc.wait(5)
        every = workers + guards + children
        # The children ignore SIGTERM: the guards SIGKILL them after worker.stop_grace (1 s).
        await until(lambda: not any(pid_alive(p) for p in every), 15, "every worker process to exit")
    finally:
        _kill(workers + guards + children)


@pytest.mark.slow
async def test_a_restarted_lbproxy_stops_the_processes_an_earlier_one_left(tmp_path):
    ep = await launch(_config(), tmp_path)
    workers, guards, children = await _processes(ep, 2)
    later = None
    try:
        # The guards die too (the worst case): the workers follow them, their children stay. Frozen first, so
        # that none acts on lbproxy's death (it would stop its whole group) before it is killed itself.
        for guard in guards:
            os.kill(guard, signal.SIGSTOP)
        ep.proc.kill()
        ep.proc.wait(5)
        _kill(guards)
        await until(lambda: not any(pid_alive(p) for p in workers), 10, "the workers to die with their guards")
        await asyncio.sleep(0)
        assert all(pid_alive(p) for p in children), "the test needs orphans to clean up"
        later = await launch(_config(n=1), tmp_path)  # the same endpoint and data directory
        await until(lambda: not any(pid_alive(p) for p in children), 15, "the leftovers to be stopped")
        await until(lambda: re.search(r"stopped \d+ process\(es\) left running by an earlier lbproxy", later.log()),
                    10, "the log line of the clean-up")
        mine = (await later.wait_workers(lambda ws: len(ws) == 1, "its own worker"))[0]
        assert pid_alive(mine["pid"]), "a restart must not stop its own new workers"
    finally:
        _kill(workers + guards + children)
        if later is not None:
            assert later.terminate() == 0
