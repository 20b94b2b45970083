"""GPU category fallback decisions: pure, with a fake clock."""

from __future__ import annotations

from lbproxy.kube.fallback import Move, PoolState, choose_pool, moves

H100, A100, L40 = PoolState("h100", 0), PoolState("a100", 1), PoolState("l40", 2)


def test_first_choice_while_it_is_not_blocked():
    assert choose_pool([A100, H100], {}, now=100) == "h100"


def test_blocked_first_choice_falls_back_in_order():
    assert choose_pool([H100, A100, L40], {"h100": 200}, now=100) == "a100"
    assert choose_pool([H100, A100, L40], {"h100": 200, "a100": 150}, now=100) == "l40"


def test_first_choice_again_once_its_block_ends():
    assert choose_pool([H100, A100], {"h100": 100}, now=100) == "h100"


def test_all_blocked_takes_the_one_free_soonest():
    assert choose_pool([H100, A100], {"h100": 300, "a100": 200}, now=100) == "a100"


def test_pods_stuck_long_enough_move_to_the_next_pool():
    stuck = PoolState("h100", 0, (10.0, 50.0, 95.0))
    assert moves([stuck, A100], {}, now=100, fallback_after=30) == [Move("h100", "a100", 2)]


def test_nothing_moves_before_fallback_after():
    assert moves([PoolState("h100", 0, (90.0,)), A100], {}, now=100, fallback_after=30) == []


def test_the_last_category_has_nowhere_to_go():
    assert moves([H100, PoolState("a100", 1, (0.0,))], {}, now=100, fallback_after=30) == [Move("a100", None, 1)]


def test_blocked_targets_are_skipped():
    stuck = PoolState("h100", 0, (0.0,))
    assert moves([stuck, A100, L40], {"a100": 500}, now=100, fallback_after=30) == [Move("h100", "l40", 1)]


def test_a_pool_stuck_itself_is_no_target():
    assert moves([PoolState("h100", 0, (0.0,)), PoolState("a100", 1, (0.0,)), L40], {}, now=100,
                 fallback_after=30) == [Move("h100", "l40", 1), Move("a100", "l40", 1)]
