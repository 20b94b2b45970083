"""Where lbproxy keeps files of its own on this machine: one data directory, one file family per endpoint.

``LBPROXY_DATA_DIR`` when set (tests point it at a temporary directory), else ``$XDG_DATA_HOME/lbproxy``
(``~/.local/share/lbproxy``), as the XDG base directory spec places per-user application data. Files in it are
named after the endpoint (``<name>.<what>``), so several endpoints on one machine never share a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATA_DIR_ENV = "LBPROXY_DATA_DIR"


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory for lbproxy's files (not created here: a writer creates it when it first writes)."""
    env = os.environ if environ is None else environ
    explicit = env.get(DATA_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path(env.get("HOME", "~")).expanduser() / ".local" / "share"
    return base / "lbproxy"


def endpoint_file(name: str, what: str, environ: Mapping[str, str] | None = None) -> Path:
    """``<data dir>/<endpoint name>.<what>``, e.g. ``echo.queue.db`` or ``echo.workers.json``."""
    return data_dir(environ) / f"{name}.{what}"
