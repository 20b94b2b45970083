"""The dashboard's history (lbproxy.history): fixed-size rings, the sampler's rates, histogram quantiles."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from lbproxy import history as history_module
from lbproxy.history import CHARTS, SERIES, STEP, WINDOW, History, Reading, Sampler, quantile

INF = math.inf


def reading(**changes: object) -> Reading:
    base: dict[str, object] = {"requests": {}, "wait_buckets": [(0.1, 0), (1.0, 0), (INF, 0)], "queued": 0,
                               "in_flight": 0, "workers": {}, "cold_starts": 0, "cost_rate": 0.0, "spent": {}}
    return Reading(**{**base, **changes})  # type: ignore[arg-type]


def test_the_ring_keeps_the_newest_samples_in_order_once_full():
    history = History(("x",), size=4)
    for i in range(10):
        history.append(float(i), {"x": i * 10.0})
    data = history.since()
    assert data["t"] == [6.0, 7.0, 8.0, 9.0] and data["x"] == [60.0, 70.0, 80.0, 90.0]
    assert history.since(7.5) == {"t": [8.0, 9.0], "x": [80.0, 90.0]}
    assert history.since(100.0) == {"t": [], "x": []}
    assert len(history) == 4


def test_a_missing_value_is_a_gap():
    history = History(("a", "b"), size=3)
    history.append(1.0, {"a": 1.0})
    assert history.since() == {"t": [1.0], "a": [1.0], "b": [None]}


def test_memory_is_fixed_when_created_whatever_is_appended():
    """The bound the README states: an hour at STEP seconds, 8 bytes a sample per series and per time."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    history = History()
    created = tracemalloc.take_snapshot()
    for i in range(3 * history.size):
        history.append(float(i), dict.fromkeys(SERIES, 1.5))
    filled = tracemalloc.take_snapshot()
    tracemalloc.stop()
    ours = [tracemalloc.Filter(True, history_module.__file__)]
    held = sum(s.size_diff for s in created.filter_traces(ours).compare_to(before.filter_traces(ours), "filename"))
    grown = sum(s.size_diff for s in filled.filter_traces(ours).compare_to(created.filter_traces(ours), "filename"))
    assert history.size == int(WINDOW / STEP) == 1800
    assert history.nbytes == 8 * 1800 * (1 + len(SERIES)) == 302_400  # 21 rings of 1,800 doubles
    assert history.nbytes <= held < history.nbytes + 10_000, held
    assert grown < 5_000, grown  # appending allocates nothing that stays
    print(f"\nhistory: {len(SERIES)} series x {history.size} samples: {held} bytes")


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.1), (0.25, 0.05), (0.6, 0.28), (0.99, 0.982), (1.0, 1.0)])
def test_quantiles_interpolate_within_the_bucket_as_prometheus_does(q, expected):
    # 10 observations: 5 at or under 0.1 s, 5 in (0.1, 1]
    assert quantile(q, [(0.1, 5), (1.0, 10), (INF, 10)]) == pytest.approx(expected)


def test_quantiles_of_no_observations_are_unknown_and_of_the_inf_bucket_its_lower_bound():
    assert quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert quantile(0.5, []) is None
    assert quantile(0.99, [(0.1, 0), (1.0, 0), (INF, 4)]) == 1.0


def test_the_sampler_turns_counters_into_rates_by_status_class_and_waits_in_the_interval():
    history = History(size=10)
    sampler = Sampler(history)
    first = sampler.sample(100.0, reading(requests={"200": 10, "503": 1}, cold_starts=1))
    assert "req_2xx" not in first  # no interval yet: a gap, not a made-up zero
    values = sampler.sample(102.0, reading(
        requests={"200": 30, "204": 2, "404": 4, "503": 1, "302": 2}, cold_starts=3, queued=2, in_flight=5,
        workers={"ready": 2, "starting": 1}, cost_rate=1.5, spent={"busy": 2.0, "idle": 1.0},
        wait_buckets=[(0.1, 2), (1.0, 4), (INF, 4)]))
    assert values["req_2xx"] == pytest.approx(11.0) and values["req_3xx"] == pytest.approx(1.0)
    assert values["req_4xx"] == pytest.approx(2.0) and values["req_5xx"] == 0.0
    assert values["cold_starts"] == 2.0 and values["queued"] == 2 and values["in_flight"] == 5
    assert values["ready"] == 2 and values["starting"] == 1 and values["stopping"] == 0
    assert values["wait_p50"] == pytest.approx(0.1) and values["wait_p99"] == pytest.approx(0.982)
    assert values["spent"] == 3.0 and values["spent_busy"] == 2.0 and values["spent_start"] == 0.0
    quiet = sampler.sample(104.0, reading(requests={"200": 30}, cold_starts=3,
                                          wait_buckets=[(0.1, 2), (1.0, 4), (INF, 4)]))
    assert math.isnan(quiet["wait_p50"])  # nobody waited in that interval
    assert history.since(101.0)["wait_p50"] == [pytest.approx(0.1), None]


def test_every_chart_series_is_sampled():
    assert set(SERIES) == {name for names in CHARTS.values() for name in names}
    sampler = Sampler(History(size=2))
    sampler.sample(0.0, reading())
    assert set(sampler.sample(2.0, reading())) == set(SERIES)
