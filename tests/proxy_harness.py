"""The request path in-process, on mock transports (as uvicorn tests its protocols): a real ClientConnection,
real Exchanges, a real WorkerPool and real settings, with the client's socket replaced by a recorder.

For the framing and admission cases that need no worker; those that do use ``lbproxy serve`` and real sockets.
"""

from __future__ import annotations

from typing import Any

from lbproxy.config import parse_config
from lbproxy.metrics import Metrics
from lbproxy.pool import WorkerPool
from lbproxy.proxy.connection import ClientConnection
from lbproxy.proxy.settings import ProxySettings
from lbproxy.proxy.shared import Shared


class MockTransport:
    """Just enough of an asyncio transport to drive a ClientConnection: it records what is written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        self.out += b"".join(parts)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def connection(**settings: Any) -> tuple[ClientConnection, MockTransport, Shared]:
    """A client connection of an endpoint with these settings (config keys) and no worker."""
    config = parse_config({"name": "t", "worker": {"command": ["true"]}, **settings}, environ={})
    pool = WorkerPool(config.workers.concurrency, config.limits.max_queue, config.timeouts.wait)
    shared = Shared(pool, Metrics("t"), ProxySettings.from_config(config))
    conn = ClientConnection(shared)
    transport = MockTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, shared


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


def responses(data: bytes, head_requests: int = 0) -> list[Response]:
    """The responses in what a connection wrote, parsed by llhttp; the first ``head_requests`` answer HEADs."""
    from httptools import HttpResponseParser

    out: list[Response] = []

    class Collect:
        def on_message_begin(self) -> None:
            out.append(Response())

        def on_header(self, name: bytes, value: bytes) -> None:
            out[-1].headers[name.decode().lower()] = value.decode()

        def on_headers_complete(self) -> bool | None:
            out[-1].status = parser.get_status_code()
            return None

        def on_body(self, body: bytes) -> None:
            out[-1].body += body

    rest = data
    while rest:
        parser = HttpResponseParser(Collect())
        if len(out) < head_requests:  # a HEAD's answer has a Content-Length and no body: feed only its head
            end = rest.index(b"\r\n\r\n") + 4
            parser.feed_data(rest[:end] + b"")
            rest = rest[end:]
            continue
        before = len(out)
        parser.feed_data(rest)
        if len(out) == before:
            break
        rest = b""  # one parser reads every keep-alive response that follows
    return out


async def settle(turns: int = 10) -> None:
    """Let callbacks the connection scheduled (the next pipelined request) run."""
    import asyncio

    for _ in range(turns):
        await asyncio.sleep(0)
