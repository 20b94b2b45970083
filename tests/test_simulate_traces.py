"""Traces for lbproxy simulate: files, lbproxy's own access log, and the built-in synthetic ones."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from lbproxy.logs import JsonFormatter
from lbproxy.proxy.access import entry
from lbproxy.simulate.traces import SYNTHETIC, TraceError, load_trace, parse_trace, synthetic


def test_csv_with_extra_columns_is_read_and_sorted_by_arrival() -> None:
    t = parse_trace("t.csv", "path,arrival_s,service_s,status\n/b,2.5,1,200\n/a,0.5,0.25,200\n")
    assert t.arrivals == [0.0, 2.0] and t.services == [0.25, 1.0]
    assert t.duration == 2.0


def test_jsonl_is_read() -> None:
    t = parse_trace("t.jsonl", '{"arrival_s": 0, "service_s": 2}\n\n{"arrival_s": 3, "service_s": 1, "path": "/x"}\n')
    assert t.arrivals == [0.0, 3.0] and t.services == [2.0, 1.0]


@pytest.mark.parametrize(("text", "where"), [
    ("arrival_s,service_s\n1,2\n3,soon\n", "t:3: service_s must be a number"),
    ("arrival_s,service_s\n1,-2\n", "t:2: service_s must be a finite number >= 0"),
    ("arrival,service\n1,2\n", "t:1: not a trace"),
    ("start_s,service_s\n1,2\n", "t:1: the CSV header must name arrival_s and service_s"),
    ('{"arrival_s": 1, "service_s": 2}\n{"arrival_s": 1\n', "t:2: not JSON"),
    ('{"arrival_s": 1, "service_s": 2}\n[1]\n', "t:2: expected a JSON object"),
    ('{"arrival_s": 1}\n', "t:1: service_s must be a number"),
    ("arrival_s,service_s\n", "t: no requests"),
    ("", "t: the file is empty"),
])
def test_a_bad_trace_names_the_line(text: str, where: str) -> None:
    with pytest.raises(TraceError, match=f"^{where}"):
        parse_trace("t", text)


def test_csv_header_without_the_keys_names_them() -> None:
    with pytest.raises(TraceError, match=r"t:1: the CSV header must name arrival_s and service_s \(missing arrival_s"):
        parse_trace("t", "start,arrival_s_x,service_s\n1,2,3\n")


def _json_line(fields: tuple[str, dict[str, object]], created: float) -> str:
    record = logging.LogRecord("lbproxy.access", logging.INFO, "", 0, fields[0], (), None)
    record.created, record.msecs = created, (created % 1) * 1000
    record.access = fields[1]  # type: ignore[attr-defined]
    return JsonFormatter("echo").format(record)


def _text_line(fields: tuple[str, dict[str, object]], created: float) -> str:
    record = logging.LogRecord("lbproxy.access", logging.INFO, "", 0, fields[0], (), None)
    record.created, record.msecs = created, int((created % 1) * 1000)
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s echo %(name)s: %(message)s")  # logs.py's text form
    record.asctime = fmt.formatTime(record)
    return fmt.format(record)


ACCESS = [  # (request, end time): what lbproxy.proxy.access formats for each
    (entry(b"GET", b"/sleep?s=1", 200, b"w1", 0.5, 1.5, 10, b"r1"), 1000.5),  # arrived 999.0, served 1.0 s
    (entry(b"GET", b"/sleep", 401, b"", 0.0, 0.001, 50, b"r2"), 1001.0),  # refused before the queue
    (entry(b"POST", b"/sleep", 503, b"", 30.0, 30.0, 60, b"r3"), 1032.0),  # no worker within 30 s
    (entry(b"GET", b"/other", 200, b"w2", 0.0, 3.0, 10, b"r4"), 1004.0),  # arrived 1001.0, served 3 s
]


@pytest.mark.parametrize("form", ["json", "text"])
def test_the_access_log_is_a_trace(form: str) -> None:
    line = _json_line if form == "json" else _text_line
    noise = '{"time": "x", "ts": 1.0, "logger": "lbproxy.controller", "message": "scale up"}' if form == "json" \
        else "2026-12-01 10:00:00,000 INFO    echo lbproxy.controller: scale up: starting 1 worker(s)"
    text = "\n".join([noise, *(line(fields, end) for fields, end in ACCESS)]) + "\n"
    t = parse_trace("access.log", text)
    # the 401 is left out; the 503 keeps its arrival with the median service of /sleep (1.0 s)
    assert t.arrivals == pytest.approx([0.0, 2.0, 3.0], abs=0.002)
    assert t.services == pytest.approx([1.0, 3.0, 1.0], abs=0.002)
    assert any("1 without a worker" in n for n in t.notes)
    assert any("1 x 401" in n for n in t.notes)


def test_an_access_line_that_cannot_be_read_is_named() -> None:
    with pytest.raises(TraceError, match=r"^log:2: an lbproxy.access line that cannot be read"):
        parse_trace("log", "2026-12-01 10:00:00,000 INFO    echo lbproxy.health: fine\n"
                           "2026-12-01 10:00:00,000 INFO    echo lbproxy.access: GET / 200 worker=w wait=?\n")


def test_an_access_log_without_a_served_request_says_so() -> None:
    fields = entry(b"GET", b"/", 503, b"", 30.0, 30.0, 10, b"r")
    with pytest.raises(TraceError, match="no access line names a worker"):
        parse_trace("log", _json_line(fields, time.time()))


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_a_builtin_trace_is_the_same_for_the_same_seed_and_differs_for_another(name: str) -> None:
    short = f"{name}:duration=1h" if name != "diurnal" else "diurnal:duration=2h,period=2h"
    a, b = synthetic(short), synthetic(short)
    assert a.arrivals == b.arrivals and a.services == b.services and len(a) > 5
    c = synthetic(f"{short},seed=99")
    assert c.arrivals != a.arrivals
    assert a.arrivals == sorted(a.arrivals) and all(0 <= x < 3600 * 2 for x in a.arrivals)


def test_builtin_traces_have_the_documented_shape() -> None:
    steady = synthetic("steady:rate=10,duration=10m,service=0.5,cv=0")
    assert len(steady) == pytest.approx(6000, rel=0.05) and set(steady.services) == {0.5}
    sparse = synthetic("sparse:gap=60,duration=10h")
    gaps = [b - a for a, b in zip(sparse.arrivals, sparse.arrivals[1:], strict=False)]
    assert sum(gaps) / len(gaps) == pytest.approx(60, rel=0.2)
    bursty = synthetic("bursty:rate=0,every=100,size=20,spread=5,duration=1000")
    assert len(bursty) % 20 == 0  # only whole bursts (each well inside the trace)
    day = synthetic("diurnal:rate=5,swing=0.8,duration=1d")
    night = sum(1 for t in day.arrivals if t < 3 * 3600)
    noon = sum(1 for t in day.arrivals if 10.5 * 3600 <= t < 13.5 * 3600)
    assert noon > 4 * night  # quiet at the start, busiest half a day later


@pytest.mark.parametrize(("spec", "message"), [
    ("bursty:size", "'size' is not a parameter"),
    ("bursty:colour=red", "'colour' is not a parameter of bursty"),
    ("steady:rate=0", "these parameters give no request"),
    ("sparse:gap=0", "gap must be a number > 0"),
    ("steady:duration=soon", "duration: invalid duration"),
    ("diurnal:swing=2", "swing must be within 0..1"),
])
def test_a_bad_builtin_trace_parameter_is_named(spec: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        synthetic(spec)


def test_a_missing_file_says_what_else_it_could_be(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file, and not a built-in trace"):
        load_trace(str(tmp_path / "nope.csv"))
    (tmp_path / "t.jsonl").write_text(json.dumps({"arrival_s": 1, "service_s": 1}) + "\n")
    assert len(load_trace(str(tmp_path / "t.jsonl"))) == 1
