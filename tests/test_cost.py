"""The cost meter (lbproxy.cost): the ledger fed by a real WorkerPool's events on a fake clock, prices from the
config, the spend limit's view of new workers, and the state file that carries the totals across restarts."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from lbproxy.billing import UNPRICED, Phase, Tier
from lbproxy.config import ConfigError, parse_config
from lbproxy.controller import Controller
from lbproxy.cost import SAVE_EVERY, CostMeter
from lbproxy.metrics import Metrics
from lbproxy.policy import Decision, ScalingSettings, WorkerState
from lbproxy.pool import WorkerPool
from lbproxy.prices import CUSTOM, tariff_for

from .test_pool import FakeClock


def config(**cost: Any) -> Any:
    extra: dict[str, Any] = {k: v for k, v in cost.items() if k in ("workers", "backend", "gpu", "worker")}
    return parse_config({"name": "e", "cost": {k: v for k, v in cost.items() if k not in extra}, **extra}, {})


class Wall:
    """A unix clock that moves with the fake monotonic one."""

    def __init__(self, clock: FakeClock, offset: float = 1_800_000_000.0) -> None:
        self.clock, self.offset = clock, offset

    def __call__(self) -> float:
        return self.clock.now + self.offset


def meter_for(cfg: Any, describe: dict[str, dict[str, object]] | None = None, path: Path | None = None,
              clock: FakeClock | None = None) -> tuple[CostMeter, WorkerPool, FakeClock]:
    clock = clock or FakeClock(100.0)
    pool = WorkerPool(1, 10, 30.0, clock)
    info = describe if describe is not None else {}
    meter = CostMeter(cfg, pool, lambda wid: info.get(wid, {}), path, wall=Wall(clock))
    return meter, pool, clock


def seconds(meter: CostMeter, phase: Phase, tier: Tier | None = None) -> float:
    return sum(s for (_, t, p), s in meter.totals().seconds.items() if p is phase and (tier is None or t is tier))


# -- config ----------------------------------------------------------------------------------------


def test_cost_settings_name_the_field_and_the_reason():
    with pytest.raises(ConfigError) as exc:
        parse_config({"name": "e", "cost": {"max_per_hour": -1, "extra": 1}}, {})
    text = "\n".join(exc.value.problems)
    assert "cost.max_per_hour: must be > 0" in text and "cost.extra: unknown key" in text
    with pytest.raises(ConfigError, match=re.escape("cost.category: unknown GPU category '99gb' (known: 16gb, ")):
        parse_config({"name": "e", "cost": {"category": "99gb"}}, {})
    with pytest.raises(ConfigError, match=re.escape("cost.active_price_per_second: needs cost.price_per_second")):
        parse_config({"name": "e", "cost": {"active_price_per_second": 0.001}}, {})


def test_prices_come_from_the_catalog_times_the_gpus_or_from_price_per_second():
    tariff, default, new = tariff_for(config(category="80gb", workers={"gpus": 2, "max": 3}))
    assert default == new == "80gb"
    assert tariff.rate("80gb").flex == pytest.approx(2 * 0.00076)  # type: ignore[union-attr]
    assert tariff.rate("80gb").active == pytest.approx(2 * 0.00060)  # type: ignore[union-attr]
    tariff, default, _ = tariff_for(config(price_per_second=0.002))
    assert default == CUSTOM and tariff.rate(CUSTOM).active == 0.002  # type: ignore[union-attr]
    tariff, default, _ = tariff_for(config(category="24gb", price_per_second=0.002, active_price_per_second=0.001))
    assert default == "24gb" and tariff.rate("24gb").flex == 0.002 and tariff.rate("24gb").active == 0.001  # type: ignore[union-attr]
    assert tariff_for(config())[1] == UNPRICED


def test_new_kubernetes_workers_are_priced_at_the_dearest_category_they_may_fall_back_to():
    cfg = config(backend={"type": "kubernetes"}, worker={"image": "w:1"}, gpu={"categories": ["48gb", "80gb-pro"]})
    assert tariff_for(cfg)[2] == "80gb-pro"


# -- phases from the pool ----------------------------------------------------------------------------


def test_a_local_worker_is_billed_by_phase_from_the_pool_events():
    meter, pool, clock = meter_for(config(category="24gb"))
    w = pool.add("w1", "127.0.0.1", 1, 1)
    clock.now += 2.0
    pool.set_state(w, WorkerState.READY)
    clock.now += 1.0
    slot = pool.try_reserve()  # 0 -> 1 in flight: busy
    assert slot is not None and slot.worker is w
    clock.now += 3.0
    slot.release()  # 1 -> 0: idle
    clock.now += 4.0
    pool.drain(w)
    clock.now += 0.5
    pool.set_state(w, WorkerState.STOPPING)
    clock.now += 0.2
    pool.set_state(w, WorkerState.EXITED)
    assert seconds(meter, Phase.START) == pytest.approx(2.0)
    assert seconds(meter, Phase.IDLE) == pytest.approx(1.0 + 4.0)
    assert seconds(meter, Phase.BUSY) == pytest.approx(3.0)
    assert seconds(meter, Phase.STOPPING) == pytest.approx(0.7 + 0.3)  # 10.7 s billed as 11
    assert meter.totals().total_dollars == pytest.approx(11 * 0.00019)
    assert meter.rate_per_hour() == 0.0


def test_a_worker_serving_several_requests_is_busy_until_the_last_one_ends():
    meter, pool, clock = meter_for(config(category="24gb"))
    pool.concurrency = 2
    w = pool.add("w", "h", 1, 1)
    pool.set_state(w, WorkerState.READY)
    first = pool.try_reserve()
    clock.now += 1.0
    second = pool.try_reserve()
    assert first is not None and second is not None
    clock.now += 1.0
    first.release()
    clock.now += 1.0
    second.release()
    clock.now += 1.0
    assert seconds(meter, Phase.BUSY) == pytest.approx(3.0)
    assert meter.totals().ideal_seconds == pytest.approx(3.0)
    assert meter.worker("w")["billing_phase"] == "idle"


def test_a_reloaded_workers_active_moves_the_oldest_workers_to_the_active_price_from_then_on():
    meter, pool, clock = meter_for(config(category="24gb"))  # workers.active: 0, all flex
    w = pool.add("w", "h", 1, 1)
    pool.set_state(w, WorkerState.READY)
    clock.now += 2.0
    meter.set_active(1)
    clock.now += 3.0
    assert seconds(meter, Phase.IDLE, Tier.FLEX) == pytest.approx(2.0)
    assert seconds(meter, Phase.IDLE, Tier.ACTIVE) == pytest.approx(3.0)
    assert meter.worker("w")["tier"] == "active"


def test_a_queue_worker_is_busy_while_it_holds_jobs_it_pulled_itself():
    meter, pool, clock = meter_for(config(category="24gb"))
    w = pool.add("w", "h", 1, 1)
    pool.set_state(w, WorkerState.READY)
    clock.now += 1.0
    pool.set_in_flight(w, 2)  # the SDK took a batch of two jobs through the worker API
    clock.now += 2.0
    pool.set_in_flight(w, 1)  # one result posted
    clock.now += 1.0
    pool.set_in_flight(w, 0)
    clock.now += 1.0
    assert seconds(meter, Phase.BUSY) == pytest.approx(3.0)
    assert seconds(meter, Phase.IDLE) == pytest.approx(2.0)
    assert meter.worker("w")["billing_phase"] == "idle"


def test_status_and_metric_rows_report_the_bill():
    meter, pool, clock = meter_for(config(category="24gb", max_per_hour=10, workers={"active": 1}))
    w = pool.add("w", "h", 1, 1)
    clock.now += 10.0
    pool.set_state(w, WorkerState.READY)
    clock.now += 10.0
    status = meter.status("capped because")
    assert status["priced"] and status["capped"] == "capped because" and status["max_per_hour"] == 10
    assert status["total_dollars"] == pytest.approx(20 * 0.00013)
    assert status["by_category"]["24gb"]["active"]["seconds"] == pytest.approx(20.0)
    assert status["start_share"] == pytest.approx(0.5) and status["idle_share"] == pytest.approx(0.5)
    assert status["efficiency"] == 0.0 and status["cold_starts"] == 1
    assert status["rate_dollars_per_hour"] == pytest.approx(0.00013 * 3600)
    assert meter.worker("w") == {"billed_seconds": 20, "cost_dollars": pytest.approx(20 * 0.00013, abs=1e-6),
                                 "tier": "active", "category": "24gb", "billing_phase": "idle"}
    rows, dollars, rate, cold = meter.metric_rows()
    assert ("24gb", "active", "start", pytest.approx(10.0)) in rows
    assert ("24gb", "flex", 0.0) in dollars and rate == pytest.approx(0.468) and cold == 1


def test_metrics_export_the_cost_families():
    meter, pool, clock = meter_for(config(category="24gb"))
    pool.add("w", "h", 1, 1)
    clock.now += 5
    metrics = Metrics("e")
    metrics.watch_cost(meter.metric_rows, lambda: True)
    text = metrics.render().decode()
    assert 'lbproxy_worker_seconds_total{category="24gb",endpoint="e",phase="start",tier="flex"} 5.0' in text
    assert 'lbproxy_cost_dollars_total{category="24gb",endpoint="e",tier="flex"} 0.00095' in text
    assert 'lbproxy_cost_rate_dollars_per_hour{endpoint="e"} 0.684' in text
    assert 'lbproxy_cold_starts_total{endpoint="e"} 1.0' in text
    assert 'lbproxy_scaling_capped{endpoint="e"} 1.0' in text


# -- Kubernetes pods ---------------------------------------------------------------------------------


KUBE = {"backend": {"type": "kubernetes"}, "worker": {"image": "w:1"}, "gpu": {"categories": ["24gb", "80gb"]}}


def test_a_pod_is_billed_from_its_start_time_at_its_pools_price_and_not_while_unscheduled():
    info: dict[str, dict[str, object]] = {"p": {"pool": "80gb"}}
    meter, pool, clock = meter_for(config(**KUBE), info)
    wall = Wall(clock)
    w = pool.add("p", "", 80, 80)
    clock.now += 30.0  # unschedulable: no GPU, no bill
    meter.refresh()
    assert meter.totals().total_seconds == 0.0 and meter.rate_per_hour() == 0.0
    info["p"]["started_at"] = wall() - 4.0  # the kubelet started it 4 s ago; this replica sees it now
    meter.refresh()
    assert meter.worker("p")["category"] == "80gb" and meter.rate_per_hour() == pytest.approx(0.00076 * 3600)
    clock.now += 1.0
    pool.set_state(w, WorkerState.READY)
    assert seconds(meter, Phase.START) == pytest.approx(5.0) and meter.totals().cold_starts == 1


def test_a_pod_that_ran_before_this_replica_saw_it_is_billed_from_its_start_as_unobserved():
    info: dict[str, dict[str, object]] = {"old": {"pool": "24gb"}}
    meter, pool, clock = meter_for(config(**KUBE), info)
    info["old"]["started_at"] = Wall(clock)() - 3600.0
    w = pool.add("old", "10.0.0.5", 80, 80)
    clock.now += 1.0
    pool.set_state(w, WorkerState.READY)
    assert seconds(meter, Phase.UNOBSERVED) == pytest.approx(3600.0)  # until this replica saw it
    assert seconds(meter, Phase.START) == pytest.approx(1.0)  # probed until its /ping said ready
    assert meter.totals().cold_starts == 0  # it was started by someone else


def test_a_pod_not_in_the_gpu_categories_is_billed_at_the_default_price():
    info: dict[str, dict[str, object]] = {"p": {"pool": "any"}}
    cfg = config(backend={"type": "kubernetes"}, worker={"image": "w:1"}, category="48gb")
    meter, pool, clock = meter_for(cfg, info)
    info["p"]["started_at"] = Wall(clock)()
    pool.add("p", "", 80, 80)
    meter.refresh()
    assert meter.worker("p")["category"] == "48gb"


def test_spend_limit_counts_pods_on_their_way_at_the_price_they_will_have():
    info: dict[str, dict[str, object]] = {"a": {"pool": "80gb"}}
    meter, pool, _ = meter_for(config(max_per_hour=6.0, **KUBE), info)
    # New pods are priced at the dearest category they may land in (80gb: $2.736/h): two fit under $6/h.
    assert meter.limit_starts(3, 0)[0] == 2
    pool.add("a", "", 80, 80)  # accepted by the API, not started yet: it will cost, so it counts
    allowed, why = meter.limit_starts(2, 0)
    assert allowed == 1 and why is not None and "$6.00/h" in why and "$2.74/h" in why
    assert meter.limit_starts(1, 1)[0] == 0  # and one more start the backend has not reported
    assert meter.limit_starts(0, 5) == (0, None)


def test_no_spend_limit_allows_every_start():
    meter, _, _ = meter_for(config(category="180gb"))
    assert meter.limit_starts(50, 10) == (50, None)


# -- the state file -----------------------------------------------------------------------------------


def test_totals_survive_a_restart_through_the_state_file(tmp_path):
    path = tmp_path / "data" / "e.cost.json"
    meter, pool, clock = meter_for(config(category="24gb"), path=path)
    w = pool.add("w", "h", 1, 1)
    clock.now += 5.5
    pool.set_state(w, WorkerState.EXITED)
    meter.save()
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["endpoint"] == "e" and doc["workers"] == {}
    assert not list(path.parent.glob(".e.cost.json.*"))  # the temporary file was renamed over it
    since = meter.since
    again, pool2, clock2 = meter_for(config(category="24gb"), path=path, clock=FakeClock(5000.0))
    assert again.since == since
    assert again.totals().total_seconds == pytest.approx(6.0)
    w2 = pool2.add("w2", "h", 1, 1)
    clock2.now += 1.0
    pool2.set_state(w2, WorkerState.EXITED)
    assert again.totals().total_seconds == pytest.approx(7.0) and again.totals().cold_starts == 2


def test_a_restarted_proxy_resumes_a_pods_bill_where_it_was_saved(tmp_path):
    path = tmp_path / "e.cost.json"
    info: dict[str, dict[str, object]] = {"p": {"pool": "24gb"}}
    meter, pool, clock = meter_for(config(**KUBE), info, path)
    info["p"]["started_at"] = Wall(clock)()
    w = pool.add("p", "10.0.0.1", 80, 80)
    pool.set_state(w, WorkerState.READY)
    clock.now += 100.0
    meter.save()  # the proxy stops; the pod runs on
    clock.now += 20.0
    again, pool2, _ = meter_for(config(**KUBE), info, path, clock=clock)
    w2 = pool2.add("p", "10.0.0.1", 80, 80)
    pool2.set_state(w2, WorkerState.READY)
    # 100 s billed before, 20 s while no proxy watched (unobserved): never the pod's whole life twice
    assert again.totals().total_seconds == pytest.approx(120.0)
    assert seconds(again, Phase.UNOBSERVED) == pytest.approx(20.0)


def test_a_malformed_state_file_is_kept_aside_and_counting_starts_from_zero(tmp_path, caplog):
    path = tmp_path / "e.cost.json"
    path.write_text('{"version": 1, "totals": {"billed": [{"category": "x"}]}}')
    with caplog.at_level(logging.ERROR, "lbproxy.cost"):
        meter, _, _ = meter_for(config(category="24gb"), path=path)
    assert meter.totals().total_seconds == 0.0
    assert "unreadable" in caplog.text and not path.exists()
    assert len(list(tmp_path.glob("e.cost.json.bad-*"))) == 1


def test_an_unwritable_state_file_is_reported_once_and_serving_goes_on(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    meter, pool, _ = meter_for(config(category="24gb"), path=blocker / "e.cost.json")
    pool.add("w", "h", 1, 1)
    with caplog.at_level(logging.WARNING, "lbproxy.cost"):
        meter.save()
        meter.save()
    assert caplog.text.count("cannot keep the cost totals") == 1


def test_the_state_file_is_written_every_save_every_seconds_and_only_when_something_changed(tmp_path):
    meter, pool, clock = meter_for(config(category="24gb"), path=tmp_path / "e.cost.json")
    assert meter.save_due() is None  # nothing billed yet
    w = pool.add("w", "h", 1, 1)
    clock.now += SAVE_EVERY - 1
    assert meter.save_due() is None  # too soon
    clock.now += 1
    doc = meter.save_due()
    assert doc is not None
    meter.write(doc)
    pool.set_state(w, WorkerState.EXITED)
    clock.now += SAVE_EVERY
    doc = meter.save_due()
    assert doc is not None
    meter.write(doc)
    clock.now += SAVE_EVERY
    assert meter.save_due() is None  # unchanged since the last write


# -- the controller applies the limit --------------------------------------------------------------


def test_the_controller_starts_only_what_the_limit_allows_and_says_why(caplog):
    pool = WorkerPool(1, 10, 30.0, FakeClock())
    controller = Controller(ScalingSettings(), pool, prober=None, metrics=Metrics("e"))  # type: ignore[arg-type]
    controller.limit_starts = lambda wanted, pending: (min(wanted, 1), "cost.max_per_hour: $1.00/h reached")
    with caplog.at_level(logging.INFO, "lbproxy.controller"):
        capped = controller._within_spend_limit(Decision(desired=3, start=3, reason="queue_delay"), 0)
        assert capped.start == 1 and capped.desired == 3
        assert controller.capped_reason == "cost.max_per_hour: $1.00/h reached"
        assert controller.decisions[-1]["reason"] == controller.capped_reason
        again = controller._within_spend_limit(Decision(desired=3, start=2), 0)
        assert again.start == 1 and len(controller.decisions) == 1  # logged and recorded once
        controller.limit_starts = lambda wanted, pending: (wanted, None)
        assert controller._within_spend_limit(Decision(desired=1, start=1), 0).start == 1
    assert controller.capped_reason is None
    assert caplog.text.count("scaling capped") == 1 and "no longer capped" in caplog.text
