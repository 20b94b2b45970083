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


def cores() -> int:
    return len(os.sched_getaffinity(0))


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
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

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
