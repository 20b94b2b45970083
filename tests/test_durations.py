"""Durations: what a config file may write, and how logs show it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbproxy.durations import DURATION_FORMS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        ("0.25h", 900.0),
        (".5s", 0.5),
        ("1h30m", 5400.0),
        ("1d2h3m4s500ms", 93784.5),
        ("30", 30.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("  5s  ", 5.0),
        ("5S", 5.0),
    ],
)
def test_strings_with_units_or_plain_seconds_are_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (5, 5.0), (1.5, 1.5), (600, 600.0)])
def test_numbers_are_seconds(value: float, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_result_is_always_a_float() -> None:
    assert isinstance(parse_duration(5), float)
    assert isinstance(parse_duration("5s"), float)


@pytest.mark.parametrize("value", [-1, -0.5, "-5s", "-1", " -2m"])
def test_negative_durations_are_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value", ["", "   ", "soon", "5w", "5 s", "5sec", "1e3", "s", "5s5", "1..5s", "1h 30m", "0x10", "∞"]
)
def test_malformed_strings_are_rejected_naming_the_accepted_forms(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert DURATION_FORMS in str(caught.value)
    assert str(caught.value).startswith("invalid duration ")


@pytest.mark.parametrize("value", [None, True, False, [], {}, b"5s"])
def test_non_numbers_and_booleans_are_rejected(value: object) -> None:
    """YAML reads `off` and `no` as False: they must not silently mean zero seconds."""
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, 10**400, "9" * 400])
def test_non_finite_and_huge_values_are_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_error_message_shortens_a_huge_value() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("x" * 10_000)
    assert len(str(caught.value)) < 200


def test_error_message_is_the_one_the_config_shows() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("soon")
    assert str(caught.value) == "invalid duration 'soon' (use 500ms, 5s, 10m, 24h or seconds)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (0.0005, "0.5ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (5, "5s"),
        (59.25, "59.25s"),
        (120, "2m"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (3600, "1h"),
        (86400, "1d"),
        (604800, "7d"),
        (90061, "1d1h1m1s"),
        (61.5, "1m1.5s"),
    ],
)
def test_format_gives_the_short_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_shows_a_disabled_limit_as_off() -> None:
    assert format_duration(None) == "off"


@pytest.mark.parametrize(("seconds", "text"), [(-5, "-5s"), (math.inf, "inf"), (math.nan, "nan")])
def test_format_never_raises_on_odd_values(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_format_parses_back_to_the_same_milliseconds(ms: int) -> None:
    assert round(parse_duration(format_duration(ms / 1000)) * 1000) == ms
