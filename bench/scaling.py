"""Endpoint-level figures from one ``lbproxy serve`` run with the example echo worker (local backend).

Prints JSON: the first request's time from zero workers (a cold start), the mean time of sequential warm
requests, and how long six concurrent 1 s requests take with concurrency 1 and max 3 (they need 3 workers).
Run from the repository root: ``.venv/bin/python bench/scaling.py``. A figure, not a test: nothing asserts it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(directory: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = {
        "name": "bench", "listen": listen, "admin": admin,
        "workers": {"max": 3, "concurrency": 1}, "scaling": {"queue_delay": "0s"}, "timeouts": {"idle": "30s"},
        "worker": {"command": [sys.executable, "examples/workers/echo.py"]},
    }
    path = directory / "scaling.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "lbproxy", "serve", str(path)], stderr=subprocess.DEVNULL)
    return proc, f"http://{listen}", f"http://{admin}"


async def measure(url: str, admin: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=30) as c:
        deadline = time.monotonic() + 20
        while True:
            try:
                await c.get(admin + "/healthz")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        t = time.monotonic()
        await c.get(url + "/echo")
        cold = time.monotonic() - t
        n = 200
        t = time.monotonic()
        for _ in range(n):
            await c.get(url + "/echo")
        warm = (time.monotonic() - t) / n
        t = time.monotonic()
        rs = await asyncio.gather(*(c.get(url + "/sleep?s=1") for _ in range(6)))
        burst = time.monotonic() - t
    return {
        "cold_start_first_request_s": round(cold, 3),
        "warm_request_ms": round(warm * 1000, 2),
        "burst_6x1s_concurrency1_max3_s": round(burst, 2),
        "workers_used": len({r.headers["x-lbproxy-worker-id"] for r in rs}),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        proc, url, admin = start(Path(directory))
        try:
            print(json.dumps(asyncio.run(measure(url, admin))))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
