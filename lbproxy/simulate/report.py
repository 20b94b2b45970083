"""The report: a table per setting, one JSON object per setting, and with ``--out DIR`` the files.

``--out DIR`` writes ``results.csv`` and ``results.json`` (every setting, the front, the recommendation),
``report.html`` (self-contained: tables and SVG charts drawn here, no script and no outside request), and, with
matplotlib installed (``pip install 'lbproxy[plot]'``), ``cost_vs_p99.png`` and ``timeline.png``.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durations import format_duration
from .advice import Advice, labels, money
from .results import Outcome
from .traces import Trace

__all__ = ["Report", "write_outputs"]


@dataclass(frozen=True, slots=True)
class Report:
    trace: Trace
    outcomes: Sequence[Outcome]
    advice: Advice
    assumptions: Mapping[str, str]  # cold start, stop time, seed, base config

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i, o in enumerate(self.outcomes):
            row = o.to_json()
            row["pareto"] = i in self.advice.front
            row["recommended"] = i == self.advice.chosen
            out.append(row)
        return out

    def header(self) -> list[str]:
        t = self.trace
        lines = [f"trace: {t.name}: {len(t):,} requests over {format_duration(t.duration)}, "
                 f"{t.service_seconds:,.0f} service-seconds"]
        lines += [f"  {note}" for note in t.notes]
        lines.append("assumed: " + ", ".join(f"{k} {v}" for k, v in self.assumptions.items()))
        return lines

    def table(self) -> str:
        head = ("", "#", "settings", "cost", "vs ideal", "p50 wait", "p95", "p99", "503", "429", "cold starts",
                "hit", "worker-s start", "busy", "idle", "stopping")
        rows = [head]
        for i, o in enumerate(self.outcomes):
            ws = o.worker_seconds()
            ratio = o.vs_ideal()
            mark = (">" if i == self.advice.chosen else "") + ("*" if i in self.advice.front else "")
            rows.append((mark, str(i + 1), labels(o.settings), money(o), "-" if ratio is None else f"{ratio:.2f}x",
                         f"{o.wait(50):.2f}s", f"{o.wait(95):.2f}s", f"{o.wait(99):.2f}s", str(o.rejected_503),
                         str(o.rejected_429), str(o.cold_starts), str(o.hit_cold_start), f"{ws['start']:,.0f}",
                         f"{ws['busy']:,.0f}", f"{ws['idle']:,.0f}", f"{ws['stopping']:,.0f}"))
        widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
        left = {2}
        text = ["  ".join(cell.ljust(widths[c]) if c in left else cell.rjust(widths[c]) for c, cell in enumerate(r))
                for r in rows]
        return "\n".join(line.rstrip() for line in text)

    def legend(self) -> list[str]:
        out = ["cost: what the workers were billed (per second, rounded up per worker, active/flex prices); vs ideal: "
               "over the pure service time at the flex price; waits: time in lbproxy's queue (a 503's too); hit: "
               "requests that waited for a worker still starting; worker-s: billed seconds by phase"]
        if len(self.outcomes) > 1:
            out.append("*: on the Pareto front of cost vs p99 wait (no other setting is both cheaper and faster)"
                       + ("; >: recommended" if self.advice.chosen is not None else ""))
        return out

    def text(self, speed: str) -> str:
        parts = [*self.header(), "", self.table(), "", *self.legend(), ""]
        a = self.advice
        if a.chosen is not None:
            o = self.outcomes[a.chosen]
            parts.append(f"recommended: #{a.chosen + 1} {labels(o.settings)}: {money(o)}, p99 wait "
                         f"{o.wait(99):.2f}s, because it is {a.why}")
        parts.append("the product page's rules, for " + ("it:" if a.chosen is not None else "this setting:"))
        parts += [f"  - {note}" for note in a.notes]
        parts.append(speed)
        return "\n".join(parts)

    def document(self) -> dict[str, Any]:
        t = self.trace
        return {"trace": {"name": t.name, "requests": len(t), "duration_s": t.duration,
                          "service_seconds": round(t.service_seconds, 3), "notes": list(t.notes)},
                "assumptions": dict(self.assumptions),
                "settings": self.rows(),
                "pareto_front": [i + 1 for i in self.advice.front],
                "recommended": None if self.advice.chosen is None else self.advice.chosen + 1,
                "why": self.advice.why, "notes": list(self.advice.notes)}


# -- files ---------------------------------------------------------------------------------------------------------


def _flat(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def write_outputs(directory: Path, report: Report, text: str,
                  plot: Callable[[Path, Report], list[str]] | None) -> list[str]:
    """Write the files; returns what was written and notes (e.g. matplotlib missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [_flat(r) for r in report.rows()]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with (directory / "results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    written.append(str(directory / "results.csv"))
    (directory / "results.json").write_text(json.dumps(report.document(), indent=1), encoding="utf-8")
    written.append(str(directory / "results.json"))
    (directory / "report.html").write_text(html_report(report, text), encoding="utf-8")
    written.append(str(directory / "report.html"))
    if plot is not None:
        written += plot(directory, report)
    return written


# -- the HTML report: tables and SVG charts, nothing from outside ------------------------------------------------

_W, _H, _PAD = 640, 300, 48


def _scale(values: Sequence[float], size: float, flip: bool) -> Callable[[float], float]:
    low, high = min(values, default=0.0), max(values, default=1.0)
    if high <= low:
        high = low + 1.0
    span = size - 2 * _PAD

    def at(v: float) -> float:
        f = (v - low) / (high - low)
        return _PAD + (1 - f) * span if flip else _PAD + f * span
    return at


def _axes(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str) -> list[str]:
    out = [f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#888"/>',
           f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#888"/>',
           f'<text x="{_W / 2}" y="{_H - 10}" text-anchor="middle">{html.escape(xlabel)}</text>',
           f'<text x="12" y="{_H / 2}" transform="rotate(-90 12 {_H / 2})" text-anchor="middle">'
           f'{html.escape(ylabel)}</text>']
    for values, horizontal in ((xs, True), (ys, False)):
        if not values:
            continue
        low, high = min(values), max(values)
        at = _scale(values, _W if horizontal else _H, flip=not horizontal)
        for k in range(5):
            v = low + (high - low) * k / 4
            p = at(v)
            if horizontal:
                out.append(f'<text x="{p:.1f}" y="{_H - _PAD + 16}" text-anchor="middle">{v:.3g}</text>')
            else:
                out.append(f'<text x="{_PAD - 4}" y="{p + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    return out


def svg_scatter(report: Report) -> str:
    os = report.outcomes
    xs = [o.wait(99) for o in os]
    ys = [o.cost if o.totals.priced else o.totals.total_seconds for o in os]
    fx, fy = _scale(xs, _W, False), _scale(ys, _H, True)
    parts = _axes(xs, ys, "p99 wait (s)", "cost ($)" if os and os[0].totals.priced else "worker-seconds")
    front = report.advice.front
    line = " ".join(f"{fx(xs[i]):.1f},{fy(ys[i]):.1f}" for i in sorted(front, key=lambda i: xs[i]))
    if len(front) > 1:
        parts.append(f'<polyline points="{line}" fill="none" stroke="#c33" stroke-width="1.5"/>')
    for i in range(len(os)):
        color = "#c33" if i in front else "#36c"
        r = 7 if i == report.advice.chosen else 4
        title = html.escape(f"#{i + 1} {labels(os[i].settings)}")
        parts.append(f'<circle cx="{fx(xs[i]):.1f}" cy="{fy(ys[i]):.1f}" r="{r}" fill="{color}"><title>{title}'
                     f'</title></circle><text x="{fx(xs[i]) + 6:.1f}" y="{fy(ys[i]) - 6:.1f}">{i + 1}</text>')
    return _svg(parts)


def svg_timeline(o: Outcome) -> str:
    points = list(o.series) or [(0.0, 0, 0)]
    xs = [p[0] for p in points]
    ys = [float(max(p[1], p[2])) for p in points] + [0.0]
    fx, fy = _scale(xs, _W, False), _scale(ys, _H, True)
    parts = _axes(xs, ys, "time (s)", "workers / queued")
    for column, color, name in ((1, "#36c", "workers"), (2, "#c83", "queued")):
        steps: list[str] = []
        for k, p in enumerate(points):
            if k:
                steps.append(f"{fx(p[0]):.1f},{fy(points[k - 1][column]):.1f}")
            steps.append(f"{fx(p[0]):.1f},{fy(p[column]):.1f}")
        parts.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="{color}"><title>{name}</title>'
                     f'</polyline>')
    parts.append(f'<text x="{_W - _PAD}" y="{_PAD - 8}" text-anchor="end" fill="#36c">workers</text>'
                 f'<text x="{_W - _PAD - 70}" y="{_PAD - 8}" text-anchor="end" fill="#c83">queued</text>')
    return _svg(parts)


def _svg(parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
            f'font-size="11" font-family="sans-serif">' + "".join(parts) + "</svg>")


def html_report(report: Report, text: str) -> str:
    rows = report.rows()
    cols = ["settings", "cost_dollars", "cost_vs_ideal", "wait_p50_s", "wait_p95_s", "wait_p99_s", "rejected",
            "rejected_429", "cold_starts", "requests_hit_cold_start", "peak_workers"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["#", *cols, "worker_seconds"])
    body = []
    for i, r in enumerate(rows):
        cells = [str(i + 1)] + [labels(r["settings"]) if c == "settings" else str(r[c]) for c in cols]
        cells.append(", ".join(f"{k} {v:,.0f}" for k, v in r["worker_seconds"].items()))
        cls = ' class="chosen"' if r["recommended"] else (' class="front"' if r["pareto"] else "")
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    chosen = report.advice.chosen if report.advice.chosen is not None else 0
    charts = ""
    if len(report.outcomes) > 1:
        charts += "<h2>Cost vs p99 wait</h2><p>Red: the Pareto front; the big dot: recommended.</p>"
        charts += svg_scatter(report)
    charts += f"<h2>Workers and queue over time (#{chosen + 1})</h2>" + svg_timeline(report.outcomes[chosen])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lbproxy simulate</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:nth-child(2){{text-align:left}}
tr.front{{background:#fde}}tr.chosen{{background:#fbb;font-weight:bold}}pre{{background:#f6f6f6;padding:1em;
white-space:pre-wrap}}</style></head><body>
<h1>lbproxy simulate</h1>
<table><tr>{head}</tr>{"".join(body)}</table>
{charts}
<h2>Report</h2><pre>{html.escape(text)}</pre>
</body></html>
"""
