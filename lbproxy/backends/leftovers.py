"""Workers an earlier lbproxy of the same endpoint left running: found at start from a state file, and stopped.

The guard (``guard.py``) stops a worker when lbproxy dies; this is the second line, for what a guard could not
stop (the guard killed too, a worker child that outlived it). The file, ``<data dir>/<name>.workers.json``,
names each worker's process group with its start time and the boot it started in, so a process that merely
reuses an old pid is never signalled. A lock held while lbproxy runs keeps a second, concurrent lbproxy of the
same endpoint (same data directory) from stopping the first one's workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

log = logging.getLogger("lbproxy.backend.local")


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time in clock ticks since boot) from /proc/PID/stat, None when there is no such
    process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and parentheses
    try:
        return int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def members(pgid: int, began: int) -> list[int]:
    """The processes left of a recorded group: its leader (the guard) may be dead, its worker's children not.

    Only processes started no earlier than the recorded leader count; a leader pid now worn by another process
    (started at another time) means the whole group is long gone and the number was reused.
    """
    leader = _stat(pgid)
    if leader is not None and leader[1] != began:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] == pgid and stat[1] >= began and _running(int(entry.name)):
                found.append(int(entry.name))
    return found


class WorkerRecord:
    """The state file of one endpoint's local workers, rewritten (atomically) on every start and exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None
        self._groups: dict[str, tuple[int, int]] = {}  # worker id -> (process group id, its start time)
        self.enabled = False

    def open(self, grace: float) -> list[int]:
        """Take the lock, stop the leftovers of an earlier run; returns the pids stopped.

        Another live lbproxy holding the lock: its workers are left alone, and this run records nothing.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = (self.path.parent / (self.path.name + ".lock")).open("a+")
        except OSError as exc:
            log.warning("cannot keep the worker state file %s (%s): workers left by a crash are not cleaned up "
                        "at the next start", self.path, exc.strerror or exc)
            return []
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            log.warning("another lbproxy runs this endpoint with the same data directory (%s): its workers are "
                        "left alone, and this one's are not recorded for cleanup", self.path.parent)
            return []
        self._lock = lock
        self.enabled = True
        stopped = stop_leftovers(self._read(), grace)
        self._write()
        return stopped

    def _read(self) -> list[tuple[int, int]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(data, dict) or data.get("boot") != _boot_id():
            return []  # another boot: none of those processes exists any more
        groups = data.get("groups")
        if not isinstance(groups, list):
            return []
        return [(int(g[0]), int(g[1])) for g in groups
                if isinstance(g, list) and len(g) == 2 and all(isinstance(x, int) for x in g)]

    def _write(self) -> None:
        if not self.enabled:
            return
        data = {"boot": _boot_id(), "lbproxy": os.getpid(), "groups": [list(g) for g in self._groups.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the worker state file %s: %s", self.path, exc.strerror or exc)

    def started(self, worker_id: str, pgid: int) -> None:
        began = start_time(pgid)
        if began is not None:
            self._groups[worker_id] = (pgid, began)
            self._write()

    def exited(self, worker_id: str) -> None:
        if self._groups.pop(worker_id, None) is not None:
            self._write()

    def close(self) -> None:
        """At a clean shutdown every worker has been stopped: nothing is left to record."""
        self._groups.clear()
        self._write()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self.enabled = False


def stop_leftovers(groups: Iterable[tuple[int, int]], grace: float) -> list[int]:
    """SIGTERM what is left of each recorded group, SIGKILL after ``grace``; returns the pids found."""
    found = [pid for pgid, began in groups for pid in members(pgid, began)]
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(pid) for pid in found):
        time.sleep(0.05)
    _signal([pid for pid in found if _running(pid)], signal.SIGKILL)
    return found


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds nothing; its parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
