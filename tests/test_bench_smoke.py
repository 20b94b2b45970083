"""A smoke run of the benchmark (bench/run.py): it runs, prints its table and writes its JSON.

Never a timed assertion: the numbers are whatever this machine gives. It must pass without the peers (nginx,
HAProxy, Caddy), wrk and picows: the bench then leaves their columns or scenario out, uses the Python worker
and load generator, and says so. The first test takes whatever is installed; the second forces the bare path.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, pid_alive

BENCH = ROOT / "bench" / "run.py"
HEADER = ("scenario", "direct", "nginx", "haproxy", "caddy", "lbproxy", "lbproxy/nginx", "lbproxy/haproxy",
          "lbproxy/caddy", "lbproxy/direct", "spread")
PEERS = ("nginx", "haproxy", "caddy")


def run_bench(tmp_path: Path, scenarios: str, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--scenarios", scenarios, "--duration", "1",
         "--idle-clients", "20", "--ws-sessions", "8", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=180, cwd=ROOT,  # a hang guard, not a timing
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
    stdout, data = run_bench(tmp_path, "throughput,ws_echo,idle,tick")
    header = next(line for line in stdout.splitlines() if line.startswith("scenario"))
    assert all(column in header for column in HEADER)
    assert "small GET, 64 connections" in stdout
    assert "targets (for later; not assertions)" in stdout
    assert {"throughput.rps", "idle.delta", "tick.ms"} <= set(data["metrics"])
    throughput = data["metrics"]["throughput.rps"]
    assert throughput["median"]["lbproxy"] > 0
    for peer in PEERS:  # each installed peer has its column and ratio; each missing one is named in a note
        if shutil.which(peer) or Path(f"/usr/sbin/{peer}").exists():
            assert throughput["median"][peer] > 0 and throughput["ratio"][f"lbproxy/{peer}"] > 0
        else:
            assert any(note.startswith(f"{peer} is not installed") for note in data["notes"])
    if importlib.util.find_spec("picows") is not None:  # the bench runs on this interpreter
        echo = data["metrics"]["ws_echo.mps"]
        assert echo["median"]["direct"] > 0 and echo["median"]["lbproxy"] > 0
        assert "WebSocket echo" in stdout
        assert all(run["errors"] == 0 for run in data["scenarios"]["ws_echo"]["runs"])
        assert data["scenarios"]["ws_echo"]["headroom"].startswith("headroom:")
    else:
        assert "ws_echo.mps" not in data["metrics"]
        assert any(note.startswith("picows is not installed") for note in data["notes"])
    assert data["machine"]["cpu_model"] and data["machine"]["python"]
    assert [run["opened"] for run in data["scenarios"]["idle"]["runs"]] == [20] * len(data["scenarios"]["idle"]["runs"])
    assert_nothing_left_running(data)


@pytest.mark.slow
def test_bench_without_peers_wrk_and_picows_uses_python_worker_and_load_generator(tmp_path: Path) -> None:
    stdout, data = run_bench(tmp_path, "throughput,ws_echo,idle,tick", "--no-nginx", "--no-haproxy", "--no-caddy",
                             "--no-wrk", "--no-picows")
    assert "load generator: python" in stdout
    assert "examples/workers/echo.py" in stdout
    assert data["setup"]["load_generator"].startswith("python")
    assert set(data["metrics"]["throughput.rps"]["values"]) == {"direct", "lbproxy"}
    for peer in PEERS:
        assert any(note.startswith(f"{peer} is disabled (--no-{peer})") for note in data["notes"])
    assert "ws_echo.mps" not in data["metrics"]
    assert any(note.startswith("picows is disabled") for note in data["notes"])
    assert_nothing_left_running(data)
