"""Layers: the decision modules stay pure (no network, process or Kubernetes imports)."""

from __future__ import annotations

import ast

import pytest

from .conftest import ROOT

PURE = ["policy", "routing", "config", "config_values", "config_errors", "config_fields", "config_docs", "durations",
        "catalog", "checks"]
FORBIDDEN = {"aiohttp", "asyncio", "subprocess", "socket", "kubernetes", "httpx", "signal"}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module):
    tree = ast.parse((ROOT / "lbproxy" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"lbproxy.{module} imports {imported & FORBIDDEN}"
