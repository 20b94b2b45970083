"""Request counts and durations: plain numbers on the request path, exposed as a Prometheus counter and
histogram would be (bucket bounds inclusive, cumulative, +Inf)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from lbproxy.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(m.render().decode()) for s in family.samples}


def test_requests_are_counted_by_code_and_durations_fall_in_inclusive_buckets():
    m = Metrics("e")
    for status, seconds in [(200, 0.005), (200, 0.0051), (503, 700.0), (101, 12.0)]:
        m.observe_request(status, seconds)
    got = samples(m)
    assert got[("lbproxy_requests_total", (("code", "200"), ("endpoint", "e")))] == 2
    assert got[("lbproxy_requests_total", (("code", "503"), ("endpoint", "e")))] == 1
    bucket = "lbproxy_request_duration_seconds_bucket"
    assert got[(bucket, (("endpoint", "e"), ("le", "0.005")))] == 1  # le is "at most"
    assert got[(bucket, (("endpoint", "e"), ("le", "0.01")))] == 2
    assert got[(bucket, (("endpoint", "e"), ("le", "30.0")))] == 3
    assert got[(bucket, (("endpoint", "e"), ("le", "600.0")))] == 3
    assert got[(bucket, (("endpoint", "e"), ("le", "+Inf")))] == 4
    assert got[("lbproxy_request_duration_seconds_count", (("endpoint", "e"),))] == 4
    assert abs(got[("lbproxy_request_duration_seconds_sum", (("endpoint", "e"),))] - 712.0101) < 1e-9
