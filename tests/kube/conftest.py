"""Fixtures: a started emulator per test and real ``kubernetes.aio`` clients configured from its kubeconfig."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client, config

from ..conftest import Endpoint, base_config, free_port, launch
from .emulator import KubeEmulator

ClientFactory = Callable[[], Awaitable[client.ApiClient]]


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    emu = KubeEmulator(seed=1)
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.errors == [], "the emulator itself failed (see the exceptions)"


@pytest.fixture
async def new_client(emulator: KubeEmulator, tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """``await new_client()``: an ApiClient loaded from the emulator's kubeconfig; all are closed at the end."""
    path = emulator.kubeconfig(tmp_path / "kubeconfig")
    made: list[client.ApiClient] = []

    async def make() -> client.ApiClient:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(path), client_configuration=configuration)
        api = client.ApiClient(configuration=configuration)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


@pytest.fixture
async def api(new_client: ClientFactory) -> client.ApiClient:
    return await new_client()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture
async def serve_k8s(tmp_path: Path, emulator: KubeEmulator) -> AsyncIterator[Callable[..., Any]]:
    """Start ``lbproxy serve`` with the kubernetes backend against the emulator.

    Stopped with SIGTERM (exit 0) while the emulator still answers, so shutdown talks to a live API.
    """
    kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig")
    started: list[Endpoint] = []
    worker_port = free_port()

    async def start(env: dict[str, str] | None = None, **overrides: Any) -> Endpoint:
        cfg = base_config(**overrides)
        cfg["worker"] = {"image": "echo:1", "port": worker_port, **overrides.get("worker", {})}
        cfg["backend"] = {"type": "kubernetes", "kubeconfig": str(kubeconfig), "namespace": "default",
                          **overrides.get("backend", {})}
        cfg.setdefault("workers", {}).setdefault("gpus", 1)
        ep = await launch(cfg, tmp_path, env)
        started.append(ep)
        return ep

    yield start
    for ep in started:
        if ep.proc.poll() is None:
            ep.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(ep.proc.wait, 30)
        assert code in (0, -signal.SIGKILL), f"lbproxy exited with {code}\n{ep.log()[-3000:]}"
