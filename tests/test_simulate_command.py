"""``lbproxy simulate``: the table, --json, --grid with the front and the recommendation, --out files, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lbproxy.cli import main

from .conftest import ROOT

EXAMPLE = str(ROOT / "examples" / "echo.yaml")
BURSTY = "bursty:duration=30m"


def simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_setting_prints_its_table_the_rules_and_the_speed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = simulate(capsys, EXAMPLE, "--trace", BURSTY, "--cold-start", "20s")
    assert code == 0
    assert "trace: bursty(" in out and "cold start 20s" in out
    header = next(line for line in out.splitlines() if "p99" in line and "settings" in line)
    for column in ("cost", "vs ideal", "p50 wait", "p95", "p99", "503", "429", "cold starts", "worker-s start",
                   "busy", "idle", "stopping"):
        assert column in header
    assert "timeouts.idle 10s vs the cold start 20s" in out  # the product page's first rule, with figures
    assert re.search(r"speed: 1 setting\(s\) x [\d,]+ requests over 30m simulated in [\d.]+s", out)


def test_json_prints_one_object_per_setting_with_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = simulate(capsys, EXAMPLE, "--trace", BURSTY, "--grid", "timeouts.idle=5s,60s", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["settings"] for r in rows] == [{"timeouts.idle": "5s"}, {"timeouts.idle": "60s"}]
    for r in rows:
        for key in ("cost_dollars", "ideal_cost_dollars", "wait_p50_s", "wait_p95_s", "wait_p99_s", "rejected",
                    "cold_starts", "requests"):
            assert isinstance(r[key], (int, float)), key
        assert set(r["worker_seconds"]) == {"total", "start", "busy", "idle", "stopping"}
        assert r["worker_seconds"]["total"] == pytest.approx(
            sum(v for k, v in r["worker_seconds"].items() if k != "total"), abs=0.01)
        assert r["cost_dollars"] >= r["ideal_cost_dollars"] > 0
    # a longer idle timeout keeps workers: fewer cold starts, more idle seconds
    assert rows[1]["cold_starts"] < rows[0]["cold_starts"]
    assert rows[1]["worker_seconds"]["idle"] > rows[0]["worker_seconds"]["idle"]
    assert sum(r["recommended"] for r in rows) == 1


def test_a_grid_shows_the_front_and_a_recommendation_that_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = simulate(capsys, EXAMPLE, "--trace", BURSTY, "--cold-start", "20s",
                              "--grid", "timeouts.idle=5s,20s,60s", "--grid", "workers.active=0,1",
                              "--target-p99", "15")
    assert code == 0
    assert "simulating 6/6" in err
    assert out.count("timeouts.idle=") >= 6
    rec = next(line for line in out.splitlines() if line.startswith("recommended: #"))
    assert "meets the target of 15s" in rec or "no setting meets the p99 target" in rec
    assert "*: on the Pareto front" in out
    assert any(line.startswith(">") for line in out.splitlines())  # the chosen row is marked


def test_out_writes_csv_json_html_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "report"
    code, _, err = simulate(capsys, EXAMPLE, "--trace", BURSTY, "--grid", "timeouts.idle=5s,30s", "--out",
                            str(out_dir))
    assert code == 0, err
    assert {p.name for p in out_dir.iterdir()} == {"results.csv", "results.json", "report.html", "cost_vs_p99.png",
                                                    "timeline.png"}
    csv_lines = (out_dir / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "worker_seconds.idle" in csv_lines[0] and "settings.timeouts.idle" in csv_lines[0]
    doc = json.loads((out_dir / "results.json").read_text())
    assert len(doc["settings"]) == 2 and doc["recommended"] in (1, 2) and doc["why"]
    page = (out_dir / "report.html").read_text()
    assert page.count("<svg") == 2 and "<table>" in page
    # self-contained: nothing to load (no script, no stylesheet or image link; the SVG namespace is a name)
    assert not re.search(r"<script|<link|\bsrc=|\bhref=|@import|url\(", page)
    for png in ("cost_vs_p99.png", "timeline.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_out_still_writes_the_rest_and_says_what_is_missing(tmp_path: Path) -> None:
    # matplotlib made unimportable, in a process of its own
    code = ("import sys; sys.modules['matplotlib'] = None; from lbproxy.cli import main; "
            f"sys.exit(main(['simulate', {EXAMPLE!r}, '--trace', 'sparse:duration=10m', '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed (pip install 'lbproxy[plot]')" in proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"results.csv", "results.json", "report.html"}


def test_the_simulator_reads_its_own_access_log_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [json.dumps({"ts": 1000.0 + i * 7, "logger": "lbproxy.access", "path": "/gen", "status": 200,
                         "worker": "w1", "wait_s": 0.0, "duration_s": 1.5}) for i in range(20)]
    log = tmp_path / "access.jsonl"
    log.write_text("\n".join(lines) + "\n")
    code, out, _ = simulate(capsys, EXAMPLE, "--trace", str(log), "--cold-start", "1s", "--json")
    assert code == 0
    row = json.loads(out)
    assert row["requests"] == 20 and row["worker_seconds"]["busy"] == pytest.approx(30.0, rel=0.01)


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "timeouts.idle=soon"], "timeouts.idle: invalid duration 'soon'"),
    (["--set", "workers.max=0"], "workers.max: "),
    (["--grid", "workers.max=2,zero"], "workers.max: "),
    (["--set", "workers.maxx=3"], "workers.maxx: not a setting the simulation models"),
    (["--set", "listen=127.0.0.1:1"], "listen: not a setting the simulation models"),
    (["--set", "timeouts.idle"], "--set 'timeouts.idle': expected key=value"),
    (["--grid", "timeouts.idle=5s", "--set", "timeouts.idle=6s"], "timeouts.idle: given more than once"),
    (["--grid", "sim.cold_start=10s,uniform(1s)"], "sim.cold_start: invalid cold start 'uniform(1s)'"),
    (["--cold-start", "later"], "--cold-start: invalid cold start 'later'"),
])
def test_invalid_settings_exit_2_naming_the_key(capsys: pytest.CaptureFixture[str], args: list[str],
                                                message: str) -> None:
    code, out, err = simulate(capsys, EXAMPLE, "--trace", "sparse:duration=10m", *args)
    assert code == 2
    assert message in err, err
    assert out == ""


def test_a_bad_trace_exits_2_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,service_s\n0,1\n1,x\n")
    code, _, err = simulate(capsys, EXAMPLE, "--trace", str(trace))
    assert code == 2 and f"{trace}:3: service_s must be a number of seconds, not 'x'" in err
    code, _, err = simulate(capsys, EXAMPLE, "--trace", "burstyy")
    assert code == 2 and "not a built-in trace (steady, bursty, diurnal, sparse)" in err


def test_an_invalid_config_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "workers": {"max": 0}}))
    code, _, err = simulate(capsys, str(cfg), "--trace", "sparse")
    assert code == 2 and "workers.max:" in err


def test_a_grid_over_the_cold_start_shows_what_a_faster_start_is_worth(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = simulate(capsys, EXAMPLE, "--trace", "sparse:duration=2h", "--grid", "sim.cold_start=5s,60s",
                            "--set", "timeouts.wait=2m", "--json")
    assert code == 0
    fast, slow = (json.loads(line) for line in out.splitlines())
    assert fast["wait_p50_s"] < slow["wait_p50_s"] and fast["cost_dollars"] < slow["cost_dollars"]


def test_the_readme_example_runs_and_shows_what_the_readme_says(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## lbproxy simulate", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```sh\n(lbproxy simulate .*?)\n```", section, flags=re.S)
    assert command is not None
    argv = command.group(1).replace("\\\n", " ").split()[1:]
    argv[argv.index("--out") + 1] = str(tmp_path)
    code, out, _ = simulate(capsys, *[str(ROOT / a) if a.endswith(".yaml") else a for a in argv[1:]])
    assert code == 0
    shown = re.search(r"```\n(trace: .*?)\n```", section, flags=re.S)
    assert shown is not None
    for line in shown.group(1).splitlines():
        if line.strip() and "..." not in line and not line.startswith("assumed:"):
            assert line.rstrip() in out, line
    assert (tmp_path / "report.html").exists()
