"""The operator's own settings: what every pool falls back on, and how often it retries.

Read from the environment once (`Config.from_env`), overridden by `aq operator` flags; passed
down explicitly. kopf's own settings are set in runner.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from atomicqueues.errors import ConfigError


@dataclass(frozen=True)
class Config:
    worker_image: str | None = None
    """Image of the worker pods of a pool without `spec.image` (`AQ_WORKER_IMAGE`)."""

    redis_url: str | None = None
    """Redis of a pool without `spec.redis.url` or `secretRef` (`AQ_REDIS_URL`); given to its
    pods as a plain value, so it must carry no password (else the pool is Degraded)."""

    retry_seconds: float = 5.0
    """Wait before trying again when a pool cannot work (Secret missing, Redis unreachable)."""

    status_seconds: float = 1.0
    """At most one status write per pool in this time, unless a condition changes."""

    secret_refresh_seconds: float = 30.0
    """Read a pool's Redis Secret again after this time (a rotated URL is picked up)."""

    def __post_init__(self) -> None:
        for name in ("retry_seconds", "status_seconds", "secret_refresh_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"operator setting {name} must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(
            worker_image=env.get("AQ_WORKER_IMAGE") or None,
            redis_url=env.get("AQ_REDIS_URL") or None,
        )
