"""The controller's rules of time, shared with the simulator: when it decides again, how it backs off."""

from __future__ import annotations

from lbproxy.control_timing import TICK, fails_fast, next_decision_in, start_backoff


def test_the_next_decision_is_a_tick_away_unless_the_policy_said_sooner() -> None:
    assert next_decision_in(None) == TICK
    assert next_decision_in(5.0) == TICK
    assert next_decision_in(0.25) == 0.25
    assert next_decision_in(0.0) == 0.01  # due now (rounding): soon, never a busy loop


def test_start_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    assert [start_backoff(n) for n in (1, 2, 3, 4, 7, 8, 5000)] == [1.0, 2.0, 4.0, 8.0, 60.0, 60.0, 60.0]


def test_requests_fail_fast_only_after_two_failed_starts_during_the_back_off() -> None:
    assert not fails_fast(1, now=10.0, blocked_until=11.0)
    assert fails_fast(2, now=10.0, blocked_until=11.0)
    assert not fails_fast(2, now=11.0, blocked_until=11.0)
