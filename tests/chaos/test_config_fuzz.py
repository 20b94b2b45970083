"""Config fuzzing through the command itself: any invalid file gives exit 2 and messages naming a key.

tests/test_config.py fuzzes ``parse_config`` with JSON-like data; this goes through the YAML file and
``lbproxy check`` / ``lbproxy serve`` as a user would, mutating the example config and its text.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy import cli
from lbproxy.config import ConfigError, load_config

from ..conftest import ROOT

EXAMPLE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "echo.yaml").read_text())
SECTIONS = {
    "auth": ["api_keys", "forward_authorization"],
    "workers": ["active", "max", "gpus", "concurrency"],
    "timeouts": ["idle", "execution", "wait", "ttl", "init", "shutdown"],
    "scaling": ["strategy", "queue_delay", "requests_per_worker"],
    "limits": ["max_body_size", "max_queue"],
    "worker": ["command", "port", "health_port", "health_path", "env", "stop_grace"],
    "backend": ["type"],
}
TOP = ["name", "type", "listen", "admin", "flashboot", *SECTIONS]
# A problem line: "key.path[0]: reason", or "<file>: reason" for the file as a whole (unreadable, not YAML).
_PART = r'(?:[A-Za-z0-9_][A-Za-z0-9_-]*|"(?:[^"\\]|\\.)*")'
KEYED = re.compile(rf"^  (?:<file>|{_PART}(?:\.{_PART}|\[\d+\])*): \S")

scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=10)
           | st.sampled_from(["5s", "-1s", "0", "off", "1e999", "30MB", ":0", "0.0.0.0:80", "[::1]:0", "99999",
                              "queue", "kubernetes", "request_count", "~", "yes", "1_000"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(EXAMPLE))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(TOP) | st.text(max_size=6))
        if section in SECTIONS and draw(st.booleans()):
            if not isinstance(data.get(section), dict):
                data[section] = {}
            data[section][draw(st.sampled_from(SECTIONS[section]) | st.text(max_size=6))] = draw(values)
        elif draw(st.booleans()) and section in data:
            del data[section]
        else:
            data[section] = draw(values)
    text = yaml.safe_dump(data)
    if draw(st.integers(0, 4)) == 0:  # break the YAML text itself now and then
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([":", "- ", "\t", "{", "&a", "*a", "!!python/object:os.system ",
                                                 "\n  ", "'", "\x00", "%YAML 9\n"])) + text[at:]
    return text


def run(*argv: str) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, err.getvalue() + out.getvalue()


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_any_invalid_config_file_exits_2_naming_a_key_never_a_traceback(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            load_config(path, environ={})
        except ConfigError:
            invalid = True
        else:
            invalid = False
        code, output = run("check", str(path))
        assert "Traceback" not in output
        if not invalid:
            assert code in (0, 2), output
            return
        assert code == 2, output
        for command in ("check", "serve"):  # serve stops at validation: nothing is started
            code, output = run(command, str(path))
            assert code == 2 and "Traceback" not in output, output
            lines = output.replace(str(path), "<file>").splitlines()
            assert lines[0] == "lbproxy: <file> is not a valid config:", output
            assert lines[1:] and all(KEYED.match(line) for line in lines[1:]), output
