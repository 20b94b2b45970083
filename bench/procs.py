"""Processes the benchmark starts: each in its own process group, pinned to a core, stopped whatever happens.

Every process goes through one :class:`Processes` registry. ``stop_all`` runs from ``run.py``'s ``finally``,
from ``atexit`` and on SIGTERM/SIGINT. Stopping a process also stops what it started in other process groups
(lbproxy starts each worker in a session of its own): the descendants are listed *before* the signal, because
once their parent is gone they are re-parented to init and no longer look like ours.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE towards ``want`` (children inherit it); returns the (soft, hard) limits in force.

    Root may raise the hard limit too (up to fs.nr_open); anyone may raise the soft limit up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is index 0, ppid 1, pgid 2)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(") ", 1)[1].split()


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), whatever their process group."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        fields = _stat_fields(p)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(p)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    out = []
    for p in _all_pids():
        fields = _stat_fields(p)
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(p)
    return out


def rss_kib(pids: Iterable[int]) -> int:
    """Resident set size (VmRSS) summed over ``pids``, in KiB; processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def open_fds(pids: Iterable[int]) -> int:
    """Open file descriptors summed over ``pids`` (sockets included)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def wait_fds(pids: Sequence[int], at_most: int, timeout: float) -> bool:
    """Wait until ``pids`` hold at most ``at_most`` descriptors (closed connections really released)."""
    deadline = time.monotonic() + timeout
    while open_fds(pids) > at_most:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


_HZ = os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat.

    Interrupt time (irq, softirq) is left out: the kernel charges it to no process, and on loopback it is the
    bench's own packets.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system) / _HZ, steal / _HZ


def _core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) clock ticks since boot; busy is everything but idle and iowait (irq included)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines()[1:]:
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        fields = [int(v) for v in values]
        total = sum(fields[:8])
        out[int(name[3:])] = (total - fields[3] - fields[4], total)
    return out


def _cpu_by_pid(pids: Iterable[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return out


def _kernel_threads() -> list[int]:
    """Children of kthreadd: under heavy loopback traffic, ksoftirqd and kworkers do part of the bench's work."""
    out = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and fields[1] == "2":
            out.append(pid)
    return out


def _own_cpu() -> float:
    t = os.times()  # this process and every child it has waited for (load generators, stopped servers)
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """The CPU time that went to other processes than the bench's while it measured (other people's work on a
    shared machine), and the time the hypervisor took (steal): both make a row noisy, so each run says so.

    The bench's own: this process and its reaped children, the live servers ``pids`` (not in ``os.times()``
    until reaped) and the kernel threads (which handle the bench's loopback traffic).
    """

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self.busy, self.steal = _machine_cpu()
        self.own = _own_cpu()
        self.ticks = _cpu_by_pid([*self.pids, *_kernel_threads()])
        self.cores = _core_ticks()

    def stop(self) -> dict[str, Any]:
        """Other processes' and the hypervisor's CPU seconds; ``core_busy``: each core's busy share (of all
        processes, interrupts included), which says whether the load generator's core had room left."""
        cores = _core_ticks()
        core_busy = {str(c): round((b - self.cores[c][0]) / max(1, t - self.cores[c][1]), 3)
                     for c, (b, t) in cores.items() if c in self.cores}
        busy, steal = _machine_cpu()
        ticks = _cpu_by_pid([*self.pids, *_kernel_threads()])
        own = _own_cpu() - self.own + sum(t - self.ticks.get(pid, 0) for pid, t in ticks.items()) / _HZ
        return {"other_cpu_s": round(max(0.0, (busy - self.busy) - own), 3),
                "steal_cpu_s": round(steal - self.steal, 3), "core_busy": core_busy}


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with code {proc.returncode} before port {port} opened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout:g}s")
        time.sleep(0.02)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, status: int = 200) -> bytes:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            code, body = http_get(url, timeout=2.0)
            if code == status:
                return body
            last = f"status {code}"
        except OSError as exc:
            last = str(exc)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with code {proc.returncode} ({url}: {last})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer {status} within {timeout:g}s ({last})")
        time.sleep(0.05)


@dataclass
class Processes:
    """Starts processes in their own process groups, optionally pinned with ``taskset -c``, and stops them."""

    log_dir: Path
    pin: bool
    loadgen_cpu: int = 0  # the load generator (and the bench itself)
    server_cpu: int = 1  # the proxy under test and the worker
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # every pid started or learned of (lbproxy's workers)

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; its output goes to ``log_dir/name.log`` unless ``stdout`` is given."""
        full = [*(["taskset", "-c", str(cpu)] if self.pin and cpu is not None else []), *argv]
        log = open(self.log_dir / f"{name}.log", "ab")  # the child keeps its own copy of the descriptor
        try:
            proc = subprocess.Popen(
                full, env={**os.environ, **(env or {})}, stdin=stdin,
                stdout=stdout if stdout is not None else log, stderr=log, start_new_session=True,
            )
        finally:
            log.close()
        self.started.append(proc)
        self.seen.add(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """SIGTERM the process group (SIGKILL after ``grace``), then kill what it left in other groups."""
        if proc.poll() is None:
            below = descendants(proc.pid)
            _killpg(proc.pid, sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            for pid in below:
                if alive(pid):
                    with contextlib.suppress(OSError):
                        _killpg(os.getpgid(pid), signal.SIGKILL)
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        else:
            _killpg(proc.pid, signal.SIGKILL)  # a group leader that exited may have left members behind
        with contextlib.suppress(ValueError):
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=5.0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
