"""What a run prints: the header lines, the table (each column's median, lbproxy's ratio against each peer and
direct, the spread), the targets, the notes and lbproxy's log problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from report import BASES, COLUMNS, Metric

HEADER = ("scenario", "unit", *COLUMNS, *(f"lbproxy/{b}" for b in BASES),
          "spread " + "/".join(c[0] for c in COLUMNS))


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _spreads(m: Metric) -> str:
    parts = [m.spread(c) for c in COLUMNS]
    return "/".join("-" if s is None else f"{s * 100:.0f}%" for s in parts)


def table(metrics: list[Metric]) -> str:
    rows = [HEADER]
    for m in metrics:
        label = m.label + (" *" if m.notes else "")
        rows.append((label, m.unit, *(_num(m.median(c), m.unit) for c in COLUMNS),
                     *(_ratio(m.ratio("lbproxy", b)) for b in BASES), _spreads(m)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(r[2:], widths[2:],
                                                                                              strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_text(rows: list[dict[str, Any]]) -> str:
    lines = ["targets (for later; not assertions):"]
    width = max(len(r["target"]) for r in rows)
    for r in rows:
        if r["value"] is None:
            verdict, value = "not measured", "-"
        else:
            value = f"{r['value']:.3f} {r['unit']}" if r["unit"] == "ms" else f"{r['value']:.2f} {r['unit']}"
            verdict = "met" if r["met"] else "NOT met" if r["met"] is False else "n/a"
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"  {r['target'].ljust(width)}  {r['limit']:>9}  {value:>12}  {verdict}{note}")
    return "\n".join(lines)


def print_summary(data: dict[str, Any], metrics: list[Metric], path: Path) -> None:
    m, s = data["machine"], data["setup"]
    pin = s["pinning"]
    peers = ", ".join(f"{p} {m.get(p) or 'absent'}" for p in ("nginx", "haproxy", "caddy"))
    print(f"lbproxy bench, {m['date_utc']} on {m['hostname']}: {m['cpu_model']}, {m['cores']} cores, "
          f"python {m['python']}, aiohttp {m['aiohttp']}, {peers}, wrk {m['wrk'] or 'absent'}")
    print(f"httptools {m['httptools'] or 'absent'}, "
          f"uvloop {m['uvloop'] or 'absent'}, picows {m['picows'] or 'absent'}")
    print(f"load generator: {s['load_generator']}; reference worker: {s['reference_worker']}; "
          + (f"load generator on cpu {pin['load_generator_cpu']}, each proxy and the worker on cpu "
             f"{pin['servers_cpu']}" if pin else "not pinned"))
    print(f"medians of {data['options']['repeat']} repetition(s); lbproxy/X = lbproxy's median / X's median; "
          f"spread = (max - min) / median per column ({'/'.join(COLUMNS)}); * = see notes")
    print()
    print(table(metrics))
    print()
    print(targets_text(data["targets"]))
    for note in data["notes"]:
        print(f"note: {note}")
    problems = data["lbproxy_log_problems"]
    if problems:
        print(f"lbproxy logged {sum(p['count'] for p in problems)} warning/error line(s) (all its instances):")
        for p in problems[:5]:
            print(f"  {p['count']:>6} x {p['line'][:160]}")
    print(f"waited {data['waited_for_quiet_seconds']:g} s in all for other processes to go quiet; "
          f"{data['load_runs_rerun']} load run(s) run again because others disturbed them")
    print(f"results: {path}")
