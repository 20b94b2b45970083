"""The scaling policy's tunables from the config: one mapping for ``lbproxy serve`` and ``lbproxy simulate``."""

from __future__ import annotations

from .config import Config
from .policy import ScalingSettings

__all__ = ["scaling_settings"]


def scaling_settings(config: Config) -> ScalingSettings:
    return ScalingSettings(
        active=config.workers.active,
        max=config.workers.max,
        concurrency=config.workers.concurrency,
        strategy=config.scaling.strategy,
        queue_delay=config.scaling.queue_delay,
        requests_per_worker=config.scaling.requests_per_worker,
        idle_timeout=config.timeouts.idle,
        init_timeout=config.timeouts.init,
    )
