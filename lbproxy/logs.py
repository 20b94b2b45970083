"""lbproxy's log: one line per event on stderr, as text or (``log.format: json``) one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_handler: logging.Handler | None = None


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "endpoint", "logger", "message", ...}``; an access line adds its fields."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "ts": round(record.created, 6), "level": record.levelname.lower(), "endpoint": self.endpoint,
            "logger": record.name, "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _formatter(fmt: str, endpoint: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(endpoint)
    return logging.Formatter(f"%(asctime)s %(levelname)-7s {endpoint} %(name)s: %(message)s")


def setup(level: str, endpoint: str, fmt: str = "text") -> None:
    """Log to stderr at ``level``; aiohttp's own access log stays quiet (lbproxy has its own)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_formatter(fmt, endpoint))
    root.addHandler(_handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_format(fmt: str, endpoint: str) -> None:
    """A reload changed ``log.format``: the lines from now on take it."""
    if _handler is not None:
        _handler.setFormatter(_formatter(fmt, endpoint))
