"""Every file that lists settings is generated from the config model, and the committed copies are current.

README's settings table and GPU catalog, the chart's values.schema.json and the lbproxy part of its
values.yaml come from `python -m lbproxy.config_docs --write`. These tests fail when a field was added or
changed without regenerating (naming the command), when a description is missing, and when a pattern the
schema uses disagrees with the parser it stands for.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import jsonschema
import pytest
import yaml
from pydantic import BeforeValidator, PlainValidator, WithJsonSchema, WrapValidator
from pydantic_core import PydanticUndefined

from lbproxy import config_docs
from lbproxy.catalog import BUILTIN_CATALOG
from lbproxy.config import Config, ConfigError, parse_config
from lbproxy.config_fields import settings

from .conftest import ROOT


def nested(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def accepted_by_lbproxy(key: str, value: Any) -> bool:
    data = {"name": "x", **nested(key, value)}
    try:
        parse_config(data, environ={})
    except ConfigError:
        return False
    return True


def readme_table(name: str) -> list[list[str]]:
    """The rows of a generated README table, cells stripped."""
    text = (ROOT / "README.md").read_text()
    region = text.split(f"BEGIN generated: {name} ", 1)[1].split(f"END generated: {name}", 1)[0]
    rows = [line for line in region.splitlines() if line.startswith("| ")][2:]  # after the header and | --- |
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


# ------------------------------------------------------------------------------------- committed == generated


@pytest.mark.parametrize("path", config_docs.GENERATED, ids=str)
def test_committed_file_is_what_the_model_generates(path: Path) -> None:
    generated = config_docs.generate(ROOT)[path]
    assert (ROOT / path).read_text() == generated, f"{path} is stale: run `{config_docs.COMMAND}`"


def test_check_names_the_stale_file_and_the_command_and_write_fixes_it(tmp_path: Path) -> None:
    for path in (config_docs.README, config_docs.VALUES, config_docs.FRAGMENT):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    readme = tmp_path / config_docs.README
    readme.write_text(readme.read_text().replace("| `timeouts.idle` | `5s` |", "| `timeouts.idle` | `9s` |"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lbproxy.config_docs", *args, "--root", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)

    check = run("--check")
    assert check.returncode == 1
    assert "README.md is stale: run `python -m lbproxy.config_docs --write`" in check.stderr
    assert "charts/lbproxy/values.schema.json is stale" in check.stderr  # not there at all
    assert "values.yaml" not in check.stderr
    assert run("--write").returncode == 0
    assert run("--check").returncode == 0
    assert "| `timeouts.idle` | `5s` |" in readme.read_text()


def test_missing_markers_are_named_with_the_lines_to_add(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text().replace("BEGIN generated: gpu-catalog", "BEGIN gpu-catalog")
    with pytest.raises(ValueError, match=r"README.md: needs one pair of markers .*'gpu-catalog'"):
        config_docs.render_readme(text)


# ------------------------------------------------------------------------------------------- descriptions


def test_every_setting_and_section_has_a_description() -> None:
    missing = [s.key for s in settings(Config) if not s.field.description]
    assert missing == [], f"write a docstring under these fields in lbproxy/config.py: {missing}"


def test_readme_rows_say_what_the_model_says() -> None:
    rows = {key.strip("`"): (default, meaning) for key, default, meaning in readme_table("settings")}
    leaves = [s for s in settings(Config) if s.section is None]
    assert list(rows) == [s.key for s in leaves]
    for setting in leaves:
        meaning = rows[setting.key][1]
        description = " ".join((setting.field.description or "").split())
        assert meaning.replace("\\|", "|").lower().endswith(description.lower()), setting.key
        assert meaning.startswith(f"{setting.backend}: ") == (setting.backend is not None), setting.key
    assert rows["name"][0] == "required"
    assert rows["timeouts.idle"][0] == "`5s`" and rows["timeouts.wait"][0] == "`2m`"
    assert rows["timeouts.execution"][0] == "`10m`" and rows["limits.max_body_size"][0] == "`30MB`"
    assert rows["listen"][0] == "`0.0.0.0:8080`" and rows["admin"][0] == "`127.0.0.1:9090`"
    assert rows["placement.model"][0] == "none" and rows["gpu.catalog"][0] == "`{}`"
    assert rows["backend.type"][1].startswith("`local`: worker processes")  # not "not implemented yet"
    assert rows["gpu.categories"][1].startswith("kubernetes: ")
    assert rows["worker.command"][1].startswith("local: ")


# The shown default of worker.args, `[]`, is what no key means: an empty argv written out is refused.
_UNWRITABLE = {"worker.args"}


@pytest.mark.parametrize("setting", [s for s in settings(Config) if s.section is None and not s.field.is_required()],
                         ids=lambda s: s.key)
def test_each_shown_default_reads_back_as_the_models_default(setting: Any) -> None:
    """`5s`, `30MB`, `0.0.0.0:8080`: what the docs show is what a file may write to get the default."""
    shown = config_docs.shown_default(setting, config_docs.config_schema())
    if setting.key in _UNWRITABLE:
        return
    value = None if shown is None else yaml.safe_load(shown)
    config = parse_config({"name": "x", **nested(setting.key, value)}, environ={})
    got: Any = config
    for part in setting.key.split("."):
        got = getattr(got, part)
    default = parse_config({"name": "x"}, environ={})
    want: Any = default
    for part in setting.key.split("."):
        want = getattr(want, part)
    assert got == want


def test_kubernetes_only_sentence_names_whole_sections_once() -> None:
    text = (ROOT / "README.md").read_text()
    sentence = next(line for line in text.splitlines() if line.startswith("With the local backend, `serve` refuses"))
    assert "`gpu.*`, `placement.*`, `expose_ports`, `worker.image`" in sentence
    assert "`gpu.categories`" not in sentence and "`backend.node_labels`" in sentence
    assert "`backend.node_labels.zone`" not in sentence and "`worker.command`" not in sentence


def test_gpu_catalog_table_is_the_built_in_catalog() -> None:
    rows = readme_table("gpu-catalog")
    assert [row[0].strip("`") for row in rows] == list(BUILTIN_CATALOG)
    h100 = next(row for row in rows if row[0] == "`80gb-pro`")
    assert h100[1:5] == ["H100", "80 GB", "0.00116", "0.00093"]


# ---------------------------------------------------------------------------- schema patterns = the parsers


def _unwritten(annotation: Any, where: str) -> Iterator[str]:
    """Before-validators in `annotation` (nested types included) that do not say what they accept."""
    if get_origin(annotation) is Annotated:
        inner, *metadata = get_args(annotation)
        yield from _unwritten_metadata(metadata, where)
        yield from _unwritten(inner, where)
    else:
        for arg in get_args(annotation):
            yield from _unwritten(arg, where)


def _unwritten_metadata(metadata: list[Any], where: str) -> Iterator[str]:
    if any(isinstance(item, WithJsonSchema) for item in metadata):
        return  # the whole annotation says how it is written (addresses, ports)
    for item in metadata:
        if isinstance(item, BeforeValidator | PlainValidator | WrapValidator) and (
                item.json_schema_input_type is PydanticUndefined):
            yield f"{where}: {item.func.__name__}"


def test_every_before_validator_says_how_its_value_is_written() -> None:
    """A before-validator takes what the file says (`5s`) and stores something else (5.0): pydantic's schema
    then describes the stored type, and the chart would refuse `5s`. Use config_values' aliases (_Duration,
    _duration(minimum), _ByteSize, _CommandField, ...) or give json_schema_input_type."""
    found: list[str] = []
    models = {Config, *(s.section for s in settings(Config) if s.section)}
    for model in models:
        for name, field in model.model_fields.items():
            found += _unwritten_metadata(field.metadata, f"{model.__name__}.{name}")
            found += _unwritten(field.annotation, f"{model.__name__}.{name}")
        for name, decorator in model.__pydantic_decorators__.field_validators.items():
            if decorator.info.mode != "after" and decorator.info.json_schema_input_type is PydanticUndefined:
                found.append(f"{model.__name__}.{name} (field_validator mode={decorator.info.mode!r})")
    assert found == []


# (key, values): each is checked against the model's JSON schema for the key and against lbproxy itself.
AGREEMENT = [
    ("timeouts.idle", ["5s", "1h30m", " 2M ", "500ms", ".5s", "5.", "30", 30, 1.5, "1.5h", "2d", "0",
                       "5 s", "-5s", "5x", "", "s", "ms", "5s5", True, -1, None, [5]]),
    ("timeouts.wait", ["1s", 0, "1ms", 0.001]),
    ("timeouts.ttl", [10, "10s", 9.5]),
    ("timeouts.execution", ["off", "OFF", " false ", "none", "disabled", 0, False, None, "7d", 5, 604800, 4,
                            604801, "forever", True, "10m"]),
    ("limits.max_body_size", ["30MB", "512KiB", "1gib", " 2 KB ", "1.5MB", 1024, ".5kb", "1", 0, -1, "30 parsecs",
                              "MB", "", "1e6", True, 1.5]),
    ("listen", ["0.0.0.0:8080", "[::1]:8080", ":8080", 8080, 0, "localhost:80", "8080", "a b:80", -1, 70000,
                "host:port", "[::1]8080", "::1:8080"]),
    ("expose_ports", [["8888/http"], ["5432/TCP"], [" 80/http "], ["8000/udp"], ["http"], [8000], ["80/http/x"]]),
    ("gpu.cuda_versions", [["12.4"], [12], ["12"], ["1.2.3"], ["twelve"], ["1234"]]),
    ("worker.env", [{"A": "1"}, {"A_1": 2, "B": True}, {"_x": ""}, {"1A": "x"}, {"A-B": "x"}, {"A": None},
                    {"A": "x\x00y"}, {"A": [1]}]),
    ("worker.health_path", ["/ping", "/", "/a/b?x=1", "ping", "/a b", ""]),
    ("worker.command", ["python3 w.py", ["python3", "w.py", 1], None, "", "   ", [], [True], [["x"]]]),
    ("auth.api_keys", [["k1"], ["k 1"], [""], ["ключ"]]),
    ("name", ["demo", "a" * 63, "a" * 64, "Demo", "-a", ""]),
    ("backend.namespace", ["gpu", None, "GPU"]),
    ("workers.max", [1, 1_000_000, 0, 1_000_001, 2.5]),
]
# Where the schema is knowingly more lenient or stricter than lbproxy: a duration or size written as a string
# cannot be bounded by a pattern (lbproxy refuses it at start, naming the key), and a number written as a
# string is refused by the schema although pydantic would read it ("3" for 3): write numbers as numbers.
LENIENT = [("timeouts.wait", "0s"), ("timeouts.idle", "400d"), ("timeouts.execution", "1s"), ("timeouts.ttl", "5s"),
           ("listen", ":99999"), ("expose_ports", ["0/http"])]
STRICTER = [("workers.max", "3"), ("worker.port", "8000")]


def _schema_node(key: str) -> dict[str, Any]:
    node: Any = config_docs.config_schema()
    for part in key.split("."):
        node = node["properties"][part]
    return dict(node)


@pytest.mark.parametrize("key, values", AGREEMENT, ids=[key for key, _ in AGREEMENT])
def test_schema_accepts_exactly_what_lbproxy_accepts(key: str, values: list[Any]) -> None:
    """The chart's schema is built from these patterns and bounds: it refuses early what lbproxy would refuse,
    and never refuses what lbproxy accepts. (Strings the schema cannot bound, `400d`, are left to lbproxy.)"""
    validator = jsonschema.Draft7Validator(_schema_node(key))
    disagree = [(value, validator.is_valid(value)) for value in values
                if validator.is_valid(value) != accepted_by_lbproxy(key, value)]
    assert disagree == [], f"{key}: (value, schema's verdict) where lbproxy disagrees"


def test_the_schema_leaves_bounds_of_written_strings_to_lbproxy_and_wants_numbers_as_numbers() -> None:
    for key, value in LENIENT:
        assert jsonschema.Draft7Validator(_schema_node(key)).is_valid(value), (key, value)
        assert not accepted_by_lbproxy(key, value), (key, value)
    for key, value in STRICTER:
        assert not jsonschema.Draft7Validator(_schema_node(key)).is_valid(value), (key, value)
        assert accepted_by_lbproxy(key, value), (key, value)


def test_a_built_in_gpu_category_may_be_overridden_in_part_and_a_new_one_must_be_whole() -> None:
    validator = jsonschema.Draft7Validator(_schema_node("gpu.catalog"))
    partial = {"flex_price_per_s": 0.001}
    whole = {"types": ["X1"], "products": ["NVIDIA-X1"], "memory_gb": 24, "flex_price_per_s": 0.1,
             "active_price_per_s": 0.1}
    for catalog, ok in (({"80gb": partial}, True), ({"my-gpu": whole}, True), ({"my-gpu": partial}, False),
                        ({"My_GPU": whole}, False), ({"80gb": {"memory": 80}}, False)):
        assert validator.is_valid(catalog) is ok, catalog
        assert accepted_by_lbproxy("gpu.catalog", catalog) is ok, catalog
