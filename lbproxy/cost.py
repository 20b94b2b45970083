"""The cost meter: feeds the ledger (lbproxy.billing) from the pool's events and keeps its totals.

- Phases come from the pool: its state-change listener (added, ready, draining, stopping, exited) and its
  in-flight listener (0 -> 1 -> 0). Local workers are billed from the moment the pool adds them; a Kubernetes
  pod from its ``status.startTime`` (the backend's ``describe``), so that every proxy replica bills a pod for
  the same seconds however late it saw it. Time a pod ran before this process saw it is ``unobserved``.
- Prices: the worker's pool category on Kubernetes, else ``cost.category``; ``cost.price_per_second``
  replaces the catalog's prices. A catalog price is per GPU, so a worker costs it times ``workers.gpus``.
- Totals survive a restart in ``<data dir>/<endpoint>.cost.json`` (``lbproxy.paths``), written atomically
  every ``SAVE_EVERY`` seconds while something changed, and at shutdown. With it, open pods' progress, so a
  restarted proxy resumes a pod's bill where it stopped instead of billing its whole life again.
- The spend limit prices the workers the controller wants to start (``limit_starts``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .billing import UNPRICED, Ledger, Phase, Tier, Totals, phase_for
from .config import Config
from .policy import WorkerState
from .pool import Worker, WorkerPool
from .prices import tariff_for
from .spend import starts_allowed

log = logging.getLogger("lbproxy.cost")
_BUSY = Phase.BUSY  # read on the request path: a module constant is far cheaper than the enum attribute

SAVE_EVERY = 30.0
ADOPTED_AFTER = 5.0  # a pod that started this long before the pool saw it ran before this process did
CARRY_CHECKPOINTS = 300.0  # how long a loaded pod checkpoint waits for its pod to be listed again
STATE_VERSION = 1


class CostMeter:
    """The endpoint's running bill: the ledger, fed from ``pool``'s events, plus persistence and reports."""

    def __init__(
        self,
        config: Config,
        pool: WorkerPool,
        describe: Callable[[str], Mapping[str, object]],
        state_path: Path | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pool = pool
        self.describe = describe
        self.clock = pool.clock
        self.wall = wall
        self.tariff, self.default_category, self.new_category = tariff_for(config)
        self.max_per_hour = config.cost.max_per_hour
        self.state_path = state_path
        self._pod_times = config.backend.type == "kubernetes"
        self._unstarted: set[str] = set()  # pods the pool knows that have not started (no GPU billed yet)
        self._checkpoints: dict[str, float] = {}  # pod -> unix time its bill was saved up to
        self._carry_until = self.clock() + CARRY_CHECKPOINTS
        self.since = wall()  # when these totals began (kept across restarts)
        self._saved_at = self.clock()
        self._save_failed = False
        self.ledger = Ledger(self.tariff, config.workers.active, self._load())
        self._last_saved = self.ledger.totals(self.clock()).to_json()
        pool.on_state_change(self._state_changed)
        pool.on_busy_change(self._busy_changed)

    def set_active(self, active: int) -> None:
        """A reload changed ``workers.active``: that many of the oldest workers pay the active price from now."""
        self.ledger.set_active(active, self.clock())

    # -- events ----------------------------------------------------------------------------------

    def _state_changed(self, w: Worker, old: WorkerState) -> None:
        now = self.clock()
        if w.state is WorkerState.EXITED:
            self._unstarted.discard(w.id)
            self.ledger.close(w.id, now)
            return
        if w.id not in self.ledger and not self._open(w, now):
            return
        phase = phase_for(w.state, w.in_flight)
        if phase is not None:
            self.ledger.phase(w.id, phase, now)

    def _busy_changed(self, w: Worker) -> None:
        """On the request path: a worker's first request began or its last one ended."""
        phase = _BUSY if w.in_flight else phase_for(w.state, 0)
        if phase is not None:
            self.ledger.phase(w.id, phase, self.clock())

    def _category(self, info: Mapping[str, object]) -> str:
        pool = info.get("pool")
        return pool if isinstance(pool, str) and self.tariff.rate(pool) is not None and \
            pool in self.config.gpu.categories else self.default_category

    def _open(self, w: Worker, now: float) -> bool:
        """Start billing ``w``: locally from when the pool added it, a pod from its start time. False while
        a pod has not started (unscheduled pods hold no GPU)."""
        info = self.describe(w.id)
        category = self._category(info)
        if not self._pod_times:
            self.ledger.open(w.id, category, w.started_at)
            return True
        started = info.get("started_at")
        if not isinstance(started, (int, float)):
            self._unstarted.add(w.id)
            return False
        self._unstarted.discard(w.id)
        wall = self.wall()
        start = now - max(0.0, wall - started)
        checkpoint = self._checkpoints.pop(w.id, None)
        if checkpoint is not None and checkpoint > started:  # billed by this proxy before its restart
            self.ledger.open(w.id, category, now - max(0.0, wall - checkpoint), Phase.UNOBSERVED, cold_start=False)
        elif start < w.started_at - ADOPTED_AFTER:  # it ran before this process saw it
            self.ledger.open(w.id, category, start, Phase.UNOBSERVED, cold_start=False)
        else:
            self.ledger.open(w.id, category, start)
        return True

    def refresh(self) -> None:
        """Start the bills of pods that started since the last look (the sampler calls this every tick)."""
        now = self.clock()
        for wid in list(self._unstarted):
            w = self.pool.get(wid)
            if w is None:
                self._unstarted.discard(wid)
            elif self._open(w, now):
                phase = phase_for(w.state, w.in_flight)
                if phase is not None:
                    self.ledger.phase(w.id, phase, now)

    # -- the spend limit -------------------------------------------------------------------------

    def limit_starts(self, wanted: int, pending_starts: int) -> tuple[int, str | None]:
        """For the controller: how many of ``wanted`` starts keep the hourly rate within cost.max_per_hour.

        Workers accepted but not billed yet (pods not started, starts the backend has not reported) count at
        the price they will have.
        """
        check = starts_allowed(self.ledger, self.new_category, wanted, len(self._unstarted) + pending_starts,
                               self.max_per_hour)
        return check.allowed, check.capped

    # -- reports ---------------------------------------------------------------------------------

    def totals(self) -> Totals:
        return self.ledger.totals(self.clock())

    def rate_per_hour(self) -> float:
        return self.ledger.rate_per_second() * 3600

    def worker(self, worker_id: str) -> dict[str, object]:
        """A worker's bill so far for /status: billed seconds (rounded up, as the final bill), tier, cost."""
        bill = self.ledger.bill(worker_id, self.clock())
        if bill is None:
            return {"billed_seconds": 0, "cost_dollars": 0.0, "tier": None, "category": None}
        return {"billed_seconds": bill.billed_seconds, "cost_dollars": round(bill.dollars, 6),
                "tier": bill.tier.value, "category": bill.category, "billing_phase": bill.phase.value}

    def status(self, capped: str | None = None) -> dict[str, Any]:
        """The /status ``cost`` block."""
        t = self.totals()
        phases = t.by_phase()
        categories: dict[str, dict[str, Any]] = {}
        for (category, tier), (seconds, dollars) in sorted(t.by_category_tier().items()):
            entry = categories.setdefault(category, {"seconds": 0.0, "dollars": 0.0})
            entry["seconds"] = round(entry["seconds"] + seconds, 3)
            entry["dollars"] = round(entry["dollars"] + dollars, 6)
            entry[tier.value] = {"seconds": round(seconds, 3), "dollars": round(dollars, 6)}
        return {
            "currency": "USD",
            "priced": t.priced,
            "since": round(self.since, 3),
            "total_dollars": round(t.total_dollars, 6),
            "total_seconds": round(t.total_seconds, 3),
            "rate_dollars_per_hour": round(self.rate_per_hour(), 6),
            "by_category": categories,
            "by_phase": {p.value: {"seconds": round(phases.get(p, (0.0, 0.0))[0], 3),
                                   "dollars": round(phases.get(p, (0.0, 0.0))[1], 6),
                                   "share": _rounded(t.share(p))} for p in Phase},
            "idle_share": _rounded(t.share(Phase.IDLE)),
            "start_share": _rounded(t.share(Phase.START)),
            "ideal_seconds": round(t.ideal_seconds, 3),
            "ideal_dollars": round(t.ideal_dollars, 6),
            "efficiency": _rounded(t.efficiency),
            "cold_starts": t.cold_starts,
            "max_per_hour": self.max_per_hour,
            "capped": capped,
            "prices": {label: {"flex_per_second": r.flex, "active_per_second": r.active}
                       for label, r in self.tariff.rates.items() if label in self._labels_in_use()},
        }

    def _labels_in_use(self) -> set[str]:
        return {self.default_category, self.new_category, *self.config.gpu.categories}

    def metric_rows(self) -> tuple[list[tuple[str, str, str, float]], list[tuple[str, str, float]], float, int]:
        """For /metrics: seconds by (category, tier, phase), dollars by (category, tier), rate, cold starts."""
        t = self.totals()
        seconds = [(c, tier.value, p.value, s) for (c, tier, p), s in sorted(t.seconds.items())]
        dollars = [(c, tier.value, d) for (c, tier), (_, d) in sorted(t.by_category_tier().items())
                   if c != UNPRICED]
        for category in sorted(self._labels_in_use() - {UNPRICED}):  # a zero from the start: rate() needs it
            for tier in Tier:
                if not any(row[0] == category and row[1] == tier.value for row in dollars):
                    dollars.append((category, tier.value, 0.0))
        return seconds, dollars, self.rate_per_hour(), t.cold_starts

    # -- persistence -----------------------------------------------------------------------------

    def state_document(self) -> dict[str, Any]:
        """What the state file holds now: the totals and, per open pod, the unix time it is billed up to."""
        now, wall = self.clock(), self.wall()
        checkpoints = {wid: wall for wid in self.ledger.open_ids} if self._pod_times else {}
        if now < self._carry_until:
            checkpoints = {**self._checkpoints, **checkpoints}
        return {"version": STATE_VERSION, "endpoint": self.config.name, "saved_at": wall, "since": self.since,
                "totals": self.ledger.totals(now).to_json(), "workers": checkpoints}

    def save_due(self) -> dict[str, Any] | None:
        """The document to write when the last write is SAVE_EVERY old and the totals changed, else None."""
        if self.state_path is None or self.clock() - self._saved_at < SAVE_EVERY:
            return None
        doc = self.state_document()
        if doc["totals"] == self._last_saved:
            return None
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` to the state file atomically (a temporary file renamed over it). Safe in a thread."""
        if self.state_path is None:
            return
        self._saved_at = self.clock()
        try:
            write_atomically(self.state_path, json.dumps(doc, separators=(",", ":")))
        except OSError as exc:
            if not self._save_failed:
                log.warning("cannot keep the cost totals in %s (%s): they start from zero after a restart",
                            self.state_path, exc.strerror or exc)
            self._save_failed = True
            return
        self._last_saved = doc["totals"]
        self._save_failed = False

    def save(self) -> None:
        """Write the state file now (at shutdown)."""
        self.write(self.state_document())

    def _load(self) -> Totals | None:
        path = self.state_path
        if path is None or not path.exists():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {doc.get('version') if isinstance(doc, dict) else doc!r}")
            totals = Totals.from_json(doc["totals"])
            since = float(doc.get("since", self.since))
            checkpoints = {str(k): float(v) for k, v in (doc.get("workers") or {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            keep = path.with_name(f"{path.name}.bad-{int(self.wall())}")
            try:
                path.rename(keep)
            except OSError:
                keep = path
            log.error("cost totals in %s are unreadable (%s); kept as %s, counting from zero", path, exc, keep)
            return None
        self.since = since
        self._checkpoints = checkpoints if self._pod_times else {}
        log.info("cost totals since %s: $%.4f, %.0f worker-seconds (from %s)",
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(since)), totals.total_dollars,
                 totals.total_seconds, path)
        return totals


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a crash leaves either the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
