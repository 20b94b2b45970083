"""Where an endpoint's jobs are kept: the ``queue.store`` URL, or the default file in the data directory (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lbproxy.paths import endpoint_file


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path.db`` or ``sqlite:relative.db`` -> a filesystem path. Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError("must start with sqlite:")
    path = unquote(parts.path) if parts.netloc in ("", "localhost") else ""
    if not path:
        raise ValueError("names no file (use sqlite:///absolute/path.db)")
    return path


def store_path(name: str, store: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The SQLite file of endpoint ``name``: ``queue.store``, else ``<data dir>/<name>.queue.db``."""
    return Path(sqlite_path(store)) if store else endpoint_file(name, "queue.db", environ)
