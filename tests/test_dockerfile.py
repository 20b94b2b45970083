"""The Dockerfile's install steps, entrypoint and healthcheck work, tested without a Docker engine.

The Dockerfile is parsed with Docker's own parser (the `dockerfile` package wraps moby's Go parser). Its build
stage's RUN commands run as written, in a scratch directory laid out like the build context (what COPY copies),
with the stage's ENV and the ARGs WHEELS and VENV pointing into that directory instead of /wheels and
/opt/lbproxy: they build lbproxy's wheel and install it with its runtime dependencies into a virtualenv, which is
what the runtime stage copies. The entrypoint, CMD and HEALTHCHECK then run from that virtualenv.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import dockerfile
import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from lbproxy import __version__

from .conftest import ROOT, free_port
from .test_chart import documents, gpu_values, rendered_config

VENV_IN_IMAGE = "/opt/lbproxy"


@dataclass
class Stage:
    name: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]


def stages() -> list[Stage]:
    parsed: list[Stage] = []
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            value = command.value
            parsed.append(Stage(value[2] if len(value) == 3 and value[1].upper() == "AS" else ""))
        elif parsed:
            parsed[-1].commands.append(command)
    return parsed


def key_values(command: dockerfile.Command) -> dict[str, str]:
    """ENV/ARG/LABEL pairs, in either form (`K=V ...` or `K V`)."""
    value = list(command.value)
    if command.cmd == "ENV" and len(value) % 2 == 0 and all("=" not in v for v in value[::2]):
        return dict(zip(value[::2], value[1::2], strict=True))
    return dict(item.split("=", 1) for item in value if "=" in item)


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: later patterns win, `!` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("**/", "")) or \
                path.startswith(pattern + "/"):
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The virtualenv the image ships, made by the Dockerfile's build stage. Yields its directory."""
    root = tmp_path_factory.mktemp("image")
    build = next(s for s in stages() if s.name == "build")
    workdir = root / "src"
    workdir.mkdir()
    patterns = dockerignore()
    for copy in build.all("COPY"):
        assert not copy.flags, "the build stage copies from the build context only"
        *sources, dest = copy.value
        for source in sources:
            assert not ignored(source.rstrip("/"), patterns), f".dockerignore excludes {source}"
            src = ROOT / source
            target = workdir / dest if dest != "./" else workdir / src.name
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(src, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "LBPROXY_", "VIRTUAL_ENV"))}
    for command in build.all("ENV"):
        env.update(key_values(command))
    args = {k: v for command in build.all("ARG") for k, v in key_values(command).items()}
    assert args == {"WHEELS": "/wheels", "VENV": VENV_IN_IMAGE}
    env.update(WHEELS=str(root / "wheels"), VENV=str(root / "venv"))
    # `python` is the image's interpreter: here the one running the tests, first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for run in build.all("RUN"):
        (script,) = run.value
        r = subprocess.run(["sh", "-ec", script], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"RUN {script}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    yield root / "venv"


def entrypoint() -> tuple[list[str], list[str]]:
    runtime = stages()[-1]
    (entry,) = runtime.all("ENTRYPOINT")
    (cmd,) = runtime.all("CMD")
    assert entry.json and cmd.json, "exec form: lbproxy is PID 1 and gets SIGTERM itself"
    return list(entry.value), list(cmd.value)


def run_entrypoint(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker run IMAGE ARGS...`: the ENTRYPOINT with ARGS in place of CMD, the image's PATH only."""
    entry, _ = entrypoint()
    return subprocess.run([str(venv / "bin" / entry[0]), *entry[1:], *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin"})


# ------------------------------------------------------------------------------------------------------ tests


def test_runtime_stage_is_slim_non_root_and_copies_only_the_virtualenv():
    runtime = stages()[-1]
    base = next(c for c in dockerfile.parse_file(str(ROOT / "Dockerfile")) if c.cmd in ("ARG", "FROM"))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base.value[0])
    (copy,) = runtime.all("COPY")
    assert copy.flags == ("--from=build",) and list(copy.value) == [VENV_IN_IMAGE, VENV_IN_IMAGE]
    (user,) = runtime.all("USER")
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes' runAsNonRoot can verify it
    chart_values = yaml.safe_load((ROOT / "charts" / "lbproxy" / "values.yaml").read_text())
    assert int(uid) == chart_values["proxy"]["podSecurityContext"]["runAsUser"]
    assert not runtime.all("RUN") or all("pip" not in c.value[0] for c in runtime.all("RUN"))
    env = {k: v for c in runtime.all("ENV") for k, v in key_values(c).items()}
    assert env["PATH"].startswith(f"{VENV_IN_IMAGE}/bin:")


def test_entrypoint_and_ports_fit_the_chart():
    entry, cmd = entrypoint()
    assert entry == ["lbproxy"]
    assert cmd == ["serve", "/etc/lbproxy/config.yaml"]
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == cmd  # the chart overrides CMD only to add --log-level
    (expose,) = stages()[-1].all("EXPOSE")
    assert sorted(int(p) for p in expose.value) == sorted(p["containerPort"] for p in container["ports"])


def test_dockerignore_keeps_the_context_to_what_the_build_copies():
    patterns = dockerignore()
    for kept in ("pyproject.toml", "README.md", "lbproxy", "lbproxy/config.py"):
        assert not ignored(kept, patterns), kept
    for dropped in (".venv", ".git", "tests", "bench", "charts", "examples", ".pytest_cache"):
        assert ignored(dropped, patterns), dropped


@pytest.mark.slow
def test_image_virtualenv_holds_lbproxy_and_only_its_runtime_dependencies(image):
    site = next(image.glob("lib/python3*/site-packages"))
    installed = {_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}
    needed: set[str] = set()
    assert {"kubernetes", "uvloop", "asyncpg"} <= set(installed), "the chart's backends and stores run in it"
    todo = [Requirement("lbproxy[kubernetes,fast,postgres]")]
    while todo:
        req = todo.pop()
        name = _name(req.name)
        assert name in installed, f"{name} is missing from the image"
        if name in needed:
            continue
        needed.add(name)
        for text in installed[name].requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(sub)
    assert set(installed) == needed, f"not runtime dependencies: {set(installed) - needed}"
    assert {"pytest", "hypothesis", "ruff", "mypy", "pip", "setuptools"}.isdisjoint(installed)


@pytest.mark.slow
def test_image_entrypoint_prints_the_version(image):
    r = run_entrypoint(image, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"lbproxy {__version__}"
    chart = yaml.safe_load((ROOT / "charts" / "lbproxy" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__  # the chart's default image tag is this version


@pytest.mark.slow
@pytest.mark.parametrize("values, namespace", [(None, "default"), ("gpu", "inference")])
def test_image_checks_the_config_the_chart_mounts(image, tmp_path, values, namespace):
    config = rendered_config(documents(gpu_values() if values else None, "llama", namespace))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    r = run_entrypoint(image, "check", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok (endpoint {config['name']}, backend kubernetes)" in r.stdout


@pytest.mark.slow
def test_image_serves_and_its_healthcheck_follows_the_admin_port(image, tmp_path):
    runtime = stages()[-1]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert healthcheck.value[0] == "CMD" and healthcheck.json
    probe = list(healthcheck.value[1:])
    env_defaults = {k: v for c in runtime.all("ENV") for k, v in key_values(c).items()}
    assert env_defaults["HEALTHCHECK_URL"] == "http://127.0.0.1:9090/healthz"  # the chart's admin port

    admin = free_port()
    config = {"name": "image", "listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{admin}",
              "worker": {"command": ["python3", "-c", "pass"]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PATH": f"{image / 'bin'}:/usr/bin:/bin", "HEALTHCHECK_URL": f"http://127.0.0.1:{admin}/healthz"}

    def healthcheck_passes() -> bool:
        probe_argv = [str(image / "bin" / probe[0]), *probe[1:]]
        return subprocess.run(probe_argv, env=env, capture_output=True, timeout=30).returncode == 0

    assert not healthcheck_passes()  # nothing listens yet
    proc = subprocess.Popen([str(image / "bin" / "lbproxy"), "serve", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not healthcheck_passes():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.2)
        status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=10).json()
        assert status["endpoint"] == "image"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not healthcheck_passes()


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_docs_say_how_to_build_the_image():
    for doc in (ROOT / "docs" / "helm.md", ROOT / "charts" / "lbproxy" / "README.md"):
        assert "docker build -t lbproxy:" in doc.read_text(), doc
