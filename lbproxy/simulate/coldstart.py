"""Cold-start times of simulated workers: fixed, or drawn from a distribution, or a given sequence.

Forms (durations as in the config: ``500ms``, ``30s``, ``2m`` or seconds):

- ``30s``: every worker takes 30 s from start to ready;
- ``uniform(20s,40s)``: uniform between the two;
- ``lognormal(30s,0.5)``: lognormal with mean 30 s and coefficient of variation 0.5 (model loads have a tail);
- ``seq(1.2,1.5,1.3)``: the first worker started takes 1.2 s, the second 1.5 s ... then the list again (replay
  the cold starts a real run had: ``lbproxy serve`` logs ``worker W ready after 1.23s``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from ..durations import format_duration, parse_duration

__all__ = ["ColdStart", "parse_cold_start"]

_CALL = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True, slots=True)
class ColdStart:
    """How long the n-th started worker takes to become ready."""

    kind: str  # fixed | uniform | lognormal | seq
    values: tuple[float, ...]

    def sample(self, rng: random.Random, n: int) -> float:
        """The cold start of the ``n``-th worker started (0-based)."""
        v = self.values
        if self.kind == "fixed":
            return v[0]
        if self.kind == "uniform":
            return rng.uniform(v[0], v[1])
        if self.kind == "lognormal":
            mean, cv = v
            if cv <= 0 or mean <= 0:
                return mean
            sigma2 = math.log(1 + cv * cv)
            return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
        return v[n % len(v)]

    @property
    def typical(self) -> float:
        """The mean cold start (what the product page's rules compare with)."""
        v = self.values
        if self.kind == "uniform":
            return (v[0] + v[1]) / 2
        if self.kind == "seq":
            return sum(v) / len(v)
        return v[0]

    def __str__(self) -> str:
        if self.kind == "fixed":
            return format_duration(self.values[0])
        if self.kind == "lognormal":
            return f"lognormal({format_duration(self.values[0])},{self.values[1]:g})"
        return f"{self.kind}({','.join(format_duration(v) for v in self.values)})"


def parse_cold_start(text: str) -> ColdStart:
    """Raises ValueError naming the accepted forms."""
    forms = "use 30s, uniform(20s,40s), lognormal(30s,0.5) or seq(1.2s,1.5s,...)"
    m = _CALL.match(text)
    try:
        if m is None:
            return ColdStart("fixed", (parse_duration(text),))
        kind, args = m.group(1), [a.strip() for a in m.group(2).split(",") if a.strip()]
        if kind == "uniform" and len(args) == 2:
            low, high = parse_duration(args[0]), parse_duration(args[1])
            if high < low:
                raise ValueError(f"uniform({args[0]},{args[1]}): the second bound is below the first")
            return ColdStart(kind, (low, high))
        if kind == "lognormal" and len(args) == 2:
            cv = float(args[1])
            if not math.isfinite(cv) or cv < 0:
                raise ValueError(f"lognormal: the coefficient of variation must be >= 0, not {args[1]!r}")
            return ColdStart(kind, (parse_duration(args[0]), cv))
        if kind == "seq" and args:
            return ColdStart(kind, tuple(parse_duration(a) for a in args))
    except ValueError as exc:
        raise ValueError(f"invalid cold start {text!r}: {exc}") from None
    raise ValueError(f"invalid cold start {text!r} ({forms})")
