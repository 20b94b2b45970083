"""A smoke run of bench/queue_jobs.py: it runs, prints its figures and leaves nothing behind (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_queue_benchmark_prints_its_figures(tmp_path):
    out = tmp_path / "queue.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "queue_jobs.py"), "--quick", "--no-sdk",
                           "--json", str(out)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jobs/s" in proc.stdout and "handler start on an idle warm worker p50" in proc.stdout
    assert "fsynced before /run answers" in proc.stdout
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["worker"] == "lean" and run["throughput"]["jobs"] == 500 and run["dispatch"]["samples"] == 20
