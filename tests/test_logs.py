"""lbproxy's log lines (lbproxy.logs): logging's default text form, the JSON form, and access lines batched per
event-loop turn without reordering or losing any."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from lbproxy import logs
from lbproxy.proxy.access import entry

FIELDS = entry(b"GET", b"/echo?token=x", 200, b"w-1", 0.25, 1.5, 12, b"rid-1")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """lbproxy's handler writing into a string; the root logger as it was afterwards."""
    root = logging.getLogger()
    before, level = root.handlers[:], root.level
    logs.setup("info", "echo")
    assert logs._handler is not None
    out = io.StringIO()
    logs._handler.stream = out
    yield out
    logs._handler = None
    root.handlers[:] = before
    root.setLevel(level)


def alone() -> None:
    """lbproxy's handler alone on the root logger, as in ``lbproxy serve``: pytest's capture handlers (added
    for the test's call, after the fixture) would send every access line through logging."""
    logging.getLogger().handlers[:] = [logs._handler]


def test_text_lines_are_logging_s_default_form_which_lbproxy_simulate_reads():
    reference = logging.Formatter("%(asctime)s %(levelname)-7s echo %(name)s: %(message)s")
    for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.0005):
        record = logging.LogRecord("lbproxy.access", logging.INFO, "", 0, FIELDS[0], (), None)
        record.created, record.msecs = created, int((created % 1) * 1000)
        assert logs.TextFormatter("echo").format(record) == reference.format(record)


def test_tracebacks_and_stacks_follow_the_line_as_logging_puts_them():
    reference = logging.Formatter("%(asctime)s %(levelname)-7s echo %(name)s: %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    for message in ("failed", "failed\n"):
        record = logging.LogRecord("lbproxy", logging.ERROR, "", 0, message, (), exc_info, sinfo="Stack (most recent)")
        assert logs.TextFormatter("echo").format(record) == reference.format(record)
    rebuilt = logging.makeLogRecord({"msg": "from another process", "exc_text": "Traceback: ..."})
    assert logs.TextFormatter("echo").format(rebuilt) == reference.format(rebuilt)


def test_a_json_line_has_the_access_fields_and_an_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("lbproxy", logging.ERROR, "", 0, "failed %s", ("x",), sys.exc_info())
    record.access = FIELDS[1]  # type: ignore[attr-defined]
    doc = json.loads(logs.JsonFormatter("echo").format(record))
    assert doc["message"] == "failed x" and doc["level"] == "error" and doc["endpoint"] == "echo"
    assert doc["path"] == "/echo" and doc["request_id"] == "rid-1" and "ValueError: boom" in doc["exception"]


async def test_access_lines_wait_for_the_end_of_the_loop_s_turn_then_go_out_in_order(stream):
    alone()
    logs.access("first", {})
    logs.access("second", {})
    assert stream.getvalue() == ""  # still this turn of the loop
    logging.getLogger("lbproxy").warning("an ordinary line")  # it must not overtake them
    logs.access("third", {})
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["first", "second", "an ordinary line", "third"]
    assert " INFO    echo lbproxy.access: first" in lines[0]


async def test_a_direct_line_equals_what_logging_writes(stream):
    alone()
    logs.access(*FIELDS)
    await asyncio.sleep(0)
    logging.getLogger("lbproxy.access").info(FIELDS[0])
    direct, through_logging = stream.getvalue().splitlines()
    assert direct.split(" ", 2)[2] == through_logging.split(" ", 2)[2]  # the same but for the time


async def test_json_access_lines_carry_their_fields(stream):
    alone()
    logs.set_format("json", "echo")
    logs.access(*FIELDS)
    await asyncio.sleep(0)
    doc = json.loads(stream.getvalue())
    assert doc["logger"] == "lbproxy.access" and doc["status"] == 200 and doc["worker"] == "w-1"


async def test_another_handler_gets_access_records_through_logging(stream):
    alone()
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(listener)
    logs.access(*FIELDS)
    assert [r.access["path"] for r in seen] == ["/echo"]  # type: ignore[attr-defined]
    assert "lbproxy.access: GET /echo 200" in stream.getvalue()  # written at once, by logging


async def test_lines_pending_at_exit_are_written_by_logging_s_shutdown_flush(stream):
    alone()
    logs.access("last", {})
    assert logs._handler is not None
    logs._handler.flush()  # what logging.shutdown() does at exit
    assert stream.getvalue().endswith("lbproxy.access: last\n")


def test_without_an_event_loop_a_line_is_written_at_once(stream):
    alone()
    logs.access("now", {})
    assert stream.getvalue().endswith("lbproxy.access: now\n")


async def test_a_filter_on_the_access_logger_still_decides(stream):
    alone()
    access = logging.getLogger("lbproxy.access")
    access.addFilter(lambda record: "secret" not in record.getMessage())
    try:
        logs.access("GET /secret 200", {})
        logs.access("GET /public 200", {})
        await asyncio.sleep(0)
    finally:
        access.filters.clear()
    assert "/secret" not in stream.getvalue() and "lbproxy.access: GET /public 200" in stream.getvalue()


def test_a_loop_closed_before_its_turn_leaves_no_line_pending(stream):
    alone()

    async def log_then_stop() -> None:
        logs.access("a", {})
        asyncio.get_running_loop().stop()
    loop = asyncio.new_event_loop()
    task = loop.create_task(log_then_stop())
    loop.run_forever()  # stopped before the turn that writes the line
    assert task.done()
    loop.close()
    logs.access("b", {})  # no loop runs now: written at once, with the one left waiting
    assert [line.rsplit(": ", 1)[1] for line in stream.getvalue().splitlines()] == ["a", "b"]
