"""Local replicas sharing one queue (a PostgreSQL store): what each one's controller may do (pure).

Each replica runs its own local workers and hands them jobs from the shared queue. One replica leads (it holds
the endpoint's advisory lock): it scales its own workers from the whole queue, and counts the followers'
workers against ``workers.max``, so the endpoint never runs more than that in total. A follower keeps
``workers.active`` workers of its own (replaced when they break, drained when idle beyond that), and no more:
a burst is the leader's to answer, so two replicas never start workers for the same queued jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib

from lbproxy.policy import ScalingSettings


def role_settings(settings: ScalingSettings, leading: bool, follower_workers: int) -> ScalingSettings:
    """The scaling settings of one replica: the leader's ``max`` less the followers' workers (never below
    its own ``active``); a follower's ``max`` is its ``active``."""
    if leading:
        return dataclasses.replace(settings, max=max(settings.active, settings.max - follower_workers))
    return dataclasses.replace(settings, max=settings.active)


def leader_lock_key(endpoint: str) -> int:
    """The endpoint's advisory lock (a signed 64-bit number, as pg_try_advisory_lock takes)."""
    digest = hashlib.sha256(f"lbproxy-leader:{endpoint}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
