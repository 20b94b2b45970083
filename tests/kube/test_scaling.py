"""Stopping a chosen pod, in-process: the kubernetes backend against the emulator, no lbproxy process.

The backend talks to the emulator over HTTP with the official client as in production; worker events go to
a recorder, and the stop verification runs in virtual time where the test waits out its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lbproxy.backends.base import WorkerAddress
from lbproxy.backends.kubernetes import KubernetesBackend
from lbproxy.config import parse_config
from lbproxy.kube import manifests
from lbproxy.kube.scaling import STOP_VERIFY_SECONDS

from ..conftest import until
from ..fakes import VirtualClock
from .emulator import KubeEmulator

NS = "default"


class Recorder:
    """WorkerEvents that remember what the backend reported."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def worker_added(self, address: WorkerAddress) -> None:
        self.seen.append(("added", address.id))

    def worker_exited(self, worker_id: str, reason: str) -> None:
        self.seen.append(("exited", worker_id))

    def worker_address(self, worker_id: str, host: str) -> None:
        self.seen.append(("address", worker_id))

    def worker_terminating(self, worker_id: str, reason: str) -> None:
        self.seen.append(("terminating", worker_id))

    def worker_draining(self, worker_id: str, draining: bool) -> None:
        self.seen.append(("draining" if draining else "undrained", worker_id))


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await backend(emulator, clock=..., sleep=...)``: an opened KubernetesBackend and its event recorder."""
    opened: list[KubernetesBackend] = []

    async def make(emulator: KubeEmulator, **timing: Any) -> tuple[KubernetesBackend, Recorder]:
        config = parse_config({
            "name": "test", "flashboot": False, "worker": {"image": "echo:1", "port": 8000},
            "backend": {"type": "kubernetes", "namespace": NS,
                        "kubeconfig": str(emulator.kubeconfig(tmp_path / "kubeconfig"))},
        }, environ={})
        events = Recorder()
        kube = KubernetesBackend(config, events, **timing)
        opened.append(kube)
        await kube.open()
        return kube, events

    yield make
    for kube in opened:
        await kube.close()


def pod_names(emulator: KubeEmulator) -> list[str]:
    return sorted(p["metadata"]["name"] for p in emulator.pods(NS, f"{manifests.ENDPOINT_LABEL}=test"))


async def test_when_the_replicaset_removes_another_pod_stop_says_so_and_unmarks_the_victim(emulator, backend):
    kube, events = await backend(emulator)
    await kube.start_worker()
    await kube.start_worker()
    pods = await emulator.wait_for(lambda: (lambda names: names if len(names) == 2 else None)(pod_names(emulator)),
                                   5, "two worker pods")
    victim, pending = pods
    emulator.set_pod_running(NS, victim, "10.1.0.1")
    emulator.set_pod_unschedulable(NS, pending, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    await emulator.wait_for(lambda: ("address", victim) in events.seen, 5, "the backend to see the victim run")
    assert await kube.stop_worker(victim) is False
    assert pod_names(emulator) == [victim] and ("exited", pending) in events.seen
    annotations = emulator.get("pods", NS, victim)["metadata"].get("annotations") or {}
    assert manifests.DELETION_COST not in annotations  # the low cost would make it the next victim for no reason
    assert kube.scaler.replicas["test"] == 1


@pytest.fixture
async def emulator_without_controllers() -> AsyncIterator[KubeEmulator]:
    """No deployment controller: scaling a Deployment down removes no pod, as with a stuck controller."""
    emu = KubeEmulator(seed=1, controllers=False)
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.errors == []


async def test_a_stop_nobody_carries_out_gives_up_at_the_verify_deadline(emulator_without_controllers, backend,
                                                                         caplog):
    emulator = emulator_without_controllers
    emulator.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "test-1", "namespace": NS,
        "labels": {manifests.ENDPOINT_LABEL: "test", manifests.POOL_LABEL: manifests.DEFAULT_POOL}},
        "spec": {"containers": [{"name": "worker", "image": "echo:1"}]}})
    emulator.set_pod_running(NS, "test-1", "10.1.0.1")
    clock = VirtualClock()
    kube, events = await backend(emulator, clock=clock, sleep=clock.sleep)
    await emulator.wait_for(lambda: ("address", "test-1") in events.seen, 5, "the backend to see the pod run")
    stop = asyncio.create_task(kube.stop_worker("test-1"))
    # The fallback loop always sleeps; a second sleeper is the stop's verification, past its API calls.
    await until(lambda: clock.sleeping >= 2, 5, "the stop to wait for the pod to go")
    await clock.advance(STOP_VERIFY_SECONDS - 1)
    assert not stop.done()
    await clock.advance(2)
    assert stop.done() and stop.result() is False
    assert pod_names(emulator) == ["test-1"] and ("exited", "test-1") not in events.seen
    assert f"pod test-1 was not stopped within {STOP_VERIFY_SECONDS:.0f}s of scaling test down" in caplog.text
