"""The request path's settings: one frozen object built from the config, read per request, swapped whole on a
reload (SIGHUP) so that a request in progress keeps the settings it started with."""

from __future__ import annotations

from dataclasses import dataclass

from ..auth import ApiKeys
from ..config import Config


@dataclass(frozen=True, slots=True)
class ProxySettings:
    keys: ApiKeys
    drop_authorization: bool  # keys configured and auth.forward_authorization off: the worker never sees them
    execution_timeout: float | None  # None: off
    wait_timeout: float
    max_body: int
    access_log: bool

    @classmethod
    def from_config(cls, config: Config) -> ProxySettings:
        keys = ApiKeys(config.auth.keys())
        return cls(
            keys=keys,
            drop_authorization=keys.enabled and not config.auth.forward_authorization,
            execution_timeout=config.timeouts.execution,
            wait_timeout=config.timeouts.wait,
            max_body=config.limits.max_body_size,
            access_log=config.log.access,
        )
