"""The README's settings table and the config model agree: one source of truth for settings."""

from __future__ import annotations

import re

from pydantic import BaseModel

from lbproxy.config import Config

from .conftest import ROOT


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _model_keys(ann, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_readme_settings_table_lists_exactly_the_config_keys():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.M))
    assert documented == _model_keys(Config)


def test_docs_and_code_cite_only_documents_in_the_repository():
    """References point to README sections or docs/ pages, never to a design file that is not shipped."""
    shipped = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "lbproxy").rglob("*.py"),
               *(ROOT / "examples").rglob("*.py"), *(ROOT / "charts").rglob("*.*")]
    citing = [str(path.relative_to(ROOT)) for path in shipped if re.search(r"\bDESIGN\b", path.read_text())]
    assert citing == []
    assert not (ROOT / "DESIGN.md").exists()


def test_readme_quick_start_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "lbproxy serve examples/echo.yaml" in readme
    assert "./test.sh" in readme
    assert "./test.sh" in (ROOT / ".ci" / "run").read_text()
