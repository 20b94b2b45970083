"""What a worker's ``/ping`` answer means for its state (README "The worker contract"): a pure function of the
answer and the past.

200 = ready, 204 = still initializing, anything else or no answer = a failure; a ready worker turns unhealthy
only after ``FAILURES_TO_UNHEALTHY`` failures in a row (one lost probe under load is not enough), and a probe
lbproxy could not even send (out of file descriptors: its own overload) is no news at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy import WorkerState

FAILURES_TO_UNHEALTHY = 2
NO_ANSWER: int | None = None  # the worker did not answer (refused, reset, timed out)
NOT_ASKED = -1  # lbproxy could not probe (no descriptor left): says nothing about the worker


@dataclass(frozen=True, slots=True)
class Verdict:
    """The probe's outcome: the state to move to (None: stay), the failure count, and the reason to show."""

    state: WorkerState | None
    failures: int
    reason: str = ""


def judge(state: WorkerState, status: int | None, failures: int) -> Verdict:
    """The verdict on one probe answer ``status`` for a worker in ``state`` after ``failures`` in a row."""
    if status == NOT_ASKED:
        return Verdict(None, failures)
    if state is WorkerState.STARTING:
        if status == 200:
            return Verdict(WorkerState.READY, 0, "/ping 200")
        if status is None:
            return Verdict(None, failures)
        return Verdict(None, failures, f"/ping {status}" + (" (initializing)" if status == 204 else ""))
    if status == 200:
        return Verdict(WorkerState.READY, 0, "/ping 200 again") if state is WorkerState.UNHEALTHY else Verdict(None, 0)
    if state is not WorkerState.READY:
        return Verdict(None, failures)
    failures += 1
    if failures < FAILURES_TO_UNHEALTHY:
        return Verdict(None, failures)
    why = f"/ping answered {status}" if status is not None else "/ping did not answer"
    return Verdict(WorkerState.UNHEALTHY, failures, why)
