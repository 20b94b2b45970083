"""A worker's output in lbproxy's log: each line at info, but a Python traceback (and the exception line that ends
it) at warning, so that a worker's crash stands out from its ordinary chatter on stderr."""

from __future__ import annotations

import logging

_START = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


class OutputLevels:
    """The log level of each line of one worker's output, in order (it remembers whether a traceback is open)."""

    __slots__ = ("_in_traceback",)

    def __init__(self) -> None:
        self._in_traceback = False

    def level(self, line: str) -> int:
        if line.startswith(_START) or line.startswith(_CHAINED):
            self._in_traceback = True
            return logging.WARNING
        if not self._in_traceback:
            return logging.INFO
        if line[:1].isspace() or not line:
            return logging.WARNING  # a frame, its source line, or the blank line between chained tracebacks
        self._in_traceback = False  # the exception line ends it
        return logging.WARNING
