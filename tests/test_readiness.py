"""What a /ping answer does to a worker's state: pure, no sockets (lbproxy.readiness)."""

from __future__ import annotations

import pytest

from lbproxy.policy import WorkerState
from lbproxy.readiness import FAILURES_TO_UNHEALTHY, NO_ANSWER, NOT_ASKED, Verdict, judge

S, R, U = WorkerState.STARTING, WorkerState.READY, WorkerState.UNHEALTHY


def test_a_starting_worker_is_ready_on_200_and_loading_on_204():
    assert judge(S, 200, 0) == Verdict(R, 0, "/ping 200")
    assert judge(S, 204, 0) == Verdict(None, 0, "/ping 204 (initializing)")
    assert judge(S, 500, 0) == Verdict(None, 0, "/ping 500")
    assert judge(S, NO_ANSWER, 0) == Verdict(None, 0)


def test_a_ready_worker_turns_unhealthy_only_after_failures_in_a_row():
    failures = 0
    for _ in range(FAILURES_TO_UNHEALTHY - 1):
        v = judge(R, NO_ANSWER, failures)
        assert v.state is None
        failures = v.failures
    assert judge(R, NO_ANSWER, failures) == Verdict(U, FAILURES_TO_UNHEALTHY, "/ping did not answer")
    assert judge(R, 503, failures).reason == "/ping answered 503"


def test_a_200_in_between_resets_the_count():
    v = judge(R, NO_ANSWER, 0)
    v = judge(R, 200, v.failures)
    assert v == Verdict(None, 0)
    assert judge(R, NO_ANSWER, v.failures).state is None


def test_an_unhealthy_worker_recovers_on_200():
    assert judge(U, 200, 5) == Verdict(R, 0, "/ping 200 again")
    assert judge(U, NO_ANSWER, 5).state is None


@pytest.mark.parametrize("state", [S, R, U])
def test_a_probe_lbproxy_could_not_send_is_no_news(state):
    """Out of descriptors is lbproxy's overload: it neither counts as a failure nor resets the count."""
    for failures in range(FAILURES_TO_UNHEALTHY + 3):
        assert judge(state, NOT_ASKED, failures) == Verdict(None, failures)
