"""The dashboard's last hour: fixed-size rings of samples, and the sampler that turns counters into rates.

Pure and bounded: ``History`` preallocates one ``array('d')`` ring per series (8 bytes a sample), so its
memory is fixed at start (``nbytes``) whatever the traffic; the sampler keeps one previous reading to take
differences. No asyncio: lbproxy.dashboard calls ``Sampler.sample`` every ``STEP`` seconds.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["CHARTS", "SERIES", "STEP", "WINDOW", "History", "Reading", "Sampler", "quantile"]

STEP = 2.0  # seconds between samples
WINDOW = 3600.0  # the dashboard shows the last hour

CHARTS: Mapping[str, tuple[str, ...]] = {
    "requests": ("req_2xx", "req_3xx", "req_4xx", "req_5xx"),
    "queue": ("queued", "in_flight", "wait_p50", "wait_p99"),
    "workers": ("starting", "ready", "unhealthy", "draining", "stopping"),
    "cold_starts": ("cold_starts",),
    "cost": ("cost_rate", "spent", "spent_start", "spent_busy", "spent_idle", "spent_stopping"),
}
"""Chart name -> its series (each also served alone under /api/charts/<name>)."""
SERIES: tuple[str, ...] = tuple(name for names in CHARTS.values() for name in names)

_PHASES = ("start", "busy", "idle", "stopping")


class _Ring:
    __slots__ = ("_data", "_head", "_len")

    def __init__(self, size: int) -> None:
        self._data = array("d", [0.0]) * size  # exactly size doubles (frombytes over-allocates)
        self._head = 0  # next write
        self._len = 0

    def append(self, value: float) -> None:
        size = len(self._data)
        self._data[self._head] = value
        self._head = (self._head + 1) % size
        self._len = min(self._len + 1, size)

    def last(self, n: int) -> list[float]:
        """The newest ``n`` values, oldest first."""
        n = min(n, self._len)
        size = len(self._data)
        start = (self._head - n) % size
        if start + n <= size:
            return self._data[start:start + n].tolist()
        return self._data[start:].tolist() + self._data[:(start + n) % size].tolist()

    def __len__(self) -> int:
        return self._len


class History:
    """The newest ``size`` samples of every series, with their unix times."""

    def __init__(self, names: Sequence[str] = SERIES, size: int = int(WINDOW / STEP)) -> None:
        self.names = tuple(names)
        self.size = size
        self._t = _Ring(size)
        self._series = {name: _Ring(size) for name in self.names}

    @property
    def nbytes(self) -> int:
        """Bytes held by the samples: fixed at construction."""
        return 8 * self.size * (1 + len(self.names))

    def append(self, t: float, values: Mapping[str, float]) -> None:
        self._t.append(t)
        for name, ring in self._series.items():
            ring.append(values.get(name, math.nan))

    def __len__(self) -> int:
        return len(self._t)

    def since(self, after: float | None = None, names: Iterable[str] | None = None) -> dict[str, list[float | None]]:
        """Samples newer than unix time ``after`` (all without it) as JSON-ready columns; a gap is None."""
        times = self._t.last(len(self._t))
        n = len(times) if after is None else sum(1 for t in times if t > after)
        out: dict[str, list[float | None]] = {"t": list(times[len(times) - n:])}
        for name in names or self.names:
            out[name] = [None if math.isnan(v) else v for v in self._series[name].last(n)]
        return out


@dataclass(frozen=True, slots=True)
class Reading:
    """Counters and gauges read at one instant; cumulative counters are differenced by the sampler."""

    requests: Mapping[str, float]  # status code -> requests answered so far
    wait_buckets: Sequence[tuple[float, float]]  # cumulative (upper bound, count) of the queue-wait histogram
    queued: int
    in_flight: int
    workers: Mapping[str, int]  # state -> count
    cold_starts: int
    cost_rate: float  # dollars per hour now
    spent: Mapping[str, float] = field(default_factory=dict)  # phase -> dollars (or seconds unpriced) so far


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of histogram buckets (cumulative counts), interpolated within its bucket as Prometheus'
    histogram_quantile does; None without observations. The +Inf bucket answers its lower bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class Sampler:
    """Turns successive readings into one sample: request rates per status class, waits in the interval,
    cold starts in the interval, and the spend so far."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._last: Reading | None = None
        self._last_t = 0.0

    def sample(self, t: float, r: Reading) -> dict[str, float]:
        prev, dt = self._last, t - self._last_t
        values: dict[str, float] = {
            "queued": r.queued, "in_flight": r.in_flight, "cost_rate": r.cost_rate,
            **{state: float(r.workers.get(state, 0)) for state in CHARTS["workers"]},
            "spent": sum(r.spent.values()),
            **{f"spent_{phase}": r.spent.get(phase, 0.0) for phase in _PHASES},
        }
        if prev is not None and dt > 0:
            classes = dict.fromkeys(CHARTS["requests"], 0.0)
            for code, count in r.requests.items():
                key = f"req_{code[:1]}xx"
                if key in classes:
                    classes[key] += max(0.0, count - prev.requests.get(code, 0.0)) / dt
            values.update(classes)
            values["cold_starts"] = float(max(0, r.cold_starts - prev.cold_starts))
            delta = _bucket_delta(r.wait_buckets, prev.wait_buckets)
            for name, q in (("wait_p50", 0.5), ("wait_p99", 0.99)):
                found = quantile(q, delta)
                values[name] = math.nan if found is None else found
        self._last, self._last_t = r, t
        self.history.append(t, values)
        return values


def _bucket_delta(
    now: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    old = dict(before)
    return [(le, max(0.0, count - old.get(le, 0.0))) for le, count in now]
