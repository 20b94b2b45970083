"""The scaling policy: ``decide(snapshot, settings)`` with plain values and a fixed clock, no asyncio."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.policy import Decision, ScalingSettings, Snapshot, WorkerState, WorkerView, decide

NOW = 1000.0


# -- builders: every time is "seconds before NOW" -------------------------------------------------------


def ready(wid: str, *, idle: float | None = 0.0, in_flight: int = 0, age: float = 100.0) -> WorkerView:
    """A READY worker; ``idle`` is how long it has had no request (ignored while it has some)."""
    idle_since = None if in_flight or idle is None else NOW - idle
    return WorkerView(wid, WorkerState.READY, in_flight, NOW - age, idle_since)


def starting(wid: str, *, age: float = 1.0) -> WorkerView:
    return WorkerView(wid, WorkerState.STARTING, 0, NOW - age, None)


def unhealthy(wid: str, *, age: float = 1.0, in_flight: int = 0) -> WorkerView:
    return WorkerView(wid, WorkerState.UNHEALTHY, in_flight, NOW - age, None)


def draining(wid: str, *, in_flight: int = 0) -> WorkerView:
    return WorkerView(wid, WorkerState.DRAINING, in_flight, NOW - 1.0, None if in_flight else NOW - 1.0)


def stopping(wid: str) -> WorkerView:
    return WorkerView(wid, WorkerState.STOPPING, 0, NOW - 1.0, None)


def snap(*workers: WorkerView, queued: int = 0, waited: float = 0.0, blocked_for: float = 0.0) -> Snapshot:
    """A snapshot at NOW; the oldest queued request has waited ``waited`` seconds."""
    return Snapshot(
        now=NOW,
        workers=workers,
        queued=queued,
        oldest_queued_at=NOW - waited if queued else None,
        start_blocked_until=NOW + blocked_for if blocked_for else 0.0,
    )


def cfg(**kw: Any) -> ScalingSettings:
    return ScalingSettings(**kw)


def full(wid: str, concurrency: int = 4) -> WorkerView:
    """A READY worker with every slot taken."""
    return ready(wid, in_flight=concurrency)


# -- steady state and the active floor ---------------------------------------------------------------


def test_no_load_and_no_active_workers_changes_nothing() -> None:
    d = decide(snap(), cfg(active=0))
    assert (d.desired, d.start, d.drain, d.stop) == (0, 0, (), ())
    assert not d.changes_anything


def test_active_workers_are_started_without_any_load() -> None:
    d = decide(snap(), cfg(active=2, max=3))
    assert (d.desired, d.start) == (2, 2)


def test_starting_workers_count_toward_active() -> None:
    d = decide(snap(starting("a")), cfg(active=2, max=3))
    assert (d.desired, d.start) == (2, 1)


def test_unhealthy_and_draining_workers_do_not_count_toward_active() -> None:
    d = decide(snap(unhealthy("u"), draining("d")), cfg(active=1, max=3))
    assert (d.desired, d.start) == (1, 1)


def test_busy_ready_workers_at_active_need_nothing() -> None:
    d = decide(snap(ready("a", in_flight=1)), cfg(active=1))
    assert (d.desired, d.start, d.drain) == (1, 0, ())


# -- queue_delay: cold start ---------------------------------------------------------------------------


def test_cold_start_starts_one_worker_at_once() -> None:
    d = decide(snap(queued=1, waited=0.0), cfg(queue_delay=4.0))
    assert (d.desired, d.start) == (1, 1)
    assert "cold start" in d.reason


def test_cold_start_starts_one_worker_for_a_burst() -> None:
    d = decide(snap(queued=50, waited=0.0), cfg(max=10, concurrency=4))
    assert (d.desired, d.start) == (1, 1)


def test_cold_start_with_active_starts_active_workers() -> None:
    d = decide(snap(queued=1), cfg(active=2, max=3))
    assert (d.desired, d.start) == (2, 2)


def test_cold_start_ignores_workers_that_are_not_capacity() -> None:
    d = decide(snap(unhealthy("u"), draining("d", in_flight=1), queued=1), cfg(max=3))
    assert d.start == 1


def test_no_cold_start_while_a_worker_is_starting() -> None:
    d = decide(snap(starting("a"), queued=3, waited=0.0), cfg(max=3))
    assert (d.desired, d.start) == (1, 0)


# -- queue_delay: the delay threshold ------------------------------------------------------------------


@pytest.mark.parametrize(("waited", "start"), [(3.9, 0), (4.0, 0), (4.01, 2)])
def test_queue_delay_adds_workers_only_once_the_oldest_waited_longer(waited: float, start: int) -> None:
    d = decide(snap(full("a"), queued=8, waited=waited), cfg(max=5, concurrency=4, queue_delay=4.0))
    assert d.start == start


def test_queue_delay_adds_enough_workers_for_the_queue() -> None:
    d = decide(snap(full("a"), queued=9, waited=5.0), cfg(max=10, concurrency=4, queue_delay=4.0))
    assert (d.desired, d.start) == (4, 3)  # 1 live + ceil(9 / 4)
    assert "queue_delay" in d.reason


def test_queue_delay_with_unlimited_concurrency_scales_by_requests_in_flight() -> None:
    """Issue 10: with concurrency 0 nothing ever queues in lbproxy, so the queue delay alone never scaled."""
    d = decide(snap(ready("a", in_flight=30)), cfg(max=3, concurrency=0))  # the defaults, 30 long requests
    assert (d.desired, d.start) == (3, 2)
    assert "by requests in flight" in d.reason
    d = decide(snap(ready("a", in_flight=30), queued=20, waited=5.0), cfg(max=20, concurrency=0))
    assert (d.desired, d.start) == (13, 12)  # ceil(50 / requests_per_worker 4)


def test_queue_delay_with_unlimited_concurrency_keeps_one_worker_for_light_load() -> None:
    d = decide(snap(ready("a", in_flight=4)), cfg(max=3, concurrency=0))
    assert (d.desired, d.start) == (1, 0)


def test_queue_delay_with_unlimited_concurrency_drains_only_what_the_load_leaves_idle() -> None:
    busy = ready("a", in_flight=6)
    idle = ready("b", idle=60.0)
    assert decide(snap(busy, idle), cfg(max=3, concurrency=0, idle_timeout=5.0)).drain == ()  # ceil(6/4) = 2
    assert decide(snap(ready("a", in_flight=3), idle), cfg(max=3, concurrency=0, idle_timeout=5.0)).drain == ("b",)


def test_queue_below_delay_asks_to_be_rechecked_when_it_expires() -> None:
    d = decide(snap(full("a"), queued=1, waited=3.0), cfg(concurrency=4, queue_delay=4.0))
    assert d.start == 0
    assert d.recheck_after == pytest.approx(1.0)


# -- queue_delay: no overshoot while workers start -----------------------------------------------------


def test_burst_adds_only_what_starting_workers_cannot_absorb() -> None:
    d = decide(snap(starting("s"), queued=50, waited=5.0), cfg(max=100, concurrency=4))
    assert (d.desired, d.start) == (13, 12)  # ceil(50 / 4) = 13 needed, 1 already starting


def test_burst_starts_nothing_more_once_enough_workers_start() -> None:
    workers = tuple(starting(f"s{i}") for i in range(13))
    d = decide(snap(*workers, queued=50, waited=9.0), cfg(max=100, concurrency=4))
    assert (d.desired, d.start) == (13, 0)


def test_one_starting_worker_absorbs_a_queue_it_can_serve() -> None:
    d = decide(snap(full("a"), starting("s"), queued=4, waited=5.0), cfg(max=10, concurrency=4))
    assert (d.desired, d.start) == (2, 0)


def test_with_unlimited_concurrency_starting_workers_count_by_requests_per_worker() -> None:
    workers = tuple(starting(f"s{i}") for i in range(3))
    assert decide(snap(*workers, queued=12, waited=5.0), cfg(max=10, concurrency=0)).start == 0
    assert decide(snap(*workers, queued=20, waited=5.0), cfg(max=10, concurrency=0)).start == 2


def test_a_cold_start_with_unlimited_concurrency_starts_a_worker_per_requests_per_worker() -> None:
    d = decide(snap(queued=12, waited=0.0), cfg(max=3, concurrency=0))
    assert (d.desired, d.start) == (3, 3)


# -- request_count -------------------------------------------------------------------------------------


def test_request_count_wants_queued_plus_in_flight_over_requests_per_worker() -> None:
    d = decide(
        snap(ready("a", in_flight=5), queued=4, waited=0.0),
        cfg(strategy="request_count", requests_per_worker=4, max=5),
    )
    assert (d.desired, d.start) == (3, 2)  # ceil((4 + 5) / 4)
    assert "request_count" in d.reason


def test_request_count_does_not_wait_for_queue_delay() -> None:
    d = decide(snap(queued=9, waited=0.0), cfg(strategy="request_count", requests_per_worker=4, max=5))
    assert (d.desired, d.start) == (3, 3)


def test_request_count_without_load_keeps_active() -> None:
    d = decide(snap(), cfg(strategy="request_count", active=1))
    assert (d.desired, d.start) == (1, 1)


def test_request_count_is_clamped_to_max() -> None:
    d = decide(snap(queued=100), cfg(strategy="request_count", requests_per_worker=1, max=3))
    assert (d.desired, d.start) == (3, 3)


# -- the max clamp -------------------------------------------------------------------------------------


def test_scale_up_is_clamped_to_max() -> None:
    d = decide(snap(full("a"), queued=50, waited=5.0), cfg(max=3, concurrency=4))
    assert (d.desired, d.start) == (3, 2)


def test_max_counts_unhealthy_draining_and_stopping_workers() -> None:
    workers = (full("a"), unhealthy("u", in_flight=1), draining("d", in_flight=1), stopping("s"))
    d = decide(snap(*workers, queued=50, waited=5.0), cfg(max=5, concurrency=4))
    assert d.desired == 5
    assert d.start == 1  # 4 machines already held


def test_no_start_when_non_capacity_workers_fill_max() -> None:
    d = decide(snap(unhealthy("u"), draining("d", in_flight=1), queued=1), cfg(max=2))
    assert (d.desired, d.start) == (1, 0)


def test_more_workers_than_max_starts_nothing() -> None:
    d = decide(snap(full("a"), full("b"), full("c"), queued=20, waited=9.0), cfg(max=2, concurrency=4))
    assert (d.desired, d.start) == (2, 0)


# -- scale down: idle drain ----------------------------------------------------------------------------


def test_worker_idle_for_idle_timeout_is_drained_down_to_active() -> None:
    d = decide(snap(ready("a", idle=6.0)), cfg(active=0, idle_timeout=5.0))
    assert d.drain == ("a",)
    assert "idle" in d.reason


@pytest.mark.parametrize("strategy", ["queue_delay", "request_count"])
def test_desired_is_the_live_count_left_after_the_drain(strategy: str) -> None:
    workers = (ready("a", idle=10.0), ready("b", idle=20.0), ready("c", idle=30.0))
    d = decide(snap(*workers), cfg(strategy=strategy, active=1, idle_timeout=5.0))
    assert d.drain == ("c", "b")
    assert d.desired == 1


def test_worker_idle_exactly_idle_timeout_is_drained() -> None:
    d = decide(snap(ready("a", idle=5.0)), cfg(idle_timeout=5.0))
    assert d.drain == ("a",)


def test_worker_idle_below_idle_timeout_is_kept_and_rechecked_when_it_expires() -> None:
    d = decide(snap(ready("a", idle=3.0)), cfg(idle_timeout=5.0))
    assert d.drain == ()
    assert d.recheck_after == pytest.approx(2.0)


def test_busy_worker_is_never_drained() -> None:
    d = decide(snap(ready("a", in_flight=1)), cfg(active=0, idle_timeout=5.0))
    assert d.drain == ()


def test_idle_workers_are_drained_longest_idle_first_down_to_active() -> None:
    workers = (ready("a", idle=10.0), ready("b", idle=30.0), ready("c", idle=20.0))
    d = decide(snap(*workers), cfg(active=1, idle_timeout=5.0))
    assert d.drain == ("b", "c")


def test_no_drain_at_active() -> None:
    d = decide(snap(ready("a", idle=60.0), ready("b", idle=60.0)), cfg(active=2, idle_timeout=5.0))
    assert d.drain == ()


def test_idle_worker_is_kept_when_the_others_are_not_capacity() -> None:
    d = decide(snap(ready("a", idle=60.0), unhealthy("u"), draining("d")), cfg(active=1, idle_timeout=5.0))
    assert d.drain == ()


def test_a_ready_worker_is_not_drained_in_favour_of_one_still_starting() -> None:
    d = decide(snap(ready("a", idle=60.0), starting("s")), cfg(active=1, idle_timeout=5.0))
    assert d.drain == ()


@pytest.mark.parametrize("strategy", ["queue_delay", "request_count"])
def test_no_drain_while_requests_are_queued(strategy: str) -> None:
    workers = (ready("a", idle=60.0), ready("b", idle=60.0))
    d = decide(snap(*workers, queued=1, waited=0.5), cfg(strategy=strategy, idle_timeout=5.0, max=5))
    assert d.drain == ()


def test_request_count_drains_only_down_to_demand() -> None:
    workers = (ready("busy", in_flight=5), ready("a", idle=10.0), ready("b", idle=20.0))
    d = decide(snap(*workers), cfg(strategy="request_count", requests_per_worker=4, idle_timeout=5.0))
    assert d.desired == 2  # ceil(5 / 4)
    assert d.drain == ("b",)


def test_request_count_drains_down_to_active_when_demand_is_lower() -> None:
    workers = (ready("a", idle=10.0), ready("b", idle=20.0), ready("c", idle=30.0))
    d = decide(snap(*workers), cfg(strategy="request_count", active=1, idle_timeout=5.0))
    assert d.drain == ("c", "b")


# -- replacing broken workers --------------------------------------------------------------------------


def test_worker_not_ready_within_init_timeout_is_stopped_and_replaced() -> None:
    d = decide(snap(starting("slow", age=420.0)), cfg(active=1, max=3, init_timeout=420.0))
    assert [wid for wid, _ in d.stop] == ["slow"]
    assert "timeouts.init" in d.stop[0][1]
    assert (d.desired, d.start) == (1, 1)


def test_worker_starting_within_init_timeout_is_kept_and_rechecked_at_the_timeout() -> None:
    d = decide(snap(starting("s", age=400.0)), cfg(active=1, init_timeout=420.0))
    assert (d.stop, d.start) == ((), 0)
    assert d.recheck_after == pytest.approx(20.0)


def test_replacement_waits_for_room_under_max() -> None:
    d = decide(snap(starting("slow", age=500.0)), cfg(active=1, max=1, init_timeout=420.0))
    assert [wid for wid, _ in d.stop] == ["slow"]
    assert d.start == 0  # the stopped worker still holds the only machine


def test_unhealthy_worker_past_grace_without_requests_is_stopped() -> None:
    d = decide(snap(unhealthy("u", age=10.0)), cfg(unhealthy_grace=10.0))
    assert [wid for wid, _ in d.stop] == ["u"]
    assert d.reason == d.stop[0][1]
    assert d.changes_anything


def test_unhealthy_worker_within_grace_is_kept_and_rechecked_at_the_end_of_grace() -> None:
    d = decide(snap(unhealthy("u", age=4.0)), cfg(unhealthy_grace=10.0))
    assert d.stop == ()
    assert d.recheck_after == pytest.approx(6.0)


def test_unhealthy_worker_past_grace_is_kept_while_it_finishes_requests() -> None:
    d = decide(snap(unhealthy("u", age=60.0, in_flight=1)), cfg(unhealthy_grace=10.0))
    assert d.stop == ()
    assert d.recheck_after is None  # no busy polling while it finishes: the regular tick looks again


# -- crash back-off ------------------------------------------------------------------------------------


def test_back_off_blocks_starts_and_rechecks_when_it_ends() -> None:
    d = decide(snap(queued=1, blocked_for=7.5), cfg(queue_delay=60.0))
    assert (d.desired, d.start) == (1, 0)
    assert "backing off" in d.reason
    assert d.recheck_after == pytest.approx(7.5)


def test_back_off_that_has_ended_allows_starts() -> None:
    s = Snapshot(now=NOW, workers=(), queued=1, oldest_queued_at=NOW, start_blocked_until=NOW)
    assert decide(s, cfg()).start == 1


def test_back_off_does_not_block_drains_or_stops() -> None:
    workers = (ready("a", idle=60.0), unhealthy("u", age=60.0))
    d = decide(snap(*workers, blocked_for=30.0), cfg(idle_timeout=5.0, unhealthy_grace=10.0))
    assert d.drain == ("a",)
    assert [wid for wid, _ in d.stop] == ["u"]


def test_back_off_without_anything_to_start_does_not_ask_for_a_recheck() -> None:
    d = decide(snap(ready("a", in_flight=1), blocked_for=30.0), cfg(active=1))
    assert d.recheck_after is None


# -- recheck_after -------------------------------------------------------------------------------------


def test_recheck_is_left_to_the_next_tick_when_nothing_is_pending() -> None:
    d = decide(snap(ready("a", in_flight=2)), cfg(active=1))
    assert d.recheck_after is None


def test_recheck_is_the_earliest_pending_condition() -> None:
    workers = (
        starting("s", age=410.0),  # init timeout in 10 s
        ready("a", idle=2.0),  # idle timeout in 3 s
        unhealthy("u", age=2.0),  # grace ends in 8 s
        full("b"),
    )
    d = decide(snap(*workers, queued=1, waited=2.5), cfg(max=10, concurrency=4))  # queue delay in 1.5 s
    assert d.recheck_after == pytest.approx(1.5)


# -- Decision.changes_anything -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "changes"),
    [
        (Decision(desired=3), False),
        (Decision(desired=3, reason="why", recheck_after=1.0), False),
        (Decision(desired=3, start=1), True),
        (Decision(desired=3, drain=("a",)), True),
        (Decision(desired=3, stop=(("a", "why"),)), True),
    ],
)
def test_changes_anything_only_when_a_worker_is_started_drained_or_stopped(
    decision: Decision, changes: bool
) -> None:
    assert decision.changes_anything is changes


# -- properties over random snapshots ------------------------------------------------------------------

_PRESENT = {WorkerState.STARTING, WorkerState.READY, WorkerState.UNHEALTHY, WorkerState.DRAINING,
            WorkerState.STOPPING}


@st.composite
def scaling_settings(draw: st.DrawFn) -> ScalingSettings:
    top = draw(st.integers(1, 8))
    return ScalingSettings(
        active=draw(st.integers(0, top)),
        max=top,
        concurrency=draw(st.integers(0, 6)),
        strategy=draw(st.sampled_from(["queue_delay", "request_count"])),
        queue_delay=draw(st.floats(0.0, 10.0)),
        requests_per_worker=draw(st.integers(1, 6)),
        idle_timeout=draw(st.floats(0.0, 30.0)),
        init_timeout=draw(st.floats(1.0, 60.0)),
        unhealthy_grace=draw(st.floats(0.0, 30.0)),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    workers = []
    for i in range(draw(st.integers(0, 10))):
        state = draw(st.sampled_from(list(WorkerState)))
        in_flight = 0 if state is WorkerState.STARTING else draw(st.integers(0, 6))
        idle = None if in_flight else draw(st.none() | st.floats(0.0, 60.0))
        age = draw(st.floats(0.0, 120.0))
        workers.append(WorkerView(f"w{i}", state, in_flight, NOW - age, None if idle is None else NOW - idle))
    queued = draw(st.integers(0, 40))
    waited = draw(st.floats(0.0, 20.0))
    return Snapshot(
        now=NOW,
        workers=tuple(workers),
        queued=queued,
        oldest_queued_at=NOW - waited if queued else None,
        start_blocked_until=draw(st.sampled_from([0.0, NOW - 1.0, NOW, NOW + 5.0])),
    )


@settings(max_examples=500)
@given(snapshots(), scaling_settings())
def test_decisions_respect_max_drain_only_idle_ready_workers_and_keep_active(
    s: Snapshot, c: ScalingSettings
) -> None:
    d = decide(s, c)
    by_id = {w.id: w for w in s.workers}
    present = sum(w.state in _PRESENT for w in s.workers)
    live = sum(
        w.state is WorkerState.READY or (w.state is WorkerState.STARTING and s.now - w.since < c.init_timeout)
        for w in s.workers
    )

    # Never more machines than workers.max (when already above it, none are added).
    assert d.start >= 0
    assert d.start + present <= c.max if present <= c.max else d.start == 0

    for wid in d.drain:
        w = by_id[wid]
        assert w.state is WorkerState.READY
        assert w.in_flight == 0
        assert w.idle_since is not None and s.now - w.idle_since >= c.idle_timeout
    assert len(set(d.drain)) == len(d.drain)
    assert not d.drain or live - len(d.drain) >= c.active
    assert not d.drain or s.queued == 0

    assert c.active <= d.desired <= c.max
    assert not set(d.drain) & {wid for wid, _ in d.stop}
    if s.now < s.start_blocked_until:
        assert d.start == 0
    if d.recheck_after is not None:
        assert d.recheck_after > 0 and math.isfinite(d.recheck_after)


# -- several proxy replicas ------------------------------------------------------------------------

from lbproxy.policy import PeerLoad, merge_peer_load  # noqa: E402


def test_peer_queues_and_in_flight_add_to_the_leaders_snapshot() -> None:
    s = Snapshot(now=100.0, workers=(WorkerView("a", WorkerState.READY, 1, 0.0, None),
                                      WorkerView("b", WorkerState.READY, 0, 0.0, 90.0)),
                 queued=1, oldest_queued_at=99.0)
    merged = merge_peer_load(s, (PeerLoad(2, 5.0, (("a", 2, 0.0), ("b", 1, 0.0))),
                                 PeerLoad(0, 0.0, (("b", 0, 3.0),))))
    assert merged.queued == 3
    assert merged.oldest_queued_at == 95.0  # the peer's request has waited longest
    assert [(w.id, w.in_flight, w.idle_since) for w in merged.workers] == [("a", 3, None), ("b", 1, None)]


def test_a_worker_is_idle_since_the_last_request_any_replica_sent() -> None:
    s = Snapshot(now=100.0, workers=(WorkerView("b", WorkerState.READY, 0, 0.0, 80.0),))
    merged = merge_peer_load(s, (PeerLoad(0, 0.0, (("b", 0, 4.0),)),))
    assert merged.workers[0].idle_since == 96.0
    d = decide(merged, cfg(idle_timeout=10.0))
    assert d.drain == ()  # idle 20 s here, but only 4 s on the other replica


def test_a_worker_ready_only_on_a_peer_counts_as_ready_and_idle_there_and_is_never_an_init_failure() -> None:
    """A queue endpoint's worker pod talks to one replica: the leader may never hear from it itself."""
    s = Snapshot(now=100.0, workers=(WorkerView("p", WorkerState.STARTING, 0, 0.0, None),
                                      WorkerView("q", WorkerState.STARTING, 0, 95.0, None)))
    merged = merge_peer_load(s, (PeerLoad(0, 0.0, (("p", 0, 30.0),)),))
    assert [(w.id, w.state, w.idle_since) for w in merged.workers] == [
        ("p", WorkerState.READY, 70.0), ("q", WorkerState.STARTING, None)]
    d = decide(merged, cfg(active=0, idle_timeout=10.0, init_timeout=50.0))
    assert d.drain == ("p",) and not any(wid == "p" for wid, _ in d.stop)  # idle there: drained, not failed
    alone = decide(s, cfg(active=0, idle_timeout=10.0, init_timeout=50.0))
    assert ("p", "not ready within timeouts.init (50s)") in alone.stop  # what the leader would do without it


def test_no_peers_changes_nothing() -> None:
    s = Snapshot(now=1.0, workers=())
    assert merge_peer_load(s, ()) is s
