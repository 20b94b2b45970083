"""Prometheus metrics. Names are constants; labels are bounded (status codes, states, directions)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

REQUESTS = "lbproxy_requests"
REQUEST_SECONDS = "lbproxy_request_duration_seconds"
QUEUE_WAIT_SECONDS = "lbproxy_queue_wait_seconds"
QUEUE_LENGTH = "lbproxy_queue_length"
IN_FLIGHT = "lbproxy_in_flight_requests"
WORKERS = "lbproxy_workers"
COLD_START_SECONDS = "lbproxy_cold_start_seconds"
SCALE_EVENTS = "lbproxy_scale_events"
WORKER_EXITS = "lbproxy_worker_exits"
LEADER = "lbproxy_leader"
WORKER_SECONDS = "lbproxy_worker_seconds"  # counters get _total when exported
COST_DOLLARS = "lbproxy_cost_dollars"
COST_RATE = "lbproxy_cost_rate_dollars_per_hour"
COLD_STARTS = "lbproxy_cold_starts"
SCALING_CAPPED = "lbproxy_scaling_capped"

# What the cost meter reports: seconds by (category, tier, phase), dollars by (category, tier), the rate now in
# dollars per hour, cold starts; and whether the spend limit caps scaling.
CostRows = tuple[list[tuple[str, str, str, float]], list[tuple[str, str, float]], float, int]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_COLD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class _LiveGauges(Collector):
    """Gauges read from the pool at scrape time, so the hot path never updates them."""

    def __init__(self, endpoint: str, read: Callable[[], tuple[int, int, dict[str, int]]],
                 leading: Callable[[], bool]) -> None:
        self.endpoint = endpoint
        self.read = read
        self.leading = leading

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queued, in_flight, by_state = self.read()
        q = GaugeMetricFamily(QUEUE_LENGTH, "Requests waiting for a worker.", labels=["endpoint"])
        q.add_metric([self.endpoint], queued)
        f = GaugeMetricFamily(IN_FLIGHT, "Requests being served by workers.", labels=["endpoint"])
        f.add_metric([self.endpoint], in_flight)
        w = GaugeMetricFamily(WORKERS, "Workers by state.", labels=["endpoint", "state"])
        for state, n in by_state.items():
            w.add_metric([self.endpoint, state], n)
        lead = GaugeMetricFamily(LEADER, "1 on the replica that scales the endpoint (the Lease holder).",
                                 labels=["endpoint"])
        lead.add_metric([self.endpoint], 1 if self.leading() else 0)
        return [q, f, w, lead]


class _CostCounters(Collector):
    """Cost totals read from the meter at scrape time: they continue across restarts (its state file)."""

    def __init__(self, endpoint: str, read: Callable[[], CostRows], capped: Callable[[], bool]) -> None:
        self.endpoint = endpoint
        self.read = read
        self.capped = capped

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        seconds, dollars, rate, cold_starts = self.read()
        e = self.endpoint
        s = CounterMetricFamily(WORKER_SECONDS, "Billed worker-seconds, by GPU category, price tier and phase.",
                                labels=["endpoint", "category", "tier", "phase"])
        for category, tier, phase, value in seconds:
            s.add_metric([e, category, tier, phase], value)
        d = CounterMetricFamily(COST_DOLLARS, "Billed dollars, by GPU category and price tier.",
                                labels=["endpoint", "category", "tier"])
        for category, tier, value in dollars:
            d.add_metric([e, category, tier], value)
        r = GaugeMetricFamily(COST_RATE, "What the running workers cost now, in dollars per hour.", labels=["endpoint"])
        r.add_metric([e], rate)
        c = CounterMetricFamily(COLD_STARTS, "Workers started (each pays its start phase).", labels=["endpoint"])
        c.add_metric([e], cold_starts)
        capped = GaugeMetricFamily(SCALING_CAPPED, "1 while cost.max_per_hour keeps the controller from starting "
                                   "a worker it wants.", labels=["endpoint"])
        capped.add_metric([e], 1 if self.capped() else 0)
        return [s, d, r, c, capped]


class RequestCounts(Collector):
    """``lbproxy_requests_total{code}`` and ``lbproxy_request_duration_seconds``, kept as plain numbers.

    They change on every request, from the event loop thread only, and are read there too (the admin port
    runs on the same loop): prometheus_client's children take a lock and several calls per change, a third of
    a request's bookkeeping. Exposed exactly as a Counter and a Histogram would be.
    """

    def __init__(self, endpoint: str, buckets: tuple[float, ...]) -> None:
        self.endpoint = endpoint
        self.bounds = buckets
        self.by_code: dict[int, int] = {}
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, status: int, seconds: float) -> None:
        by_code = self.by_code
        by_code[status] = by_code.get(status, 0) + 1
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        c = CounterMetricFamily(REQUESTS, "Requests answered, by status code.", labels=["endpoint", "code"])
        for code, n in sorted(self.by_code.items()):
            c.add_metric([self.endpoint, str(code)], n)
        h = HistogramMetricFamily(REQUEST_SECONDS, "Time from request to the end of the response.",
                                  labels=["endpoint"])
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        h.add_metric([self.endpoint], cumulative, self.total)
        return [c, h]


class Metrics:
    """All of lbproxy's metrics, in a registry of their own (several endpoints can share a process)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.registry = CollectorRegistry()
        labels = ["endpoint"]
        self.requests = RequestCounts(endpoint, _LATENCY_BUCKETS)
        self.registry.register(self.requests)
        self.queue_wait = Histogram(QUEUE_WAIT_SECONDS, "Time requests waited for a free worker.",
                                    labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.cold_start = Histogram(COLD_START_SECONDS, "Time from a worker's start to its first /ping 200.",
                                    labels, buckets=_COLD_BUCKETS, registry=self.registry)
        self.scale_events = Counter(SCALE_EVENTS, "Workers started or stopped, by direction and reason.",
                                    [*labels, "direction", "reason"], registry=self.registry)
        self.worker_exits = Counter(WORKER_EXITS, "Workers that exited without being asked to.",
                                    labels, registry=self.registry)
        self.observe_request = self.requests.observe  # (status, seconds): the request path's one call
        self._wait = self.queue_wait.labels(endpoint)

    def watch(self, read: Callable[[], tuple[int, int, dict[str, int]]], leading: Callable[[], bool]) -> None:
        self.registry.register(_LiveGauges(self.endpoint, read, leading))

    def watch_cost(self, read: Callable[[], CostRows], capped: Callable[[], bool]) -> None:
        self.registry.register(_CostCounters(self.endpoint, read, capped))

    def observe_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def scaled(self, direction: str, reason: str, n: int = 1) -> None:
        self.scale_events.labels(self.endpoint, direction, reason).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
