"""The spend limit (lbproxy.spend): starts that would bring the hourly rate above cost.max_per_hour wait."""

from __future__ import annotations

from lbproxy.spend import starts_within_limit


def test_no_limit_allows_every_start():
    check = starts_within_limit(3, 1000.0, [5.0, 5.0, 5.0], None)
    assert check.allowed == 3 and check.capped is None


def test_starts_that_fit_under_the_limit_go_and_the_one_that_does_not_is_named():
    check = starts_within_limit(3, 1.0, [0.5, 0.5, 0.5], 2.0)
    assert check.allowed == 2
    assert check.capped is not None and "cost.max_per_hour" in check.capped and "$2.00/h" in check.capped
    assert "$2.00/h" in check.capped and "$0.50/h" in check.capped


def test_a_rate_exactly_at_the_limit_is_within_it():
    assert starts_within_limit(1, 0.3, [0.1 + 0.2 - 0.3 + 0.7], 1.0).allowed == 1  # float sums: 1.0000000000000002


def test_an_already_reached_limit_allows_nothing():
    check = starts_within_limit(2, 80.0, [2.8, 2.8], 80.0)
    assert check.allowed == 0 and check.capped


def test_workers_start_in_order_so_a_later_cheaper_one_does_not_jump_the_queue():
    # The first new worker (flex) does not fit; the second would have (cheaper) but starts never reorder.
    assert starts_within_limit(2, 0.0, [3.0, 1.0], 2.0).allowed == 0


def test_unpriced_workers_never_hit_the_limit():
    assert starts_within_limit(4, 0.0, [0.0] * 4, 0.01).allowed == 4


def test_nothing_wanted_is_never_capped():
    assert starts_within_limit(0, 100.0, [], 1.0).capped is None
    assert starts_within_limit(-1, 0.0, [], 1.0).allowed == 0


def test_prices_beyond_the_list_repeat_the_last_one():
    assert starts_within_limit(5, 0.0, [1.0], 3.0).allowed == 3
