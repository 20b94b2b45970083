"""Routing: ``choose_worker`` picks a ready worker with a free slot, as a pure function of plain values."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from lbproxy.routing import burst_share, choose_worker, parse_affinity


@dataclass(frozen=True)
class W:
    id: str
    in_flight: int


def workers(*loads: int) -> list[W]:
    """Workers named w0, w1, ... with the given in-flight counts."""
    return [W(f"w{i}", load) for i, load in enumerate(loads)]


def always(value: int) -> Callable[[int], int]:
    def rand(n: int) -> int:
        assert 0 <= value < n
        return value

    return rand


def scripted(*values: int) -> Callable[[int], int]:
    """A ``rand`` that returns ``values`` in order and fails if called more often."""
    it = iter(values)

    def rand(n: int) -> int:
        value = next(it)
        assert 0 <= value < n
        return value

    return rand


def never(n: int) -> int:
    raise AssertionError("no random choice expected")


# -- least loaded --------------------------------------------------------------------------------------


def test_least_loaded_worker_is_chosen() -> None:
    ws = workers(3, 1, 2)
    assert choose_worker(ws, concurrency=4, rand=never) is ws[1]


def test_full_workers_are_skipped() -> None:
    ws = workers(2, 3, 1, 2)  # only w2 has a free slot
    assert choose_worker(ws, concurrency=2, rand=never) is ws[2]


def test_no_worker_when_all_are_full() -> None:
    assert choose_worker(workers(2, 2, 3), concurrency=2, rand=never) is None


@pytest.mark.parametrize("preferred", [None, "w0"])
def test_no_worker_when_none_is_ready(preferred: str | None) -> None:
    assert choose_worker([], concurrency=2, preferred=preferred, rand=never) is None


def test_concurrency_zero_means_unlimited() -> None:
    ws = workers(1000, 500)
    assert choose_worker(ws, concurrency=0, rand=never) is ws[1]


# -- soft affinity -------------------------------------------------------------------------------------


def test_preferred_worker_wins_when_it_has_a_free_slot() -> None:
    ws = workers(0, 3)
    assert choose_worker(ws, concurrency=4, preferred="w1", rand=never) is ws[1]


def test_preferred_worker_wins_with_unlimited_concurrency() -> None:
    ws = workers(0, 99)
    assert choose_worker(ws, concurrency=0, preferred="w1", rand=never) is ws[1]


def test_preferred_worker_is_ignored_when_full() -> None:
    ws = workers(1, 4, 2)
    assert choose_worker(ws, concurrency=4, preferred="w1", rand=never) is ws[0]


def test_preferred_worker_is_ignored_when_gone() -> None:
    ws = workers(2, 1)
    assert choose_worker(ws, concurrency=4, preferred="gone", rand=never) is ws[1]


def test_full_preferred_worker_with_every_other_full_gives_none() -> None:
    assert choose_worker(workers(4, 4), concurrency=4, preferred="w0", rand=never) is None


# -- ties ----------------------------------------------------------------------------------------------


def test_a_single_least_loaded_worker_needs_no_random_choice() -> None:
    ws = workers(1, 0, 1)
    assert choose_worker(ws, concurrency=0, rand=never) is ws[1]


@pytest.mark.parametrize(("rand", "chosen"), [(always(0), "w3"), (scripted(1, 2), "w0"), (scripted(0, 1), "w2")])
def test_ties_are_broken_by_rand(rand: Callable[[int], int], chosen: str) -> None:
    ws = workers(0, 5, 0, 0)  # w0, w2 and w3 tie: rand(2) decides on w2, then rand(3) on w3
    w = choose_worker(ws, concurrency=8, rand=rand)
    assert w is not None and w.id == chosen


def test_ties_spread_evenly() -> None:
    ws = workers(1, 1, 1, 3)
    rng = random.Random(1234)
    counts: Counter[str] = Counter()
    for _ in range(3000):
        w = choose_worker(ws, concurrency=4, rand=rng.randrange)
        assert w is not None
        counts[w.id] += 1
    assert set(counts) == {"w0", "w1", "w2"}
    assert all(900 <= n <= 1100 for n in counts.values()), counts


def test_full_workers_do_not_take_part_in_ties() -> None:
    ws = workers(2, 2, 1)
    assert choose_worker(ws, concurrency=2, rand=never) is ws[2]


# -- power of two choices above 16 workers -------------------------------------------------------------


def test_sixteen_workers_are_scanned_exactly() -> None:
    loads = [3] * 16
    loads[11] = 0
    ws = workers(*loads)

    def no_sampling(n: int) -> int:
        assert n < 16, "sampled among all workers: power of two choices used at 16"
        return 0

    assert choose_worker(ws, concurrency=4, rand=no_sampling) is ws[11]


def test_above_sixteen_workers_the_less_loaded_of_two_samples_is_chosen() -> None:
    loads = [3] * 17
    loads[4], loads[9], loads[16] = 2, 1, 0  # w16 is the least loaded but not sampled
    ws = workers(*loads)
    assert choose_worker(ws, concurrency=4, rand=scripted(4, 9)) is ws[9]


def test_above_sixteen_workers_equal_samples_take_the_first() -> None:
    ws = workers(*([1] * 20))
    assert choose_worker(ws, concurrency=4, rand=scripted(7, 3)) is ws[7]


def test_above_sixteen_workers_with_both_samples_full_a_free_worker_is_still_found() -> None:
    loads = [4] * 20
    loads[13] = 3
    ws = workers(*loads)
    assert choose_worker(ws, concurrency=4, rand=scripted(2, 5)) is ws[13]


def test_above_sixteen_workers_all_full_gives_none() -> None:
    ws = workers(*([4] * 20))
    assert choose_worker(ws, concurrency=4, rand=scripted(2, 5)) is None


def test_above_sixteen_workers_the_preferred_worker_still_wins() -> None:
    ws = workers(*([0] * 19 + [3]))
    assert choose_worker(ws, concurrency=4, preferred="w19", rand=never) is ws[19]


# -- the affinity header -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (None, (None, False)), ("", (None, False)), ("w1", ("w1", False)), (" w1 ", ("w1", False)),
    ("strict w1", ("w1", True)), ("STRICT  w1 ", ("w1", True)), ("strict", ("strict", False)),
    ("strict ", ("strict", False)), ("w1 strict", ("w1 strict", False)),
])
def test_parse_affinity(value: str | None, expected: tuple[str | None, bool]) -> None:
    assert parse_affinity(value) == expected


def test_burst_share_splits_the_queue_among_ready_and_soon_ready_workers() -> None:
    # 1 ready worker, 1 started 1 s ago (cold starts take 2 s): 7 requests waiting -> 4 each, and look again
    # when the starting one is no longer expected (2 * 2 + 1 = 5 s after its start).
    assert burst_share(8, 1, 7, [9.0], now=10.0, expected_cold_start=2.0) == (4, 14.0)
    assert burst_share(2, 1, 7, [9.0], now=10.0, expected_cold_start=2.0) == (2, 14.0)  # never above concurrency
    assert burst_share(0, 1, 7, [9.0], now=10.0, expected_cold_start=2.0) == (4, 14.0)  # 0: unlimited


def test_burst_share_ignores_a_worker_starting_far_longer_than_expected() -> None:
    assert burst_share(8, 1, 7, [0.0], now=10.0, expected_cold_start=2.0) == (8, None)
    assert burst_share(8, 1, 7, [], now=10.0, expected_cold_start=None) == (8, None)
