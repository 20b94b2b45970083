"""Durations as people write them in a config file (`500ms`, `5s`, `10m`, `24h`, `7d`) and back.

A purely computational module: the config stores every duration as float seconds, and log lines show them in
the same short form the user wrote.
"""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_FORMS", "format_duration", "parse_duration"]

#: The accepted forms, quoted in every error so the reader knows what to write instead.
DURATION_FORMS = "use 500ms, 5s, 10m, 24h or seconds"

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# One or more number+unit parts (`1h30m`, what format_duration prints), or a plain number of seconds.
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_COMPOUND = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_PLAIN = re.compile(_NUMBER)


def _shown(value: object) -> str:
    """The offending value for an error message, cut short: fuzzed or pasted input can be huge."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _invalid(value: object, why: str = "") -> ValueError:
    detail = f"{why}; {DURATION_FORMS}" if why else DURATION_FORMS
    return ValueError(f"invalid duration {_shown(value)} ({detail})")


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `5s`, `10m`, `24h`, `7d`, `1h30m`, `1.5s`, `"30"` or a number of seconds.

    Raises ValueError naming the accepted forms for anything else: negatives, empty strings, unknown units,
    booleans (YAML turns `off`/`no` into False, which must not silently mean 0), NaN and infinity.
    """
    if isinstance(value, bool):
        raise _invalid(value)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range
            raise _invalid(value, "too large") from None
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("-"):
            raise _invalid(value, "must not be negative")
        if _PLAIN.fullmatch(text):
            seconds = float(text)
        elif _COMPOUND.fullmatch(text):
            seconds = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART.findall(text))
        else:
            raise _invalid(value)
    else:
        raise _invalid(value)
    if math.isnan(seconds):
        raise _invalid(value)
    if math.isinf(seconds):
        raise _invalid(value, "too large")
    if seconds < 0:
        raise _invalid(value, "must not be negative")
    return seconds


def _trim(number: float) -> str:
    """`1.5`, `2`, `0.25`: at most millisecond precision, no trailing zeros."""
    text = f"{number:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: float | None) -> str:
    """Short human form for logs: `500ms`, `5s`, `2m`, `1h30m`, `7d`; `off` for a disabled (None) limit.

    The output parses back with parse_duration (to millisecond precision). Never raises: a log line must not
    fail because of an odd value, so NaN and infinity are shown as Python prints them.
    """
    if seconds is None:
        return "off"
    if math.isnan(seconds) or math.isinf(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    total_ms = round(seconds * 1000)
    if total_ms == 0:
        return "0s" if seconds == 0 else f"{_trim(seconds * 1000)}ms"
    if total_ms < 1000:
        return f"{total_ms}ms"
    days, rest_ms = divmod(total_ms, 86_400_000)
    hours, rest_ms = divmod(rest_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    parts = [f"{count}{unit}" for count, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if count]
    if rest_ms:
        parts.append(f"{_trim(rest_ms / 1000)}s")
    return "".join(parts)
