"""The guard of one local worker: the worker's process group dies with lbproxy, even when lbproxy is SIGKILLed.

Run by the local backend as ``python -S guard.py LIFELINE_FD GRACE -- ARGV...`` at the head of a new session
(its own process group). It forks the worker (which dies with the guard: ``PR_SET_PDEATHSIG``) and waits for
either of two things:

- the worker exits: the guard exits the same way (same code, or the same signal), and lbproxy, which sees that,
  stops what is left of the group;
- the lifeline (a socket whose other end only lbproxy holds) reaches end of file: lbproxy is gone, whatever
  killed it (the OOM killer, ``kill -9``, a closed terminal). The guard then stops the whole group: SIGTERM,
  and SIGKILL after GRACE seconds, so that no worker (nor a model-loader child of it) keeps a GPU.

The first line it writes on the lifeline is the worker's pid. Only the standard library (it runs with ``-S``,
before and apart from lbproxy's own packages); SIGTERM, SIGINT and SIGHUP do not stop the guard itself: they
are meant for the worker (lbproxy signals the whole group), and the guard follows the worker out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the guard) dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _exec_worker(guard: int, lifeline: int, argv: list[str]) -> None:
    os.close(lifeline)  # only the guard may hold it: lbproxy's death must reach the guard alone
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()
    if os.getppid() != guard:  # the guard died before the line above: nobody would ever stop this worker
        os._exit(1)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"lbproxy guard: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        os._exit(127)


def _stop_group(worker: int, grace: float) -> None:
    """lbproxy is gone: stop the worker's whole group, politely first."""
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)  # the guard's own handler ignores it
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(worker, os.WNOHANG) != (0, 0):
                break
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # the guard too: its work is done


def _exit_like(status: int) -> None:
    """Exit with the worker's wait status: its exit code, or the signal that killed it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.kill(os.getpid(), sig)
    sys.exit(os.WEXITSTATUS(status))


def main(args: list[str]) -> None:
    lifeline, grace, argv = int(args[0]), float(args[1]), args[3:]
    guard = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, lambda *_: None)  # wake the loop below; the worker decides what the signal means
    worker = os.fork()
    if worker == 0:
        _exec_worker(guard, lifeline, argv)
    os.write(lifeline, b"%d\n" % worker)
    while True:
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([lifeline, wake_r], [], [])
            if wake_r in readable:
                os.read(wake_r, 512)
            if lifeline in readable:
                try:
                    data = os.read(lifeline, 512)
                except OSError:
                    data = b""
                if not data:
                    _stop_group(worker, grace)
        pid, status = os.waitpid(worker, os.WNOHANG)
        if pid == worker:
            _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
