"""Auth (HTTP and WebSocket), key secrecy, and what the admin port shows and where it listens."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx
import pytest
import yaml

from lbproxy.auth import ApiKeys
from lbproxy.config import parse_config

from ..conftest import ECHO, ROOT, free_port, until
from .support import worker_stats

KEY = "k-Right-0123456789"
ENV_KEY = "k-from-env-9876"
SECRET = "hunter2-worker-secret"
BAD_AUTHORIZATIONS = [
    None, "", "Bearer", f"Basic {KEY}", KEY, f"Bearer {KEY[:-1]}", f"Bearer {KEY}x",
    f"Bearer x{KEY}", f"Bearer {KEY.upper()}", f"Token {KEY}", f"Bearer {KEY},{KEY}", f"Bearer {KEY} {KEY}",
]


def _ready(ws):
    return len(ws) == 1 and ws[0]["state"] == "ready"


@pytest.mark.slow
async def test_no_request_or_websocket_without_a_valid_key_reaches_a_worker(start_endpoint, client):
    ep = await start_endpoint(auth={"api_keys": [KEY]}, workers={"active": 1, "max": 1})
    [w] = await ep.wait_workers(_ready, "the active worker")
    for auth in BAD_AUTHORIZATIONS:
        headers = {} if auth is None else {"Authorization": auth}
        for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"):
            r = await client.request(method, ep.url + "/echo", headers=headers, content=b"x" * 10)
            assert r.status_code == 401, (method, auth, r.status_code)
            assert KEY not in r.text
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(ep.url + "/ws", headers=headers)
            assert exc.value.status == 401
    assert (await worker_stats(client, w))["requests"] == 0, "an unauthenticated request reached the worker"
    # The valid key works on both, and the worker never sees it (HTTP headers, WebSocket upgrade headers).
    r = await client.get(ep.url + "/echo", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and KEY not in r.text
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(ep.url + "/ws", headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send_str("headers")
            upgrade_headers = json.loads((await ws.receive()).data)
    assert "authorization" not in {k.lower() for k in upgrade_headers}, upgrade_headers
    assert KEY not in ep.log()


@pytest.mark.slow
async def test_forward_authorization_passes_the_header_on_http_and_websocket(start_endpoint, client):
    ep = await start_endpoint(auth={"api_keys": [KEY], "forward_authorization": True})
    r = await client.get(ep.url + "/echo", headers={"Authorization": f"Bearer {KEY}"})
    assert r.json()["headers"]["Authorization"] == f"Bearer {KEY}"
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(ep.url + "/ws", headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send_str("headers")
            assert json.loads((await ws.receive()).data)["Authorization"] == f"Bearer {KEY}"


@pytest.mark.slow
def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    """Every configured key goes through hmac.compare_digest, whether or not an earlier one matched."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ApiKeys((b"first-key", b"second-key", b"third-key"))
    for given, ok in (("first-key", True), ("third-key", True), ("nope", False), ("first-ke", False)):
        calls.clear()
        assert keys.allows(f"Bearer {given}") is ok
        assert [b for _, b in calls] == [b"first-key", b"second-key", b"third-key"], given


@pytest.mark.slow
async def test_admin_never_shows_keys_or_worker_env_values(start_endpoint, client):
    ep = await start_endpoint(auth={"api_keys": [KEY]}, env={"LBPROXY_API_KEYS": ENV_KEY},
                              workers={"active": 1, "max": 1}, worker={"env": {"SECRET_TOKEN": SECRET}})
    await ep.wait_workers(_ready, "the active worker")
    for key in (KEY, ENV_KEY):
        assert (await client.get(ep.url + "/echo", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    assert (await client.get(ep.url + "/echo", headers={"Authorization": "Bearer wrong"})).status_code == 401
    for path in ("/status", "/metrics", "/", "/healthz", "/readyz", "/internal/load"):
        text = (await client.get(ep.admin + path)).text
        for secret in (KEY, ENV_KEY, SECRET):
            assert secret not in text, f"{path} shows {secret!r}"
    log = ep.log()
    assert KEY not in log and ENV_KEY not in log


@pytest.mark.slow
def test_admin_defaults_to_loopback():
    config = parse_config({"name": "demo"}, environ={})
    assert config.admin.is_loopback() and config.admin.port == 9090


@pytest.mark.slow
async def test_serve_binds_the_admin_port_to_loopback_by_default(tmp_path: Path):
    with contextlib.suppress(OSError), __import__("socket").socket() as probe:
        probe.bind(("0.0.0.0", 9090))
        probe.close()
        path = tmp_path / "default-admin.yaml"
        path.write_text(yaml.safe_dump({"name": "adm", "listen": f"127.0.0.1:{free_port()}",
                                        "worker": {"command": [sys.executable, str(ECHO)]}}))
        log = (tmp_path / "adm.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "lbproxy", "serve", str(path)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith("LBPROXY_")})
        try:
            async def up() -> bool:
                assert proc.poll() is None, (tmp_path / "adm.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    async with httpx.AsyncClient() as c:
                        return (await c.get("http://127.0.0.1:9090/healthz")).status_code == 200
                return False
            await until(up, 20, "the admin port on 127.0.0.1:9090")
            listening = _listening_addresses(9090)
            assert listening == {"0100007F"}, f"admin listens on {listening} (hex IPv4), not loopback only"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            log.close()
        return
    pytest.skip("port 9090 is in use on this machine")


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, _, p = local.rpartition(":")
                if state == "0A" and int(p, 16) == port:
                    found.add(host)
    return found
