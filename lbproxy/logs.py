"""lbproxy's log: one line per event on stderr, as text or (``log.format: json``) one JSON object per line.

Access lines (``log.access: true``, one per request) skip logging's machinery when nothing but this module's
handler would see them (``access``): formatted by the same formatter, they are written once per event-loop
turn. Through ``Logger.info`` (caller lookup, a record, the handler's lock, a write and a flush) a line cost
about 15 us, a third of what lbproxy spends on a small request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

ACCESS_LOGGER = "lbproxy.access"

_handler: _Stderr | None = None
_access = logging.getLogger(ACCESS_LOGGER)
_lbproxy = logging.getLogger("lbproxy")
_root = logging.getLogger()


class TextFormatter(logging.Formatter):
    """``2026-12-01 16:50:00,123 INFO    <endpoint> <logger>: <message>`` (logging's default time format)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._stamp = (-1, "")  # (unix second, its local time text): one tuple, so threads never see half of it

    def line(self, created: float, level: str, name: str, message: str, fields: dict[str, Any] | None) -> str:
        second = int(created)
        cached, stamp = self._stamp
        if cached != second:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = (second, stamp)
        return f"{stamp},{int((created - second) * 1000):03d} {level:<7} {self.endpoint} {name}: {message}"

    def format(self, record: logging.LogRecord) -> str:
        text = self.line(record.created, record.levelname, record.name, record.getMessage(), None)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class JsonFormatter(TextFormatter):
    """``{"time", "ts", "level", "endpoint", "logger", "message", ...}``; an access line adds its fields."""

    def line(self, created: float, level: str, name: str, message: str, fields: dict[str, Any] | None) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int((created % 1) * 1000):03d}Z",
            "ts": round(created, 6), "level": level.lower(), "endpoint": self.endpoint, "logger": name,
            "message": message,
        }
        if fields:
            out.update(fields)
        return json.dumps(out, default=str)

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None)
        extra = dict(fields) if isinstance(fields, dict) else {}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), extra)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler. Access lines wait in ``_pending`` until the end of the event loop's turn (or the next
    other line, which must not overtake them), then go out in one write."""

    formatter: TextFormatter

    def __init__(self, formatter: TextFormatter) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(formatter)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.write_pending()
        super().emit(record)

    def add(self, line: str) -> None:
        with self.lock:  # type: ignore[union-attr]  # (a thread's log line may be writing the batch)
            pending = self._pending
            pending.append(line)
            if len(pending) > 1:
                return
            try:
                asyncio.get_running_loop().call_soon(self.write_pending)
            except RuntimeError:  # no event loop: nothing to wait for
                self.write_pending()

    def write_pending(self) -> None:
        if not self._pending:
            return
        with self.lock:  # type: ignore[union-attr]
            lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                super().flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": lines[0]}))

    def flush(self) -> None:
        """Also at exit (``logging.shutdown``): no access line is left behind."""
        self.write_pending()
        super().flush()


def _formatter(fmt: str, endpoint: str) -> TextFormatter:
    return JsonFormatter(endpoint) if fmt == "json" else TextFormatter(endpoint)


def setup(level: str, endpoint: str, fmt: str = "text") -> None:
    """Log to stderr at ``level``; aiohttp's own access log stays quiet (lbproxy has its own)."""
    global _handler
    if _handler is not None:
        _handler.write_pending()
        _root.removeHandler(_handler)
    _handler = _Stderr(_formatter(fmt, endpoint))
    _root.addHandler(_handler)
    _root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_format(fmt: str, endpoint: str) -> None:
    """A reload changed ``log.format``: the lines from now on take it."""
    if _handler is not None:
        _handler.write_pending()
        _handler.setFormatter(_formatter(fmt, endpoint))


def access(text: str, fields: dict[str, Any]) -> None:
    """One access line. Straight to the handler's batch when it alone would see the line (the usual case);
    through ``logging`` when something else listens (a handler an embedding program or a test added)."""
    handler = _handler
    if handler is not None and not _access.handlers and not _lbproxy.handlers and len(_root.handlers) == 1 \
            and _root.handlers[0] is handler and _access.isEnabledFor(logging.INFO):
        handler.add(handler.formatter.line(time.time(), "INFO", ACCESS_LOGGER, text, fields))
    else:
        _access.info(text, extra={"access": fields})
