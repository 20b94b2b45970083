"""Fixtures: a started emulator per test and real ``kubernetes.aio`` clients configured from its kubeconfig."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from kubernetes.aio import client, config

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
