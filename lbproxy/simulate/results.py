"""What one simulated setting gave: requests, waits, rejections, cold starts and the bill, and their JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..billing import Phase, Totals

__all__ = ["Outcome", "percentile"]

PHASES = (Phase.START, Phase.BUSY, Phase.IDLE, Phase.STOPPING)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, interpolated between ranks (numpy's default); 0 when
    there are none. The real run's waits (from the access log) are read with the same function."""
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One setting's simulated day (or whatever the trace spans)."""

    settings: Mapping[str, Any]  # the keys varied by --set/--grid, as given
    totals: Totals
    end: float  # seconds simulated: the trace's span, or until the last worker stopped
    requests: int
    served: int
    rejected_503: int  # no worker within timeouts.wait (or workers failing to start)
    rejected_429: int  # more than limits.max_queue waiting
    timed_out_504: int  # longer than timeouts.execution
    waits: Sequence[float]  # every request's wait in lbproxy's queue, sorted (a rejection's too, as the log has it)
    cold_starts: int  # workers started (each paid its cold start)
    failed_starts: int  # workers stopped for not being ready within timeouts.init
    hit_cold_start: int  # requests that waited for a worker that was still starting when they arrived
    peak_workers: int
    queued_at_max: int  # requests that had to queue while workers.max workers were already running
    capped_starts: int  # decisions whose starts cost.max_per_hour held back
    series: Sequence[tuple[float, int, int]] = field(default=())  # (time, workers, queued) at each change
    wall_seconds: float = 0.0  # how long the simulation took to run

    def wait(self, q: float) -> float:
        return percentile(self.waits, q)

    @property
    def cost(self) -> float:
        return self.totals.total_dollars

    @property
    def ideal_cost(self) -> float:
        return self.totals.ideal_dollars

    @property
    def rejected(self) -> int:
        return self.rejected_503 + self.rejected_429

    def worker_seconds(self) -> dict[str, float]:
        phases = self.totals.by_phase()
        out = {"total": self.totals.total_seconds}
        for phase in PHASES:
            out[phase.value] = phases.get(phase, (0.0, 0.0))[0]
        return out

    def vs_ideal(self) -> float | None:
        """Cost over the ideal (in seconds when nothing is priced); None when the ideal is 0."""
        t = self.totals
        if t.priced:
            return t.total_dollars / t.ideal_dollars if t.ideal_dollars > 0 else None
        return t.total_seconds / t.ideal_seconds if t.ideal_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        phases = self.totals.by_phase()
        ratio = self.vs_ideal()
        return {
            "settings": dict(self.settings),
            "cost_dollars": round(self.cost, 6),
            "ideal_cost_dollars": round(self.ideal_cost, 6),
            "cost_vs_ideal": None if ratio is None else round(ratio, 4),
            "priced": self.totals.priced,
            "worker_seconds": {k: round(v, 3) for k, v in self.worker_seconds().items()},
            "dollars_by_phase": {p.value: round(phases.get(p, (0.0, 0.0))[1], 6) for p in PHASES},
            "wait_p50_s": round(self.wait(50), 4),
            "wait_p95_s": round(self.wait(95), 4),
            "wait_p99_s": round(self.wait(99), 4),
            "wait_max_s": round(self.waits[-1] if self.waits else 0.0, 4),
            "requests": self.requests,
            "served": self.served,
            "rejected": self.rejected_503,
            "rejected_429": self.rejected_429,
            "timed_out_504": self.timed_out_504,
            "cold_starts": self.cold_starts,
            "failed_starts": self.failed_starts,
            "requests_hit_cold_start": self.hit_cold_start,
            "peak_workers": self.peak_workers,
            "queued_at_max_workers": self.queued_at_max,
            "starts_held_by_spend_limit": self.capped_starts,
            "simulated_seconds": round(self.end, 3),
            "wall_seconds": round(self.wall_seconds, 3),
        }
