"""The simulated endpoint, case by case, against figures worked out by hand from the rules lbproxy serve follows.

Every case bills a worker at $1/s (``cost.price_per_second: 1``), so dollars read as billed seconds, and takes
no time to stop unless it says so. Times are exact binary fractions, so the virtual clock lands on them exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from lbproxy.config import parse_config
from lbproxy.simulate.coldstart import ColdStart, parse_cold_start
from lbproxy.simulate.endpoint import Model, simulate
from lbproxy.simulate.engine import EventQueue, Order
from lbproxy.simulate.results import Outcome, percentile
from lbproxy.simulate.traces import Trace

from .conftest import deep_merge


def run(requests: list[tuple[float, float]], cold: str = "10s", stop: float = 0.0, **overrides: Any) -> Outcome:
    cfg = deep_merge({"name": "sim", "workers": {"active": 0, "max": 1, "concurrency": 1},
                      "timeouts": {"idle": "5s", "wait": "2m", "init": "7m"},
                      "cost": {"price_per_second": 1.0}}, overrides)
    trace = Trace("hand", [a for a, _ in requests], [s for _, s in requests], max(a for a, _ in requests))
    return simulate(parse_config(cfg, environ={}), trace, Model(parse_cold_start(cold), stop_time=stop))


def phases(o: Outcome) -> dict[str, float]:
    return o.worker_seconds()


def test_one_request_from_zero_waits_one_cold_start_and_the_worker_idles_out() -> None:
    # t=0 the request queues, no worker: start one (the cold-start rule). Ready at 10: it takes the request
    # (waited 10 s), done at 12, idle from 12, drained at 12 + timeouts.idle = 17 and gone at once.
    o = run([(0.0, 2.0)])
    assert o.requests == o.served == 1
    assert list(o.waits) == [10.0]
    assert o.cold_starts == 1 and o.hit_cold_start == 1
    assert phases(o) == {"total": 17.0, "start": 10.0, "busy": 2.0, "idle": 5.0, "stopping": 0.0}
    assert o.cost == 17.0 and o.ideal_cost == 2.0
    assert o.end == 17.0


def test_a_worker_is_billed_until_it_has_stopped_rounded_up_to_the_second() -> None:
    o = run([(0.0, 2.0)], stop=0.25)  # 17.25 s billed as 18: the rounding goes to the phase it ended in
    assert phases(o) == {"total": 18.0, "start": 10.0, "busy": 2.0, "idle": 5.0, "stopping": 1.0}
    assert o.end == 17.25


def test_the_unbilled_part_of_a_cold_start_delays_the_bill_not_the_ready() -> None:
    # As the first case with the backend reporting the worker 1 s after the decision (a process spawn): ready
    # still at 10 (the wait is 10 s), billed from 1 to 17: 16 s, 9 of them starting.
    cfg = parse_config({"name": "sim", "workers": {"active": 0, "max": 1, "concurrency": 1},
                        "timeouts": {"idle": "5s"}, "cost": {"price_per_second": 1.0}}, environ={})
    model = Model(parse_cold_start("10s"), unbilled=parse_cold_start("1s"))
    o = simulate(cfg, Trace("hand", [0.0], [2.0], 0.0), model)
    assert list(o.waits) == [10.0] and o.cold_starts == 1
    assert phases(o) == {"total": 16.0, "start": 9.0, "busy": 2.0, "idle": 5.0, "stopping": 0.0}


def test_two_overlapping_requests_with_concurrency_1_take_turns_on_one_worker() -> None:
    # A at 0 and B at 1, 4 s each, one worker (max 1) starting at 0, ready at 2: A from 2 to 6 (waited 2),
    # B from 6 to 10 (waited 5). Idle from 10, drained at 15.
    o = run([(0.0, 4.0), (1.0, 4.0)], cold="2s")
    assert list(o.waits) == [2.0, 5.0]
    assert o.wait(50) == 3.5 and o.wait(99) == pytest.approx(4.97)
    assert o.cold_starts == 1 and o.hit_cold_start == 2
    assert phases(o) == {"total": 15.0, "start": 2.0, "busy": 8.0, "idle": 5.0, "stopping": 0.0}


def test_a_request_waiting_longer_than_queue_delay_starts_a_second_worker() -> None:
    # As above with workers.max 2 and queue_delay 1s. At 1 the oldest request (A) has waited exactly 1 s, not
    # more: the policy looks again 0.01 s later and starts a second worker at 1.01 (2 queued, 1 starting),
    # ready at 3.01. At 2 the first worker takes only its share of the queue (one: the second is expected
    # soon), A; B goes to the second at 3.01 (waited 2.01). Both idle out 5 s after their request: w1 from 6
    # to 11, w2 from 7.01 to 12.01, each billed 11 s.
    o = run([(0.0, 4.0), (1.0, 4.0)], cold="2s", workers={"max": 2}, scaling={"queue_delay": "1s"})
    assert o.cold_starts == 2 and o.peak_workers == 2
    assert list(o.waits) == pytest.approx([2.0, 2.01])
    ws = phases(o)
    assert ws["start"] == pytest.approx(4.0) and ws["busy"] == pytest.approx(8.0)
    assert ws["idle"] == pytest.approx(10.0, abs=0.02)  # each drained at the first decision >= 5 s idle
    assert ws["total"] == 22.0  # 11 s and 11.0x s, each rounded up: 11 + 12 = 23 would mean a late drain


def test_idle_expiry_is_exactly_at_the_boundary() -> None:
    # Ready at 1, busy 1..2, idle from 2: drained at 2 + 4 = 6 exactly (the policy's recheck lands on it),
    # not at the next whole tick after it.
    o = run([(0.0, 1.0)], cold="1s", timeouts={"idle": "4s"})
    assert phases(o) == {"total": 6.0, "start": 1.0, "busy": 1.0, "idle": 4.0, "stopping": 0.0}
    assert o.end == 6.0


def test_a_request_arriving_at_the_idle_boundary_keeps_the_worker() -> None:
    # B arrives at 6.0, the instant the worker's idle time reaches timeouts.idle: requests of an instant come
    # before the controller, so B takes the worker (no wait) and the worker stays until 7 + 4 = 11.
    o = run([(0.0, 1.0), (6.0, 1.0)], cold="1s", timeouts={"idle": "4s"})
    assert o.cold_starts == 1
    assert list(o.waits) == [0.0, 1.0]
    assert phases(o)["total"] == 11.0


def test_a_request_just_after_the_boundary_pays_a_new_cold_start() -> None:
    o = run([(0.0, 1.0), (6.25, 1.0)], cold="1s", timeouts={"idle": "4s"})
    assert o.cold_starts == 2 and o.hit_cold_start == 2
    assert list(o.waits) == [1.0, 1.0]
    assert phases(o)["total"] == 6.0 + 6.0  # two lives of 6 s: start 1, busy 1, idle 4


def test_a_request_no_worker_takes_within_timeouts_wait_gets_503_then() -> None:
    # The worker takes 10 s; the request gives up at 3 s (503, having waited 3 s). The worker, once ready at
    # 10, idles out at 15: billed all the same.
    o = run([(0.0, 1.0)], timeouts={"wait": "3s"})
    assert o.rejected_503 == 1 and o.served == 0
    assert list(o.waits) == [3.0]
    assert phases(o) == {"total": 15.0, "start": 10.0, "busy": 0.0, "idle": 5.0, "stopping": 0.0}


def test_a_request_over_limits_max_queue_gets_429_at_once() -> None:
    # Two may wait; the third finds them waiting and is refused (429, no wait). The two are served in order
    # by the one worker (concurrency 1): from 10 (waited 10) and from 11 (waited 10.5).
    o = run([(0.0, 1.0), (0.5, 1.0), (1.0, 1.0)], limits={"max_queue": 2})
    assert o.rejected_429 == 1 and o.served == 2
    assert sorted(o.waits) == [0.0, 10.0, 10.5]


def test_a_worker_not_ready_within_timeouts_init_is_replaced_after_a_back_off_then_requests_fail_fast() -> None:
    # Cold start 10 s, timeouts.init 5 s: w1 (0..5) is a failed start, back-off 1 s; w2 starts at 6 and fails
    # at 11, back-off 2 s: after two failed starts in a row the waiting request gets its 503 at once (11).
    o = run([(0.0, 1.0)], timeouts={"init": "5s"})
    assert o.failed_starts == 2 and o.cold_starts >= 2
    assert o.rejected_503 == 1
    assert list(o.waits) == [11.0]


def test_the_spend_limit_holds_back_starts_and_requests_wait_instead() -> None:
    # $1/s is $3600/h per worker: a limit of $5000/h allows one worker, whatever the queue asks for.
    burst = [(i / 4, 2.0) for i in range(8)]
    o = run(burst, cold="1s", workers={"max": 4}, scaling={"queue_delay": "1s"}, cost={"max_per_hour": 5000})
    assert o.peak_workers == 1 and o.capped_starts > 0
    free = run(burst, cold="1s", workers={"max": 4}, scaling={"queue_delay": "1s"})
    assert free.peak_workers > 1 and free.wait(99) < o.wait(99)


def test_active_workers_are_warm_at_the_start_and_billed_at_the_active_price() -> None:
    o = run([(4.0, 1.0)], workers={"active": 1}, cost={"price_per_second": 1.0, "active_price_per_second": 0.5})
    assert list(o.waits) == [0.0] and o.cold_starts == 0
    assert phases(o)["total"] == 5.0  # billed from 0 to the end of the trace's work (its last event, 5)
    assert o.cost == 2.5


def test_a_request_longer_than_timeouts_execution_ends_at_it_with_504() -> None:
    o = run([(0.0, 30.0)], cold="1s", timeouts={"execution": "10s"})
    assert o.timed_out_504 == 1 and o.served == 0
    assert phases(o)["busy"] == 10.0


def test_events_of_one_instant_run_in_the_order_of_their_kinds_then_of_scheduling() -> None:
    q = EventQueue()
    q.push(1.0, Order.DECIDE, "decide")
    q.push(1.0, Order.DONE, "done-1")
    q.push(0.5, Order.DECIDE, "early")
    q.push(1.0, Order.WORKER, "ready")
    q.push(1.0, Order.DONE, "done-2")
    assert [q.pop()[3] for _ in range(len(q))] == ["early", "ready", "done-1", "done-2", "decide"]


def test_cold_start_forms() -> None:
    import random

    rng = random.Random(0)
    assert parse_cold_start("1.5s").sample(rng, 0) == 1.5
    seq = parse_cold_start("seq(1s,2s,500ms)")
    assert [seq.sample(rng, n) for n in range(4)] == [1.0, 2.0, 0.5, 1.0]
    uniform = parse_cold_start("uniform(10s,20s)")
    assert all(10 <= uniform.sample(rng, n) <= 20 for n in range(100)) and uniform.typical == 15
    lognormal = parse_cold_start("lognormal(30s,0.5)")
    draws = [lognormal.sample(rng, n) for n in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(30, rel=0.05)
    assert isinstance(seq, ColdStart) and str(seq) == "seq(1s,2s,500ms)"
    for bad in ("soon", "uniform(2s)", "uniform(3s,1s)", "lognormal(30s,-1)", "gamma(1,2)"):
        with pytest.raises(ValueError, match="invalid cold start"):
            parse_cold_start(bad)


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 99) == 7.0
