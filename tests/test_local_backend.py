"""The local backend with real processes: environment, GPU slices, process groups, stop escalation."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from lbproxy.backends.base import StartFailed, WorkerAddress
from lbproxy.backends.gpus import GpuSlices
from lbproxy.backends.local import LocalBackend
from lbproxy.config import parse_config

from .conftest import pid_alive, until

PRINT_ENV = "import os; print('ENV', os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['PORT'], " \
            "os.environ['PORT_HEALTH'], os.environ['LBPROXY_WORKER_ID'], os.environ.get('EXTRA'), flush=True)"


class Events:
    def __init__(self) -> None:
        self.added: list[WorkerAddress] = []
        self.exited: dict[str, str] = {}

    def worker_added(self, address: WorkerAddress) -> None:
        self.added.append(address)

    def worker_exited(self, worker_id: str, reason: str) -> None:
        self.exited[worker_id] = reason


def config(command: list[str], **extra):
    return parse_config({"name": "lb", "worker": {"command": command, **extra.pop("worker", {})}, **extra},
                        environ={})


async def test_each_worker_gets_its_own_gpu_slice_ports_and_env(caplog):
    caplog.set_level("INFO", "lbproxy.worker")
    events = Events()
    backend = LocalBackend(
        config([sys.executable, "-c", PRINT_ENV + "; import time; time.sleep(60)"],
               workers={"gpus": 2, "max": 2}, worker={"env": {"EXTRA": "x"}}),
        events, environ={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
    )
    await backend.start_worker()
    await backend.start_worker()
    with pytest.raises(StartFailed):
        await backend.start_worker()  # both slices in use
    await until(lambda: caplog.text.count("| ENV") == 2, 10, "both workers' output")
    lines = sorted(line.split("| ENV ")[1] for line in caplog.text.splitlines() if "| ENV" in line)
    devices = sorted(line.split()[0] for line in lines)
    assert devices == ["0,1", "2,3"]
    by_id = sorted(lines, key=lambda x: x.split()[3])
    for a, line in zip(sorted(events.added, key=lambda a: a.id), by_id, strict=True):
        _, port, health, wid, extra = line.split()
        assert (int(port), int(health), wid, extra) == (a.port, a.health_port, a.id, "x")
        assert a.port == a.health_port  # one port unless worker.health_port differs
    await backend.close()
    assert set(events.exited) == {a.id for a in events.added}


def test_more_gpus_than_visible_is_an_error_at_start():
    with pytest.raises(StartFailed, match=r"workers\.gpus"):
        LocalBackend(config(["true"], workers={"gpus": 2, "max": 3}), Events(),
                     environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})


def test_gpus_set_in_the_file_are_reported_as_ignored_when_none_is_visible():
    backend = LocalBackend(config(["true"], workers={"gpus": 1}), Events(), environ={"PATH": "/nonexistent"})
    assert any("workers.gpus" in n and "ignored" in n for n in backend.notices)


def test_the_default_gpus_on_a_machine_without_gpus_is_no_notice():
    """Issue 10: every laptop run warned that `workers.gpus: 1`, which nobody had set, was ignored."""
    backend = LocalBackend(config(["true"]), Events(), environ={"PATH": "/nonexistent"})
    assert backend.notices == []


def test_gpu_slices_are_given_back():
    slices = GpuSlices(["0", "1", "2"], 1)
    assert [slices.take("a"), slices.take("b"), slices.take("c"), slices.take("d")] == ["0", "1", "2", None]
    slices.give_back("b")
    assert slices.take("e") == "1"


async def test_stop_escalates_to_sigkill_and_reaches_the_whole_process_group():
    # The worker ignores SIGTERM and has a child: both must be gone after stop.
    script = ("import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
              "print('CHILD', child.pid, flush=True); time.sleep(60)")
    events = Events()
    backend = LocalBackend(config([sys.executable, "-c", script], worker={"stop_grace": "0.5s"}), events,
                           environ=dict(os.environ))
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("lbproxy.worker").addHandler(handler)
    logging.getLogger("lbproxy.worker").setLevel("INFO")
    try:
        await backend.start_worker()
        [pid] = backend.pids
        await until(lambda: any("CHILD" in m for m in seen), 10, "the child pid")
        child = int(next(m for m in seen if "CHILD" in m).split("CHILD ")[1])
        await asyncio.wait_for(backend.stop_worker(events.added[0].id), 10)
        assert events.exited[events.added[0].id] == "killed by SIGKILL"
        # The group's SIGKILL reaches the worker and its guard at once, but on a busy machine the worker may
        # finish dying just after the guard's exit is seen.
        await until(lambda: not pid_alive(pid), 5, "the worker to die with its group")
        await until(lambda: not pid_alive(child), 5, "the worker's child to die with its group")
    finally:
        logging.getLogger("lbproxy.worker").removeHandler(handler)
        await backend.close()


async def test_a_command_that_cannot_start_raises_start_failed():
    backend = LocalBackend(config(["/nonexistent/worker"]), Events(), environ=dict(os.environ))
    with pytest.raises(StartFailed, match="could not start"):
        await backend.start_worker()


@pytest.mark.parametrize(("script", "reason"), [
    ("import sys; sys.exit(7)", "exit code 7"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV"),
])
async def test_the_worker_exit_reaches_lbproxy_through_its_guard_unchanged(script, reason):
    events = Events()
    backend = LocalBackend(config([sys.executable, "-c", script]), events, environ=dict(os.environ))
    try:
        await backend.start_worker()
        await until(lambda: events.exited, 10, "the worker's exit")
        assert list(events.exited.values()) == [reason]
    finally:
        await backend.close()


async def test_status_names_the_worker_itself_and_killing_it_is_seen_at_once():
    events = Events()
    backend = LocalBackend(config([sys.executable, "-c", "import time; time.sleep(60)"]), events,
                           environ=dict(os.environ))
    try:
        await backend.start_worker()
        wid = events.added[0].id
        facts = backend.describe(wid)
        assert facts["pid"] != facts["process_group"]  # the worker, not its guard (the group's leader)
        os.kill(facts["pid"], 9)
        await until(lambda: wid in events.exited, 10, "the exit")
        assert events.exited[wid] == "killed by SIGKILL"
        assert not pid_alive(facts["process_group"])
    finally:
        await backend.close()
