"""The access log: one line per request on the ``lbproxy.access`` logger (``log.access: true``), read by people
and by ``lbproxy simulate`` (a trace of arrival and service times). Pure: it only formats."""

from __future__ import annotations

from typing import Any

FIELDS = ("method", "path", "status", "worker", "wait_s", "duration_s", "bytes", "request_id")


def entry(method: bytes, url: bytes, status: int, worker: bytes, wait: float, duration: float, size: int,
          rid: bytes) -> tuple[str, dict[str, Any]]:
    """The text line and the fields (for ``log.format: json``) of one request. The path is logged without its
    query, which often carries tokens; ``wait_s`` is the time in lbproxy's queue, ``duration_s`` the whole
    time from the request head to the end of the response (so service time = duration - wait)."""
    path = url.split(b"?", 1)[0].decode("latin-1") or "-"  # none: a head too broken to read
    fields = {
        "method": method.decode("latin-1") or "-", "path": path, "status": status,
        "worker": worker.decode("latin-1") or None, "wait_s": round(wait, 6), "duration_s": round(duration, 6),
        "bytes": size, "request_id": rid.decode("latin-1"),
    }
    text = (f'{fields["method"]} {path} {status} worker={fields["worker"] or "-"} wait={wait:.3f}s '
            f'duration={duration:.3f}s bytes={size} request_id={fields["request_id"]}')
    return text, fields
