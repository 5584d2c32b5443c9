"""Settings, read from the environment once and passed down explicitly.

Each field says what it controls; `Settings.from_env()` reads `AQ_*` variables, and anything a
command-line option sets overrides it with `dataclasses.replace`.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SAFETY_MARGIN = 0.2
"""The part of a lease's or lock's TTL its holder keeps in hand: it stops what the lease or
lock covers this long before the moment it may expire on its own clock. It absorbs a difference
in clock rates between this host and Redis (the one assumption left: rates, not clocks, agree
within it), the time a handler takes to give control back, and scheduling delays."""


def flag(raw: str) -> bool:
    """An on/off environment variable: 1, true, yes, on or 0, false, no, off."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Where Redis is (`AQ_REDIS_URL`); password and TLS go in the URL."""

    prefix: str = "aq"
    """Key prefix (`AQ_PREFIX`): several independent deployments can share one Redis."""

    heartbeat_ttl: float = 3.0
    """Seconds a lease and a worker registration live without a heartbeat (`AQ_HEARTBEAT_TTL`)."""

    heartbeat_interval: float = 1.0
    """Seconds between heartbeats (`AQ_HEARTBEAT_INTERVAL`); must be well under the TTL."""

    redis_timeout: float | None = None
    """Seconds a Redis call may go unanswered before it fails (`AQ_REDIS_TIMEOUT`); default a
    third of the heartbeat TTL, so a worker cut off from Redis finds out well inside its lease.
    Blocking waits get this much on top of their own timeout."""

    durable_replicas: int = 0
    """Replicas that must confirm an enqueue and a job's outcome before the call returns
    (`AQ_DURABLE_REPLICAS`; Redis WAIT). 0 (the default) waits for none: replication is
    asynchronous and a failover can lose what the primary acknowledged last."""

    durable_timeout: float | None = None
    """Seconds WAIT waits for those replicas (`AQ_DURABLE_TIMEOUT`); default half the call
    timeout. Fewer confirmations in that time is an error the caller sees (`NotReplicated`)."""

    idle_timeout: float = 30.0
    """An entity-bound worker exits after this many seconds without work (`AQ_IDLE_TIMEOUT`)."""

    shutdown_grace: float = 25.0
    """Seconds a closing worker lets its running job finish before giving it back
    (`AQ_SHUTDOWN_GRACE`)."""

    job_timeout: float = 300.0
    """Seconds a job's handler may run unless the job or its handler says otherwise; past it
    the handler is cancelled and the attempt fails (`AQ_JOB_TIMEOUT`; 0: no limit). Five
    minutes, as RQ (180 s) and arq (300 s) limit a job by default: a handler that never
    returns must not hold its entity for ever."""

    max_payload_bytes: int = 1024 * 1024
    """Largest accepted JSON payload, in bytes (`AQ_MAX_PAYLOAD_BYTES`)."""

    max_attempts: int = 3
    """Attempts a job gets unless its enqueue says otherwise (`AQ_MAX_ATTEMPTS`)."""

    keep_completed: float = 3600.0
    """Seconds a completed job and its result are kept; 0 removes it at once
    (`AQ_KEEP_COMPLETED`). While it is kept, its id stays taken (idempotent enqueue) and
    `result()` finds it. An hour, as arq keeps results (RQ keeps them 500 s, Celery a day,
    Dramatiq none): long enough for a producer's retries and for whoever waits on a result,
    and Redis memory grows with what is kept: at 1,000 jobs/s an hour holds 3.6 million
    jobs, a day 86 million (docs/benchmarks.md measures the bytes per kept job)."""

    keep_completed_count: int = 1000
    """At most this many completed jobs are kept per entity (`AQ_KEEP_COMPLETED_COUNT`; checked
    on every 16th completion of an entity, so up to 15 more may be kept for a while)."""

    keep_failed: float = 0.0
    """Seconds a dead-lettered job is kept; 0 keeps it until purged (`AQ_KEEP_FAILED`)."""

    metrics_port: int | None = None
    """Port for the worker's Prometheus metrics; unset serves none (`AQ_METRICS_PORT`)."""

    tracing: bool = False
    """Carry the trace context from enqueue to the job and run handlers in OpenTelemetry spans
    (`AQ_TRACING=1`; needs `pip install 'atomicqueues[tracing]'`)."""

    node: str = field(default_factory=socket.gethostname)
    """Name of the machine or Kubernetes node the worker runs on (`AQ_NODE_NAME`)."""

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise ConfigError(
                f"invalid AQ_PREFIX {self.prefix!r}: use 1-64 letters, digits, '_', '.' or '-'"
            )
        if self.heartbeat_ttl <= 0 or self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat TTL and interval must be positive")
        if self.heartbeat_interval * 2 > self.heartbeat_ttl:
            raise ConfigError(
                f"heartbeat interval {self.heartbeat_interval}s must be at most half "
                f"the TTL {self.heartbeat_ttl}s"
            )
        if self.redis_timeout is not None and self.redis_timeout <= 0:
            raise ConfigError("the Redis timeout must be positive")
        if not 0 <= self.job_timeout < math.inf:
            raise ConfigError("the job timeout must be a number of seconds (0: no limit)")
        if self.max_attempts < 1:
            raise ConfigError("max attempts must be at least 1")
        if self.durable_replicas < 0:
            raise ConfigError("durable replicas must not be negative")
        if self.durable_timeout is not None and not 0 < self.durable_timeout < self.call_timeout:
            raise ConfigError(
                f"the durable timeout must be positive and below the call timeout "
                f"{self.call_timeout}s (AQ_REDIS_TIMEOUT)"
            )

    @property
    def call_timeout(self) -> float:
        """Seconds a Redis call may go unanswered (`redis_timeout`, or a third of the TTL)."""
        return self.redis_timeout or self.heartbeat_ttl / 3

    @property
    def durable_wait_ms(self) -> int:
        """Milliseconds a WAIT for `durable_replicas` may take."""
        return round((self.durable_timeout or self.call_timeout / 2) * 1000)

    @property
    def lease_margin(self) -> float:
        """How long before its lease may expire (on its own clock) a worker stops the job it
        covers (see `SAFETY_MARGIN`)."""
        return self.heartbeat_ttl * SAFETY_MARGIN

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.heartbeat_ttl * 1000)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        names: dict[str, tuple[str, Callable[[str], object]]] = {
            "AQ_REDIS_URL": ("redis_url", str),
            "AQ_PREFIX": ("prefix", str),
            "AQ_HEARTBEAT_TTL": ("heartbeat_ttl", float),
            "AQ_HEARTBEAT_INTERVAL": ("heartbeat_interval", float),
            "AQ_REDIS_TIMEOUT": ("redis_timeout", float),
            "AQ_DURABLE_REPLICAS": ("durable_replicas", int),
            "AQ_DURABLE_TIMEOUT": ("durable_timeout", float),
            "AQ_IDLE_TIMEOUT": ("idle_timeout", float),
            "AQ_SHUTDOWN_GRACE": ("shutdown_grace", float),
            "AQ_JOB_TIMEOUT": ("job_timeout", float),
            "AQ_MAX_PAYLOAD_BYTES": ("max_payload_bytes", int),
            "AQ_MAX_ATTEMPTS": ("max_attempts", int),
            "AQ_KEEP_COMPLETED": ("keep_completed", float),
            "AQ_KEEP_COMPLETED_COUNT": ("keep_completed_count", int),
            "AQ_KEEP_FAILED": ("keep_failed", float),
            "AQ_METRICS_PORT": ("metrics_port", int),
            "AQ_NODE_NAME": ("node", str),
            "AQ_TRACING": ("tracing", flag),
        }
        for var, (name, kind) in names.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{var}={raw!r} is not a valid {getattr(kind, '__name__', 'value')}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]
