"""The local backend: each worker is a process group on this machine, listening on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..paths import endpoint_file
from .base import StartFailed, WorkerAddress, WorkerEvents
from .gpus import GpuSlices, visible_gpus
from .leftovers import WorkerRecord
from .output import OutputLevels

log = logging.getLogger("lbproxy.backend.local")
worker_log = logging.getLogger("lbproxy.worker")

_LOOPBACK = "127.0.0.1"
GUARD = str(Path(__file__).with_name("guard.py"))
GUARD_TIMEOUT = 10.0  # for the guard to fork the worker and say its pid


def free_port() -> int:
    """A loopback port nobody listens on right now (the worker binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(eq=False)
class _Process:
    id: str
    proc: asyncio.subprocess.Process  # the guard, leader of the worker's process group
    pid: int  # the worker itself (the guard's child)
    lifeline: socket.socket  # while lbproxy holds it open, the guard lets the worker run
    tasks: tuple[asyncio.Task[None], ...] = ()
    stopping: bool = False


class LocalBackend:
    """Starts ``worker.command`` once per worker in its own session (process group), under a guard that stops
    the group if lbproxy dies (``guard.py``); a state file lets the next start stop what a crash left."""

    def __init__(
        self, config: Config, events: WorkerEvents, environ: Mapping[str, str] | None = None,
        worker_env: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        """``worker_env(worker_id)``: extra variables for one worker (a queue worker's own URLs and secret)."""
        environ = os.environ if environ is None else environ
        command = config.worker.command
        if not command:
            raise StartFailed("worker.command: required with the local backend")
        self._argv = list(command)
        self._events = events
        self._prefix = config.name
        self._grace = config.worker.stop_grace
        health_port = config.worker.health_port
        self._separate_health = health_port is not None and health_port != config.worker.port
        # Workers find the interpreter (and packages) lbproxy runs with first, as in an activated venv,
        # so that `python3 worker.py` works right after `pip install lbproxy` in a virtualenv.
        path = os.pathsep.join([os.path.dirname(sys.executable), environ.get("PATH", os.defpath)])
        self._env = {**environ, **config.worker.env, "PATH": path}
        self._record = WorkerRecord(endpoint_file(config.name, "workers.json", environ))
        self._record_opened = False
        self._worker_env = worker_env
        self._processes: dict[str, _Process] = {}
        self._seq = 0
        self._gpus: GpuSlices | None = None
        self.notices: list[str] = []
        gpus = config.workers.gpus
        visible = visible_gpus(environ) if gpus else None
        # The default (1) on a machine without GPUs (a laptop) is no news; a value the file sets is.
        if gpus and visible is None and config.set_in_file("workers.gpus"):
            self.notices.append(
                f"workers.gpus: {gpus} is ignored: no GPU is visible (no CUDA_VISIBLE_DEVICES, no nvidia-smi)"
            )
        elif gpus and visible is not None:
            need = gpus * config.workers.max
            if need > len(visible):
                raise StartFailed(
                    f"workers.gpus: {config.workers.max} workers x {gpus} GPUs need {need} GPUs but only "
                    f"{len(visible)} are visible ({','.join(visible)}); lower workers.max or workers.gpus"
                )
            self._gpus = GpuSlices(visible, gpus)

    async def clean_up_leftovers(self) -> None:
        """Stop the workers an earlier lbproxy of this endpoint left behind (a crash), before starting any."""
        self._record_opened = True
        stopped = await asyncio.get_running_loop().run_in_executor(None, self._record.open, self._grace)
        if stopped:
            log.warning("stopped %d process(es) left running by an earlier lbproxy of this endpoint (pids %s)",
                        len(stopped), ", ".join(map(str, stopped)))

    async def start_worker(self) -> None:
        if not self._record_opened:
            await self.clean_up_leftovers()
        self._seq += 1
        wid = f"{self._prefix}-{self._seq}-{secrets.token_hex(2)}"
        port = free_port()
        health = free_port() if self._separate_health else port
        env = {**self._env, "PORT": str(port), "PORT_HEALTH": str(health), "LBPROXY_WORKER_ID": wid}
        if self._worker_env is not None:
            env.update(self._worker_env(wid))
        if self._gpus is not None:
            devices = self._gpus.take(wid)
            if devices is None:
                raise StartFailed("every GPU slice is in use")
            env["CUDA_VISIBLE_DEVICES"] = devices
        try:
            proc, pid, lifeline = await self._spawn(env)
        except StartFailed:
            if self._gpus is not None:
                self._gpus.give_back(wid)
            raise
        p = _Process(wid, proc, pid, lifeline)
        self._processes[wid] = p
        self._record.started(wid, proc.pid)
        log.info("worker %s started: pid %d, port %d, health port %d", wid, pid, port, health)
        self._events.worker_added(WorkerAddress(wid, _LOOPBACK, port, health))
        p.tasks = (asyncio.create_task(self._pump_output(p)), asyncio.create_task(self._watch(p)))

    async def _spawn(self, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int, socket.socket]:
        """The guard (a new session: the worker's process group) and, through it, the worker; its pid comes back
        on the lifeline."""
        if shutil.which(self._argv[0], path=env["PATH"]) is None:
            raise StartFailed(f"worker.command {self._argv[0]!r} could not start: no such executable")
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-S", GUARD, str(theirs.fileno()), str(self._grace), "--", *self._argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop reaches the worker's children too
                pass_fds=(theirs.fileno(),),
                limit=1 << 20,
            )
        except OSError as exc:
            ours.close()
            raise StartFailed(f"worker.command {self._argv[0]!r} could not start: {exc.strerror or exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        line = b""
        try:
            async with asyncio.timeout(GUARD_TIMEOUT):
                while not line.endswith(b"\n"):
                    data = await asyncio.get_running_loop().sock_recv(ours, 64)
                    if not data:
                        break
                    line += data
            pid = int(line)
        except (TimeoutError, ValueError, OSError):
            ours.close()
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise StartFailed(f"worker.command {self._argv[0]!r} could not start: its guard process did not "
                              f"start it (said {line!r})") from None
        return proc, pid, ours

    async def _pump_output(self, p: _Process) -> None:
        stream = p.proc.stdout
        assert stream is not None
        levels = OutputLevels()
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: log what we have and go on
                line = await stream.read(1 << 20)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            worker_log.log(levels.level(text), "%s | %s", p.id, text)

    async def _watch(self, p: _Process) -> None:
        rc = await p.proc.wait()
        _killpg(p.proc.pid, signal.SIGKILL)  # leftovers of the worker's group must not outlive it
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(p.tasks[0])
        self._processes.pop(p.id, None)
        p.lifeline.close()
        self._record.exited(p.id)
        if self._gpus is not None:
            self._gpus.give_back(p.id)
        reason = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        log.info("worker %s (pid %d) exited: %s", p.id, p.pid, reason)
        self._events.worker_exited(p.id, reason)

    async def stop_worker(self, worker_id: str) -> bool:
        p = self._processes.get(worker_id)
        if p is None:
            return True
        p.stopping = True
        _killpg(p.proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._grace):
                await asyncio.shield(p.tasks[1])
        except TimeoutError:
            log.warning("worker %s did not stop within %.0fs of SIGTERM: SIGKILL", worker_id, self._grace)
            _killpg(p.proc.pid, signal.SIGKILL)
            await asyncio.shield(p.tasks[1])
        return True

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        return None  # one proxy: the pool's own DRAINING state is the whole story

    async def close(self) -> None:
        await asyncio.gather(*(self.stop_worker(wid) for wid in list(self._processes)))
        self._record.close()

    @property
    def pending_starts(self) -> int:
        return 0  # a local worker is reported before start_worker returns

    def describe(self, worker_id: str) -> dict[str, object]:
        p = self._processes.get(worker_id)
        return {"pid": p.pid, "process_group": p.proc.pid} if p is not None else {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values()]


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
