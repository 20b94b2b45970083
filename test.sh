#!/usr/bin/env bash
# Install lbproxy with its test extra into .venv and run the whole test suite (slow scenario tests included).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -m ruff check lbproxy tests examples
.venv/bin/python -m mypy lbproxy
.venv/bin/lint-imports  # the layers (.importlinter): pure decisions, one kubernetes wrapper, the request path
exec .venv/bin/python -m pytest -q "$@"
