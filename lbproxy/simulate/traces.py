"""Traces: when each request arrives and how long a worker serves it.

Three sources, one shape (``Trace``: arrival and service seconds from the trace's start, sorted by arrival):

- a file of ``arrival_s,service_s`` rows, CSV with that header (extra columns allowed) or JSONL objects with
  those keys;
- lbproxy's own access log (``log.access: true``), text or ``log.format: json``, mixed with the other log lines:
  arrival = the line's time minus its duration, service = duration minus the time it waited in lbproxy's queue;
- a built-in synthetic trace (``SYNTHETIC``), generated from a seed, so that the same name gives the same trace.

Pure: reads text handed to it, no sockets, no event loop.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..durations import parse_duration

__all__ = ["SYNTHETIC", "Trace", "TraceError", "load_trace", "parse_trace", "synthetic"]


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file and line, or the parameter."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests sorted by arrival: ``arrivals[i]`` and ``services[i]`` in seconds from the trace's start."""

    name: str
    arrivals: list[float]
    services: list[float]
    duration: float  # the span the trace covers (at least its last arrival)
    notes: tuple[str, ...] = field(default=())  # how the source was read: lines skipped, service times guessed

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def service_seconds(self) -> float:
        return math.fsum(self.services)


def _sorted(name: str, rows: list[tuple[float, float]], duration: float | None = None,
            notes: tuple[str, ...] = ()) -> Trace:
    if not rows:
        raise TraceError(f"{name}: no requests in the trace")
    rows.sort(key=lambda r: r[0])
    start = rows[0][0] if duration is None else 0.0
    arrivals = [a - start for a, _ in rows]
    services = [s for _, s in rows]
    return Trace(name, arrivals, services, max(duration or 0.0, arrivals[-1]), notes)


# -- files: CSV and JSONL of arrival_s, service_s ----------------------------------------------------------


def _number(value: object, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TraceError(f"{where}: {key} must be a number of seconds, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise TraceError(f"{where}: {key} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise TraceError(f"{where}: {key} must be a finite number >= 0, not {value!r}")
    return number


def _csv_rows(name: str, text: str) -> list[tuple[float, float]]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [key for key in ("arrival_s", "service_s") if key not in header]
    if missing:
        raise TraceError(f"{name}:1: the CSV header must name arrival_s and service_s (missing {', '.join(missing)}; "
                         f"got {','.join(header) or 'nothing'})")
    rows = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        rows.append((_number(row.get("arrival_s"), where, "arrival_s"), _number(row.get("service_s"), where,
                                                                                 "service_s")))
    return rows


# -- lbproxy's access log ------------------------------------------------------------------------------------

# A text line: "2026-12-01 11:56:45,123 INFO    echo lbproxy.access: GET /p 200 worker=w wait=0.001s duration=..."
_TEXT_ACCESS = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+\s+\S+ lbproxy\.access: (\S+) (\S+) (\d{3}) worker=(\S+) "
    r"wait=(\d+(?:\.\d+)?)s duration=(\d+(?:\.\d+)?)s"
)
_ACCESS_MARK = " lbproxy.access: "


@dataclass(slots=True)
class _Access:
    end: float
    path: str
    status: int
    worker: str | None
    wait: float
    duration: float


def _text_access(name: str, lineno: int, line: str) -> _Access | None:
    if _ACCESS_MARK not in line:
        return None  # another logger's line
    m = _TEXT_ACCESS.match(line)
    if m is None:
        raise TraceError(f"{name}:{lineno}: an lbproxy.access line that cannot be read: {line[:120]!r}")
    stamp, ms, _method, path, status, worker, wait, duration = m.groups()
    # asctime is local time; mktime reads it back the same way (a DST change inside the log shifts an hour).
    end = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    return _Access(end, path, int(status), None if worker == "-" else worker, float(wait), float(duration))


def _json_access(name: str, lineno: int, doc: Mapping[str, object]) -> _Access | None:
    if doc.get("logger") != "lbproxy.access":
        return None
    where = f"{name}:{lineno}"
    ts = doc.get("ts")
    if ts is None and isinstance(doc.get("time"), str):  # older lines: the ISO time only
        text = str(doc["time"]).rstrip("Z")
        base, _, frac = text.partition(".")
        try:
            ts = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
        except ValueError:
            raise TraceError(f"{where}: time {doc['time']!r} is not an ISO time") from None
    end = _number(ts, where, "ts")
    status = doc.get("status")
    if not isinstance(status, int):
        raise TraceError(f"{where}: status must be an integer, not {status!r}")
    worker = doc.get("worker")
    return _Access(end, str(doc.get("path", "-")), status, str(worker) if worker else None,
                   _number(doc.get("wait_s"), where, "wait_s"), _number(doc.get("duration_s"), where, "duration_s"))


# Statuses lbproxy answers before a request reaches the queue: they never load a worker, whatever the settings.
_REFUSED_UP_FRONT = {400, 401, 404, 413, 417, 431}


def _from_access(name: str, lines: list[_Access]) -> Trace:
    """Requests from access lines. A line with a worker was served: its service is duration - wait. A line
    without one is a 503 (no worker in time) or 429 (queue full): real demand that other settings might serve,
    with the median service of served requests of the same path (else of all). Lines refused before queueing
    (400, 401, 404 worker_gone, 413, 417, 431) never reach a worker and are left out."""
    served: dict[str, list[float]] = {}
    for a in lines:
        if a.worker is not None:
            served.setdefault(a.path, []).append(max(0.0, a.duration - a.wait))
    every = [s for group in served.values() for s in group]
    if not every:
        raise TraceError(f"{name}: no access line names a worker: no service time to learn from")
    overall = statistics.median(every)
    medians = {path: statistics.median(group) for path, group in served.items()}
    rows: list[tuple[float, float]] = []
    guessed = 0
    skipped: dict[int, int] = {}
    for a in lines:
        if a.worker is not None:
            rows.append((a.end - a.duration, max(0.0, a.duration - a.wait)))
        elif a.status in _REFUSED_UP_FRONT:
            skipped[a.status] = skipped.get(a.status, 0) + 1
        else:
            guessed += 1
            rows.append((a.end - a.duration, medians.get(a.path, overall)))
    notes = [f"{len(rows)} requests from {len(lines)} lbproxy.access lines"]
    if guessed:
        notes.append(f"{guessed} without a worker (503/429): service time guessed as the median of their path")
    if skipped:
        shown = ", ".join(f"{count} x {status}" for status, count in sorted(skipped.items()))
        notes.append(f"left out, refused before the queue: {shown}")
    return _sorted(name, rows, notes=tuple(notes))


# -- reading any of them --------------------------------------------------------------------------------------


def parse_trace(name: str, text: str) -> Trace:
    """A trace from the text of a file: CSV, JSONL, or an access log (text or JSON lines)."""
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise TraceError(f"{name}: the file is empty")
    if first.startswith("{"):
        return _parse_jsonl(name, lines)
    if "arrival_s" in first or "service_s" in first:
        return _sorted(name, _csv_rows(name, text))
    access = [a for i, line in enumerate(lines, 1) if (a := _text_access(name, i, line)) is not None]
    if not access:
        raise TraceError(f"{name}:1: not a trace: expected a CSV header arrival_s,service_s, JSON lines, or "
                         f"lbproxy access log lines (log.access: true)")
    return _from_access(name, access)


def _parse_jsonl(name: str, lines: list[str]) -> Trace:
    rows: list[tuple[float, float]] = []
    access: list[_Access] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{name}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(doc, dict):
            raise TraceError(f"{name}:{lineno}: expected a JSON object")
        if "arrival_s" in doc or "service_s" in doc:
            where = f"{name}:{lineno}"
            rows.append((_number(doc.get("arrival_s"), where, "arrival_s"),
                         _number(doc.get("service_s"), where, "service_s")))
        elif (a := _json_access(name, lineno, doc)) is not None:
            access.append(a)
    if rows and access:
        raise TraceError(f"{name}: mixes arrival_s/service_s rows with access log lines; use one or the other")
    return _from_access(name, access) if access else _sorted(name, rows)


def load_trace(spec: str, read: Callable[[Path], str] | None = None) -> Trace:
    """A built-in trace (``bursty`` or ``bursty:duration=10m,seed=3``) or a file's."""
    head = spec.split(":", 1)[0]
    if head in SYNTHETIC:
        return synthetic(spec)
    path = Path(spec)
    try:
        text = read(path) if read is not None else path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise TraceError(f"{spec}: no such file, and not a built-in trace ({', '.join(SYNTHETIC)})") from None
    except OSError as exc:
        raise TraceError(f"{spec}: cannot read ({exc.strerror or exc})") from None
    return parse_trace(spec, text)


# -- synthetic traces ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generator:
    """A built-in trace: its parameters' defaults and what it models."""

    defaults: Mapping[str, float]
    about: str
    make: Callable[[random.Random, Mapping[str, float]], list[tuple[float, float]]]


def _service(rng: random.Random, mean: float, cv: float) -> float:
    """Lognormal with this mean and coefficient of variation (a constant when cv is 0)."""
    if cv <= 0:
        return mean
    sigma2 = math.log(1 + cv * cv)
    return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> Iterable[float]:
    if rate <= 0:
        return
    t = start + rng.expovariate(rate)
    while t < end:
        yield t
        t += rng.expovariate(rate)


def _steady(rng: random.Random, p: Mapping[str, float]) -> list[tuple[float, float]]:
    return [(t, _service(rng, p["service"], p["cv"])) for t in _poisson(rng, p["rate"], 0.0, p["duration"])]


def _bursty(rng: random.Random, p: Mapping[str, float]) -> list[tuple[float, float]]:
    rows = [(t, _service(rng, p["service"], p["cv"])) for t in _poisson(rng, p["rate"], 0.0, p["duration"])]
    for start in _poisson(rng, 1 / p["every"], 0.0, p["duration"]):
        for _ in range(int(p["size"])):
            t = start + rng.uniform(0.0, p["spread"])
            if t < p["duration"]:
                rows.append((t, _service(rng, p["service"], p["cv"])))
    return rows


def _diurnal(rng: random.Random, p: Mapping[str, float]) -> list[tuple[float, float]]:
    peak = p["rate"] * (1 + p["swing"])
    rows = []
    for t in _poisson(rng, peak, 0.0, p["duration"]):  # thinning: keep each with rate(t) / peak
        rate = p["rate"] * (1 - p["swing"] * math.cos(2 * math.pi * t / p["period"]))
        if rng.random() * peak < rate:
            rows.append((t, _service(rng, p["service"], p["cv"])))
    return rows


def _sparse(rng: random.Random, p: Mapping[str, float]) -> list[tuple[float, float]]:
    return [(t, _service(rng, p["service"], p["cv"])) for t in _poisson(rng, 1 / p["gap"], 0.0, p["duration"])]


SYNTHETIC: dict[str, Generator] = {
    "steady": Generator(
        {"rate": 10.0, "duration": 3600.0, "service": 0.5, "cv": 0.5, "seed": 1.0},
        "Poisson arrivals at `rate` requests/s for `duration`", _steady),
    "bursty": Generator(
        {"rate": 0.05, "every": 300.0, "size": 30.0, "spread": 10.0, "duration": 3600.0, "service": 2.0, "cv": 0.5,
         "seed": 2.0},
        "a Poisson background at `rate`/s plus bursts (Poisson, one every `every` s on average) of `size` requests "
        "spread uniformly over `spread` s", _bursty),
    "diurnal": Generator(
        {"rate": 5.0, "swing": 0.8, "period": 86400.0, "duration": 86400.0, "service": 1.0, "cv": 0.5, "seed": 3.0},
        "Poisson arrivals at rate(t) = `rate` x (1 - `swing` cos(2 pi t / `period`)): quiet at the start (night), "
        "busiest half a period later (thinning of a Poisson process at the peak rate)", _diurnal),
    "sparse": Generator(
        {"gap": 120.0, "duration": 3600.0, "service": 2.0, "cv": 0.5, "seed": 4.0},
        "single requests with exponential gaps of mean `gap` s (Poisson at 1/`gap`)", _sparse),
}
_DURATIONS = {"duration", "every", "spread", "period", "gap", "service"}  # take 10m, 1h ... as well as seconds
_POSITIVE = {"every", "gap", "period", "duration"}


def synthetic(spec: str) -> Trace:
    """``NAME`` or ``NAME:key=value,...`` (parameters in ``SYNTHETIC[NAME].defaults``). Service times of every
    built-in trace are lognormal with mean `service` and coefficient of variation `cv`; `seed` seeds Python's
    ``random.Random``, so a spec always gives the same trace."""
    name, _, args = spec.partition(":")
    gen = SYNTHETIC.get(name)
    if gen is None:
        raise TraceError(f"{name}: not a built-in trace ({', '.join(SYNTHETIC)})")
    params = dict(gen.defaults)
    for item in filter(None, (part.strip() for part in args.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in params:
            raise TraceError(f"{spec}: {key!r} is not a parameter of {name} (its parameters: "
                             f"{', '.join(f'{k}={v:g}' for k, v in gen.defaults.items())})")
        try:
            number = parse_duration(value.strip()) if key in _DURATIONS else float(value)
        except ValueError as exc:
            raise TraceError(f"{spec}: {key}: {exc}") from None
        if not math.isfinite(number) or number < 0 or (key in _POSITIVE and number == 0):
            raise TraceError(f"{spec}: {key} must be a number {'>' if key in _POSITIVE else '>='} 0, not {value!r}")
        params[key] = number
    if "swing" in params and params["swing"] > 1:
        raise TraceError(f"{spec}: swing must be within 0..1, not {params['swing']:g}")
    rows = gen.make(random.Random(int(params["seed"])), params)
    label = f"{name}({', '.join(f'{k}={v:g}' for k, v in params.items())})"
    if not rows:
        raise TraceError(f"{spec}: these parameters give no request; make the trace longer or busier")
    return _sorted(label, rows, duration=params["duration"])
