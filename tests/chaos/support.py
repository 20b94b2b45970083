"""Helpers shared by the chaos tests: raw sockets, worker-side counters, process and socket accounting."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

FAULTY = Path(__file__).resolve().parent / "workers" / "faulty.py"


def faulty_worker(chaos_dir: Path, **env: str) -> dict[str, Any]:
    """``worker:`` settings that run the stdlib fault-injecting worker, driven through ``chaos_dir``."""
    return {"command": [sys.executable, str(FAULTY)], "env": {"CHAOS_DIR": str(chaos_dir), **env}}


def host_port(url_or_address: str) -> tuple[str, int]:
    host, _, port = url_or_address.removeprefix("http://").rpartition(":")
    return host, int(port)


async def raw_exchange(address: str, data: bytes, timeout: float = 10.0, head_only: bool = False) -> bytes:
    """Send ``data`` on a fresh connection, then read until the server closes it (or ``timeout``).

    ``head_only``: return as soon as a response's status line and headers are in (keep-alive answers).
    """
    host, port = host_port(address)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if head_only and b"\r\n\r\n" in b"".join(chunks):
                    break
        return b"".join(chunks)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(raw: bytes) -> int | None:
    """The status code of the first response in ``raw``, None when the server closed without one."""
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


async def worker_stats(client: httpx.AsyncClient, worker: dict[str, Any]) -> dict[str, Any]:
    """The echo worker's own counters, asked on its own address: what really reached it."""
    data: dict[str, Any] = (await client.get(f"http://{worker['address']}/stats")).json()
    return data


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


async def timed_get(client: httpx.AsyncClient, url: str) -> float:
    started = time.monotonic()
    r = await client.get(url)
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def tcp_state(local_port: int) -> str | None:
    """The kernel's state of this process's loopback TCP socket bound to ``local_port`` (None: gone)."""
    states = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE",
              "08": "CLOSE_WAIT", "09": "LAST_ACK"}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port:
            return states.get(fields[3], fields[3])
    return None
