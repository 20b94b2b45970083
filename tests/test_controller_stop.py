"""The controller stops when cancelled, even when a pool change wakes it in the same loop turn (shutdown).

On Python 3.11 ``asyncio.wait_for`` drops such a cancellation: with a crash-looping worker (its exit wakes the
controller) lbproxy then ignored SIGTERM and went on starting workers.
"""

from __future__ import annotations

import asyncio

from lbproxy.controller import Controller
from lbproxy.health import HealthProber
from lbproxy.metrics import Metrics
from lbproxy.policy import ScalingSettings
from lbproxy.pool import WorkerPool


class IdleBackend:
    """A backend with nothing to do: the policy never asks it for anything here (no load, active 0)."""

    pending_starts = 0

    async def start_worker(self) -> None:
        raise AssertionError("not expected")

    async def stop_worker(self, worker_id: str) -> bool:
        return True

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self, worker_id: str) -> dict[str, object]:
        return {}


async def test_a_cancellation_in_the_same_turn_as_a_wake_up_stops_the_controller():
    for _ in range(20):  # the race is exact: both in one loop turn, every time
        pool = WorkerPool(0, 10, 5.0)
        controller = Controller(ScalingSettings(), pool, HealthProber(pool, "/ping"), Metrics("t"))
        task = asyncio.create_task(controller.run(IdleBackend()))
        for _ in range(5):
            await asyncio.sleep(0)  # into its wait for a change
        pool.changed.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the controller went on after being cancelled"
        assert task.cancelled()
