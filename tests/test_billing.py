"""Cost accounting (lbproxy.billing): per-second bills by category, tier and phase, on a fake clock."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.billing import UNPRICED, Ledger, Phase, Rate, Tariff, Tier, Totals, active_workers, phase_for
from lbproxy.policy import WorkerState

GPU = "24gb"
RATE = Rate(flex=0.00019, active=0.00013)
TARIFF = Tariff({GPU: RATE, "80gb": Rate(flex=0.00076, active=0.00060)})


def seconds(totals: Totals, category: str = GPU, tier: Tier | None = None, phase: Phase | None = None) -> float:
    return sum(s for (c, t, p), s in totals.seconds.items()
               if c == category and (tier is None or t is tier) and (phase is None or p is phase))


def test_one_worker_is_billed_from_start_to_full_stop_by_phase_rounded_up_at_the_end():
    ledger = Ledger(TARIFF)
    ledger.open("w1", GPU, at=100.0)
    ledger.phase("w1", Phase.IDLE, at=102.5)  # ready
    ledger.phase("w1", Phase.BUSY, at=103.0)
    ledger.phase("w1", Phase.IDLE, at=105.0)
    ledger.phase("w1", Phase.STOPPING, at=110.0)
    bill = ledger.close("w1", at=110.2)
    assert bill is not None and bill.billed_seconds == 11 and bill.seconds == pytest.approx(10.2)
    totals = ledger.totals(at=500.0)  # nothing open: later reads change nothing
    assert seconds(totals, phase=Phase.START) == pytest.approx(2.5)
    assert seconds(totals, phase=Phase.IDLE) == pytest.approx(5.5)
    assert seconds(totals, phase=Phase.BUSY) == pytest.approx(2.0)
    assert seconds(totals, phase=Phase.STOPPING) == pytest.approx(0.2 + 0.8)  # the rounding goes to the last phase
    assert totals.total_seconds == pytest.approx(11.0)
    assert totals.total_dollars == pytest.approx(11 * RATE.flex)
    assert bill.dollars == pytest.approx(11 * RATE.flex)
    assert totals.workers == 1 and totals.cold_starts == 1


def test_whole_seconds_are_not_rounded_up_again():
    ledger = Ledger(TARIFF)
    ledger.open("w", GPU, at=0.1)
    for t in (0.3, 0.7, 1.1, 1.9):
        ledger.phase("w", Phase.BUSY if t in (0.3, 1.1) else Phase.IDLE, at=t)
    bill = ledger.close("w", at=3.1)  # 3.0 s in float segments that do not add up exactly
    assert bill is not None and bill.billed_seconds == 3
    assert ledger.totals(9.0).total_seconds == pytest.approx(3.0)


def test_a_worker_that_stops_the_instant_it_starts_costs_nothing_and_one_a_moment_later_a_second():
    ledger = Ledger(TARIFF)
    ledger.open("a", GPU, at=5.0)
    assert ledger.close("a", at=5.0).billed_seconds == 0  # type: ignore[union-attr]
    ledger.open("b", GPU, at=5.0)
    assert ledger.close("b", at=5.001).billed_seconds == 1  # type: ignore[union-attr]
    assert ledger.totals(6.0).total_seconds == pytest.approx(1.0)


def test_open_workers_count_in_the_totals_up_to_now_and_grow_with_the_clock():
    ledger = Ledger(TARIFF)
    ledger.open("w", GPU, at=0.0)
    ledger.phase("w", Phase.BUSY, at=1.0)
    assert ledger.totals(4.0).total_seconds == pytest.approx(4.0)
    assert seconds(ledger.totals(4.0), phase=Phase.BUSY) == pytest.approx(3.0)
    assert ledger.totals(4.0).ideal_seconds == pytest.approx(3.0)
    assert ledger.totals(10.0).total_seconds == pytest.approx(10.0)
    bill = ledger.bill("w", at=4.5)
    assert bill is not None and bill.seconds == pytest.approx(4.5) and bill.billed_seconds == 5
    assert bill.phase is Phase.BUSY and bill.rate_per_second == RATE.flex


def test_the_active_oldest_workers_pay_the_active_price_and_the_rest_flex():
    ledger = Ledger(TARIFF, active=1)
    ledger.open("old", GPU, at=0.0)
    ledger.open("new", GPU, at=10.0)
    totals = ledger.totals(20.0)
    assert seconds(totals, tier=Tier.ACTIVE) == pytest.approx(20.0)
    assert seconds(totals, tier=Tier.FLEX) == pytest.approx(10.0)
    assert totals.total_dollars == pytest.approx(20 * RATE.active + 10 * RATE.flex)
    assert ledger.rate_per_second() == pytest.approx(RATE.active + RATE.flex)


def test_a_leaving_active_worker_hands_the_active_price_to_the_oldest_staying_one():
    ledger = Ledger(TARIFF, active=1)
    ledger.open("a", GPU, at=0.0)
    ledger.open("b", GPU, at=1.0)
    ledger.phase("a", Phase.STOPPING, at=5.0)  # drained for scale-down: it is on its way out
    ledger.close("a", at=6.0)
    totals = ledger.totals(10.0)
    # a: active 0..5, flex 5..6; b: flex 1..5, active 5..10
    assert seconds(totals, tier=Tier.ACTIVE) == pytest.approx(5.0 + 5.0)
    assert seconds(totals, tier=Tier.FLEX) == pytest.approx(1.0 + 4.0)
    assert ledger.bill("b", 10.0).tier is Tier.ACTIVE  # type: ignore[union-attr]


def test_an_active_place_freed_by_a_stopped_worker_goes_to_the_next_oldest():
    ledger = Ledger(TARIFF, active=2)
    for i, wid in enumerate("abc"):
        ledger.open(wid, GPU, at=float(i))
    assert {w: ledger.bill(w, 3.0).tier for w in "abc"} == {  # type: ignore[union-attr]
        "a": Tier.ACTIVE, "b": Tier.ACTIVE, "c": Tier.FLEX}
    ledger.close("a", at=3.0)  # crashed: never drained
    assert ledger.bill("c", 3.0).tier is Tier.ACTIVE  # type: ignore[union-attr]


def test_active_workers_picks_the_oldest_staying_ids_with_ties_broken_by_id():
    assert active_workers([("x", 1.0, False), ("y", 0.0, True), ("z", 2.0, False)], 1) == {"x"}
    assert active_workers([("b", 1.0, False), ("a", 1.0, False)], 1) == {"a"}
    assert active_workers([("a", 0.0, False)], 0) == set()
    assert active_workers([("a", 0.0, False)], 5) == {"a"}


def test_unpriced_workers_count_seconds_and_no_dollars_and_efficiency_is_in_seconds():
    ledger = Ledger(TARIFF)
    ledger.open("w", UNPRICED, at=0.0)
    ledger.phase("w", Phase.BUSY, at=1.0)
    ledger.phase("w", Phase.IDLE, at=2.0)
    ledger.close("w", at=4.0)
    totals = ledger.totals(4.0)
    assert totals.total_seconds == pytest.approx(4.0) and totals.total_dollars == 0.0
    assert not totals.priced
    assert totals.efficiency == pytest.approx(1 / 4)
    assert totals.share(Phase.IDLE) == pytest.approx(2 / 4)
    assert ledger.rate_per_second() == 0.0


def test_the_ideal_is_busy_time_at_the_flex_price_and_efficiency_is_ideal_over_actual():
    ledger = Ledger(TARIFF, active=1)
    ledger.open("w", GPU, at=0.0)  # active: the actual price is lower than the ideal's flex price
    ledger.phase("w", Phase.IDLE, at=10.0)
    ledger.phase("w", Phase.BUSY, at=12.0)
    ledger.phase("w", Phase.IDLE, at=16.0)
    totals = ledger.totals(20.0)
    assert totals.ideal_seconds == pytest.approx(4.0)
    assert totals.ideal_dollars == pytest.approx(4 * RATE.flex)
    assert totals.efficiency == pytest.approx(4 * RATE.flex / (20 * RATE.active))
    assert totals.share(Phase.START) == pytest.approx(10 / 20)
    assert totals.share(Phase.BUSY) == pytest.approx(4 / 20)


def test_nothing_billed_has_no_efficiency_and_no_shares():
    totals = Ledger(TARIFF).totals(1.0)
    assert totals.efficiency is None and totals.share(Phase.IDLE) is None and not totals.priced


def test_categories_are_billed_at_their_own_prices():
    ledger = Ledger(TARIFF)
    ledger.open("small", GPU, at=0.0)
    ledger.open("big", "80gb", at=0.0)
    by = ledger.totals(10.0).by_category_tier()
    assert by[(GPU, Tier.FLEX)] == pytest.approx((10.0, 10 * RATE.flex))
    assert by[("80gb", Tier.FLEX)] == pytest.approx((10.0, 10 * 0.00076))


def test_a_start_time_before_the_last_event_bills_from_that_time():
    """A Kubernetes pod is seen after it started: its bill begins at the pod's start time."""
    ledger = Ledger(TARIFF)
    ledger.open("seen-first", GPU, at=10.0)
    ledger.open("pod", GPU, at=4.0, phase=Phase.UNOBSERVED, cold_start=False)
    ledger.phase("pod", Phase.IDLE, at=10.0)
    totals = ledger.totals(12.0)
    assert seconds(totals, phase=Phase.UNOBSERVED) == pytest.approx(6.0)
    assert totals.total_seconds == pytest.approx(2.0 + 8.0)
    assert totals.cold_starts == 1


def test_a_clock_that_goes_back_never_makes_a_bill_shrink():
    ledger = Ledger(TARIFF)
    ledger.open("w", GPU, at=10.0)
    ledger.phase("w", Phase.IDLE, at=12.0)
    ledger.phase("w", Phase.BUSY, at=11.0)  # an earlier time than the last event
    assert ledger.totals(13.0).total_seconds == pytest.approx(3.0)


def test_events_for_unknown_workers_change_nothing():
    ledger = Ledger(TARIFF)
    ledger.phase("ghost", Phase.BUSY, at=1.0)
    assert ledger.close("ghost", at=2.0) is None
    ledger.open("w", GPU, at=0.0)
    ledger.open("w", GPU, at=5.0)  # opened twice: the first start counts
    assert ledger.totals(6.0).total_seconds == pytest.approx(6.0) and ledger.totals(6.0).cold_starts == 1


def test_next_prices_fill_the_active_places_first():
    ledger = Ledger(TARIFF, active=2)
    ledger.open("a", GPU, at=0.0)
    assert ledger.next_prices(GPU, 3) == [RATE.active, RATE.flex, RATE.flex]
    assert ledger.next_prices(GPU, 2, extra_staying=1) == [RATE.flex, RATE.flex]
    assert ledger.next_prices(UNPRICED, 2) == [0.0, 0.0]
    ledger.phase("a", Phase.STOPPING, at=1.0)  # leaving: its place is free for a new worker
    assert ledger.next_prices(GPU, 1, extra_staying=1) == [RATE.active]


@pytest.mark.parametrize(("state", "in_flight", "phase"), [
    (WorkerState.STARTING, 0, Phase.START),
    (WorkerState.READY, 0, Phase.IDLE),
    (WorkerState.READY, 3, Phase.BUSY),
    (WorkerState.UNHEALTHY, 0, Phase.IDLE),
    (WorkerState.UNHEALTHY, 1, Phase.BUSY),
    (WorkerState.DRAINING, 0, Phase.STOPPING),
    (WorkerState.DRAINING, 1, Phase.BUSY),
    (WorkerState.STOPPING, 0, Phase.STOPPING),
    (WorkerState.EXITED, 0, None),
])
def test_phase_for_each_worker_state(state, in_flight, phase):
    assert phase_for(state, in_flight) is phase


def test_totals_survive_a_json_round_trip_and_a_new_ledger_continues_from_them():
    ledger = Ledger(TARIFF, active=1)
    ledger.open("a", GPU, at=0.0)
    ledger.phase("a", Phase.BUSY, at=1.0)
    ledger.open("b", UNPRICED, at=0.0)
    saved = json.loads(json.dumps(ledger.totals(3.5).to_json()))
    restored = Totals.from_json(saved)
    assert restored == ledger.totals(3.5)
    again = Ledger(TARIFF, active=1, totals=restored)
    again.open("c", GPU, at=100.0)
    again.close("c", at=101.0)
    assert again.totals(200.0).total_seconds == pytest.approx(3.5 + 3.5 + 1.0)
    assert again.totals(200.0).cold_starts == 3


@pytest.mark.parametrize("bad", [
    {"billed": [{"category": "x", "tier": "gold", "phase": "busy", "seconds": 1}]},
    {"billed": [{"category": "x", "tier": "flex", "phase": "busy", "seconds": -1}]},
    {"billed": [{"category": "x", "tier": "flex", "phase": "busy", "seconds": "nan"}]},
    {"billed": [{"tier": "flex", "phase": "busy"}]},
])
def test_a_malformed_totals_document_is_refused(bad):
    with pytest.raises((ValueError, KeyError, TypeError)):
        Totals.from_json(bad)


# -- invariants over random lives ------------------------------------------------------------------

_EVENT = st.tuples(st.integers(0, 3), st.sampled_from(["open", *Phase, "close"]), st.floats(0.0, 5.0))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENT, max_size=40), active=st.integers(0, 3))
def test_bills_add_up_for_any_sequence_of_events(events, active):
    """Whatever happens: stopped workers are billed whole seconds, bills never shrink as time passes, the
    ideal is the busy time, at most `active` workers pay the active price, and dollars match the seconds."""
    ledger = Ledger(TARIFF, active=active)
    now, lives, opened_at, previous = 0.0, [], {}, 0.0
    for n, kind, dt in events:
        now += dt
        wid = f"w{n}"
        if kind == "open":
            if wid not in ledger:
                opened_at[wid] = now
            ledger.open(wid, GPU if n % 2 else UNPRICED, at=now)
        elif kind == "close":
            bill = ledger.close(wid, at=now)
            if bill is not None:
                lives.append((bill, now - opened_at[wid]))
        else:
            ledger.phase(wid, Phase(kind), at=now)
        assert sum(ledger.bill(w, now).tier is Tier.ACTIVE for w in ledger.open_ids) == min(  # type: ignore[union-attr]
            active, sum(ledger.bill(w, now).phase is not Phase.STOPPING for w in ledger.open_ids))  # type: ignore[union-attr]
        total = ledger.totals(now).total_seconds
        assert total >= previous - 1e-9
        previous = total
    for bill, life in lives:
        assert bill.billed_seconds == (math.ceil(life - 1e-9) if life > 1e-9 else 0)
        assert bill.seconds == pytest.approx(life)
    totals = ledger.totals(now)
    busy = seconds(totals, phase=Phase.BUSY) + seconds(totals, UNPRICED, phase=Phase.BUSY)
    if not lives:  # no rounding yet: the ideal is exactly the busy time
        assert totals.ideal_seconds == pytest.approx(busy, abs=1e-6)
    assert busy - len(lives) - 1e-6 <= totals.ideal_seconds <= busy + 1e-6  # rounding may land in busy
    expected = sum(s * (RATE.of(t)) for (c, t, _), s in totals.seconds.items() if c == GPU)
    assert totals.total_dollars == pytest.approx(expected, abs=1e-12)
