"""PNG plots with matplotlib, the optional ``plot`` extra (``pip install 'lbproxy[plot]'``): cost vs p99 wait with
the Pareto front, and workers and queue over time for the recommended setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .advice import labels
from .report import Report

__all__ = ["MISSING", "available", "write_plots"]

MISSING = "no PNG plots: matplotlib is not installed (pip install 'lbproxy[plot]'); report.html has its own charts"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(directory: Path, report: Report) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    written = []
    outcomes = report.outcomes
    priced = bool(outcomes) and outcomes[0].totals.priced
    chosen = report.advice.chosen if report.advice.chosen is not None else 0
    if len(outcomes) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [o.wait(99) for o in outcomes]
        ys = [o.cost if priced else o.totals.total_seconds for o in outcomes]
        ax.scatter(xs, ys, color="#36c", label="settings")
        front = sorted(report.advice.front, key=lambda i: xs[i])
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", color="#c33", label="Pareto front")
        ax.scatter([xs[chosen]], [ys[chosen]], s=160, facecolors="none", edgecolors="#c33", label="recommended")
        for i in range(len(outcomes)):
            ax.annotate(str(i + 1), (xs[i], ys[i]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("p99 wait in the queue (s)")
        ax.set_ylabel("cost ($)" if priced else "worker-seconds")
        written.append(_save(plt, fig, ax, report.trace.name[:70], directory / "cost_vs_p99.png"))
    o = outcomes[chosen]
    series = list(o.series) or [(0.0, 0, 0)]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.step([p[0] for p in series], [p[1] for p in series], where="post", label="workers", color="#36c")
    ax.step([p[0] for p in series], [p[2] for p in series], where="post", label="queued", color="#c83")
    ax.set_xlabel("time (s)")
    written.append(_save(plt, fig, ax, f"#{chosen + 1} {labels(o.settings)}"[:90], directory / "timeline.png"))
    return written


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> str:
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
