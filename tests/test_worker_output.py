"""A worker's output in lbproxy's log: its tracebacks at warning, everything else at info."""

from __future__ import annotations

import logging

from lbproxy.backends.output import OutputLevels

W, N = logging.WARNING, logging.INFO  # warning, normal


def levels(text: str) -> list[int]:
    out = OutputLevels()
    return [out.level(line) for line in text.splitlines()]


def test_a_traceback_and_its_exception_line_are_warnings_and_what_follows_is_info():
    text = """INFO:     Started server process [1]
Traceback (most recent call last):
  File "worker.py", line 3, in <module>
    load()
ValueError: no model at /models/x
INFO:     shutting down"""
    assert levels(text) == [N, W, W, W, W, N]


def test_chained_tracebacks_stay_warnings_throughout():
    text = """Traceback (most recent call last):
  File "a.py", line 1, in <module>
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "a.py", line 3, in <module>
RuntimeError: boom
ready"""
    assert levels(text) == [W, W, W, N, W, W, W, W, W, N]


def test_ordinary_stderr_lines_are_info():
    assert levels("WARNING: something the worker says\nerror in config? no\n") == [N, N]
