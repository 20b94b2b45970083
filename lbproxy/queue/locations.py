"""Where an endpoint's jobs are kept: the ``queue.store`` URL, or the default file in the data directory (pure).

Two kinds of store: ``sqlite:`` (one lbproxy process) and ``postgresql:`` (several replicas). A PostgreSQL URL
may hold a password: ``shown()`` is the only form of it that goes to a log line, ``/status`` or an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from lbproxy.paths import endpoint_file

POSTGRES_SCHEMES = ("postgresql", "postgres")
StoreKind = Literal["sqlite", "postgresql"]


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path.db`` or ``sqlite:relative.db`` -> a filesystem path. Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError("must start with sqlite:")
    path = unquote(parts.path) if parts.netloc in ("", "localhost") else ""
    if not path:
        raise ValueError("names no file (use sqlite:///absolute/path.db)")
    return path


def store_kind(url: str | None) -> StoreKind:
    """Which store a ``queue.store`` value names. Raises ValueError, never echoing the URL (it may hold a
    password)."""
    if url is None:
        return "sqlite"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        sqlite_path(url)
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            raise ValueError("is not a valid postgresql:// URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")\
                from None
        if not parts.hostname:
            raise ValueError("names no host (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")
        if not parts.path.strip("/"):
            raise ValueError("names no database (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")
        return "postgresql"
    raise ValueError("must be sqlite:///PATH.db or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")


def shown(url: str | None) -> str:
    """The store URL as lbproxy shows it: a password is replaced by ``***`` (the query, which may hold one as
    ``password=``, is left out)."""
    if url is None:
        return "(default)"
    parts = urlsplit(url)
    if parts.scheme.lower() not in POSTGRES_SCHEMES:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    if len(netloc) == 2:
        user = netloc[0].split(":", 1)[0]
        host = f"{user}:***@{netloc[1]}" if ":" in netloc[0] else f"{user}@{netloc[1]}"
    else:
        host = netloc[0]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def store_path(name: str, store: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The SQLite file of endpoint ``name``: ``queue.store``, else ``<data dir>/<name>.queue.db``."""
    return Path(sqlite_path(store)) if store else endpoint_file(name, "queue.db", environ)
