"""The worker of the ``ws_echo`` scenario: a picows WebSocket echo server that honours lbproxy's worker contract.

``PORT`` (echo on every path, any subprotocol or extension ignored), ``GET /ping`` -> 200 (on ``PORT_HEALTH``
too when it differs). One process, one thread, uvloop when installed.

Why picows: the worker shares the proxies' core, like the HTTP scenarios' nginx worker, so it must cost little
per message for a proxy's own cost to show. picows parses and unmasks frames in Cython: about 9 µs of CPU per
1 KiB echo here, against ~15 µs for a hand-written asyncio protocol and several times that for aiohttp's
WebSocket server (the example worker, which the WebSocket memory scenario keeps). nginx cannot echo.

    PORT=8081 python bench/ws_echo_worker.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif frame.msg_type != WSMsgType.PONG:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


def route(request: WSUpgradeRequest) -> Echo | WSUpgradeResponseWithListener:
    if request.path.startswith(b"/ping") and (request.headers.get("upgrade") or "").lower() != "websocket":
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
    return Echo()


async def serve(port: int, health_port: int) -> None:
    servers = [await ws_create_server(route, "127.0.0.1", port, backlog=4096)]
    if health_port != port:
        servers.append(await ws_create_server(route, "127.0.0.1", health_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ws echo worker (picows): port {port}, health port {health_port}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> int:
    port = int(os.environ["PORT"])
    health = int(os.environ.get("PORT_HEALTH") or port)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, health))
    else:
        uvloop.run(serve(port, health))
    return 0


if __name__ == "__main__":
    sys.exit(main())
