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
from typing import Any, TypeGuard

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

    def line(self, created: float, msecs: int, level: str, name: str, message: str,
             fields: dict[str, Any] | None) -> str:
        second = int(created)
        cached, stamp = self._stamp
        if cached != second:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = (second, stamp)
        return f"{stamp},{msecs:03d} {level:<7} {self.endpoint} {name}: {message}"

    def format(self, record: logging.LogRecord) -> str:
        """As ``logging.Formatter.format``: the traceback (kept in ``exc_text``) and the stack after the line."""
        text = self.line(record.created, int(record.msecs), record.levelname, record.name, record.getMessage(),
                         None)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for tail in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if tail:
                text += tail if text.endswith("\n") else "\n" + tail
        return text


class JsonFormatter(TextFormatter):
    """``{"time", "ts", "level", "endpoint", "logger", "message", ...}``; an access line adds its fields."""

    def line(self, created: float, msecs: int, level: str, name: str, message: str,
             fields: dict[str, Any] | None) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z",
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
        return self.line(record.created, int(record.msecs), record.levelname, record.name, record.getMessage(),
                         extra)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler. Access lines wait in ``_pending`` until the end of the event loop's turn (or the next
    other line, which must not overtake them), then go out in one write."""

    formatter: TextFormatter

    def __init__(self, formatter: TextFormatter) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(formatter)
        self._pending: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop that will write the pending lines

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.write_pending()
        super().emit(record)

    def add(self, line: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing to wait for
            loop = None
        with self.lock:  # type: ignore[union-attr]  # (a thread's log line may be writing the batch)
            self._pending.append(line)
            if loop is None:
                self.write_pending()
            elif self._scheduled is not loop:  # (a loop closed before its turn came leaves no line behind)
                self._scheduled = loop
                loop.call_soon(self.write_pending)

    def write_pending(self) -> None:
        if not self._pending:
            return
        with self.lock:  # type: ignore[union-attr]
            lines, self._pending, self._scheduled = self._pending, [], None
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


def _direct(handler: _Stderr | None) -> TypeGuard[_Stderr]:
    """Would ``handler`` alone see an access record, unfiltered? (What ``logging`` would decide, in short.)"""
    return handler is not None and len(_root.handlers) == 1 and _root.handlers[0] is handler \
        and not (_access.handlers or _access.filters or _lbproxy.handlers or _lbproxy.filters or handler.filters) \
        and _access.propagate and _lbproxy.propagate and handler.level <= logging.INFO \
        and _access.isEnabledFor(logging.INFO)


def access(text: str, fields: dict[str, Any]) -> None:
    """One access line. Straight to the handler's batch when it alone would see the line (the usual case);
    through ``logging`` when something else listens or filters (an embedding program, a test)."""
    handler = _handler
    if _direct(handler):
        created = time.time()
        handler.add(handler.formatter.line(created, int((created - int(created)) * 1000), "INFO", ACCESS_LOGGER,
                                           text, fields))
    else:
        _access.info(text, extra={"access": fields})
