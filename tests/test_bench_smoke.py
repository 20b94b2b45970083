"""A smoke run of the benchmark (bench/run.py): it runs, prints its table and writes its JSON.

Never a timed assertion: the numbers are whatever this machine gives. It must pass without nginx and wrk
(the bench then uses the Python worker and load generator, and says so); the second test forces that path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, pid_alive

BENCH = ROOT / "bench" / "run.py"
HEADER = ("scenario", "direct", "nginx", "lbproxy", "lbproxy/nginx", "lbproxy/direct", "spread")


def run_bench(tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--scenarios", "throughput,idle,tick", "--duration", "1",
         "--idle-clients", "20", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    files = list(out.glob("*.json"))
    assert len(files) == 1, f"expected one results file in {out}, found {files}"
    return proc.stdout, json.loads(files[0].read_text())


def assert_nothing_left_running(data: dict[str, Any]) -> None:
    """Every process the bench started (lbproxy, nginx, loaders) or saw (lbproxy's workers) is gone."""
    assert data["pids_started"]
    assert [pid for pid in data["pids_started"] if pid_alive(pid)] == []


@pytest.mark.slow
def test_bench_quick_run_prints_its_table_and_writes_json(tmp_path: Path) -> None:
    stdout, data = run_bench(tmp_path)
    header = next(line for line in stdout.splitlines() if line.startswith("scenario"))
    assert all(column in header for column in HEADER)
    assert "small GET, 64 connections" in stdout
    assert "targets (for later; not assertions)" in stdout
    assert {"throughput.rps", "idle.delta", "tick.ms"} <= set(data["metrics"])
    assert data["metrics"]["throughput.rps"]["median"]["lbproxy"] > 0
    assert data["machine"]["cpu_model"] and data["machine"]["python"]
    assert [run["opened"] for run in data["scenarios"]["idle"]["runs"]] == [20] * len(data["scenarios"]["idle"]["runs"])
    assert_nothing_left_running(data)


@pytest.mark.slow
def test_bench_without_nginx_and_wrk_uses_python_worker_and_load_generator(tmp_path: Path) -> None:
    stdout, data = run_bench(tmp_path, "--no-nginx", "--no-wrk")
    assert "load generator: python" in stdout
    assert "examples/workers/echo.py" in stdout
    assert data["setup"]["load_generator"].startswith("python")
    assert "nginx" not in data["metrics"]["throughput.rps"]["values"]
    assert any("nginx is disabled" in note for note in data["notes"])
    assert_nothing_left_running(data)
