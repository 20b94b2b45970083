"""The ``lbproxy`` command as a user runs it: exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbproxy import __version__

from .conftest import ROOT


def lbproxy(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lbproxy", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=None if env is None else {**os.environ, **env})


def test_version():
    r = lbproxy("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"lbproxy {__version__}"


def test_check_accepts_the_example_config():
    r = lbproxy("check", "examples/echo.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("command", ["check", "serve"])
def test_invalid_config_exits_2_naming_every_key(tmp_path, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad_Name\nworkers: {active: 3, max: 2}\ntimeouts: {wait: soon}\nworkres: {}\n")
    r = lbproxy(command, str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for key in ("name:", "workers.max: must be >= workers.active (3)", "timeouts.wait:", "workres:"):
        assert key in r.stderr, (key, r.stderr)


def test_missing_file_exits_2(tmp_path):
    r = lbproxy("serve", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr


def test_kubernetes_only_keys_are_refused_by_serve_with_the_local_backend(tmp_path):
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text("name: gpu\nworker: {command: [python3, w.py]}\ngpu: {categories: [80gb-pro]}\n")
    r = lbproxy("serve", str(cfg))
    assert r.returncode == 2
    assert "gpu.categories:" in r.stderr and "kubernetes" in r.stderr


def test_check_warns_about_risky_choices(tmp_path):
    cfg = tmp_path / "risky.yaml"
    cfg.write_text("name: risky\nlisten: 0.0.0.0:8080\nworkers: {max: 1}\ntimeouts: {execution: off}\n"
                   "worker: {command: [python3, w.py]}\n")
    r = lbproxy("check", str(cfg))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    text = "\n".join(warnings)
    assert "workers.max" in text and "timeouts.execution" in text and "auth.api_keys" in text


def test_serve_without_a_worker_command_exits_2(tmp_path):
    cfg = tmp_path / "nocmd.yaml"
    cfg.write_text("name: nocmd\n")
    r = lbproxy("serve", str(cfg))
    assert r.returncode == 2 and "worker.command" in r.stderr


@pytest.mark.parametrize("key", ["listen", "admin"])
def test_a_port_in_use_is_one_line_naming_the_key_and_exit_2(tmp_path, key):
    import socket

    import yaml

    from .conftest import base_config

    taken = socket.create_server(("127.0.0.1", 0))
    try:
        cfg = base_config(workers={"active": 1, "max": 1})
        cfg[key] = f"127.0.0.1:{taken.getsockname()[1]}"
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        r = lbproxy("serve", str(path), env={"LBPROXY_DATA_DIR": str(tmp_path / "data")})
    finally:
        taken.close()
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"{key}: cannot listen on {cfg[key]}: the address is already in use"), r.stderr
    for noise in ("Traceback", "Unclosed client session", "worker"):
        assert noise not in r.stderr, r.stderr  # and no worker was started before the check
