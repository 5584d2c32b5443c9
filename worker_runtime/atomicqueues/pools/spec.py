"""The EntityWorkerPool spec: one pydantic model for `aq up` manifests and the Kubernetes CRD.

Field names are camelCase as in every Kubernetes resource; validation errors name the field
(`spec.placement.slots: ...`). The CRD's schema is generated from these models, so the API
server and `aq up` accept exactly the same manifests.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InvalidInput
from ..keys import ENTITY_TYPE_RE

API_GROUP = "atomicqueues.io"
API_VERSION = "v1alpha1"
KIND = "EntityWorkerPool"
HANDLERS_RE = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
URL_PASSWORD_RE = r"^(rediss?|redis\+sentinel)://[^/@]*:[^/@]+@"
"""A Redis URL that carries a password (refused: the password belongs in a Secret)."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SecretKeyRef(Model):
    name: str = Field(min_length=1, max_length=253, description="Secret in the pool's namespace")
    key: str = Field(default="url", min_length=1, description="Key holding the Redis URL")


class RedisSpec(Model):
    """Where Redis is: a URL, or a Secret holding it (never a password in the resource)."""

    url: str | None = Field(default=None, description="Redis URL without a password")
    secret_ref: SecretKeyRef | None = Field(default=None, alias="secretRef")
    prefix: str = Field(default="aq", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Key prefix")

    @model_validator(mode="after")
    def _one_source(self) -> RedisSpec:
        if self.url and self.secret_ref:
            raise ValueError("give either url or secretRef, not both")
        if self.url and re.match(URL_PASSWORD_RE, self.url):
            raise ValueError("url must not carry a password: put the URL in a Secret (secretRef)")
        return self


class WorkersSpec(Model):
    """How many workers an entity gets."""

    max_per_entity: int = Field(
        default=1,
        ge=1,
        le=100,
        alias="maxPerEntity",
        description="Most workers for one entity (it also never exceeds its concurrency)",
    )
    jobs_per_worker: int = Field(
        default=10,
        ge=1,
        alias="jobsPerWorker",
        description="Waiting jobs per extra worker when an entity may have more than one",
    )
    max_total: int = Field(default=100, ge=0, alias="maxTotal", description="Pool-wide cap")
    max_starts_per_second: float = Field(
        default=20.0, gt=0, alias="maxStartsPerSecond", description="Start rate limit"
    )


class PlacementSpec(Model):
    """`dedicated`: a worker per entity slot. `packed`: workers with `slots` entities each."""

    mode: Literal["dedicated", "packed"] = "dedicated"
    slots: int = Field(default=16, ge=1, le=1000, description="Entities per packed worker")


class TimingSpec(Model):
    idle_timeout_seconds: float = Field(default=30.0, gt=0, alias="idleTimeoutSeconds")
    heartbeat_ttl_seconds: float = Field(default=3.0, gt=0, alias="heartbeatTTLSeconds")
    heartbeat_interval_seconds: float = Field(default=1.0, gt=0, alias="heartbeatIntervalSeconds")
    shutdown_grace_seconds: float = Field(default=25.0, ge=0, alias="shutdownGraceSeconds")
    resync_interval_seconds: float = Field(default=5.0, gt=0, alias="resyncIntervalSeconds")
    restart_backoff_seconds: float = Field(
        default=1.0,
        gt=0,
        alias="restartBackoffSeconds",
        description="First wait before restarting an entity whose worker failed; doubles",
    )
    max_restart_backoff_seconds: float = Field(
        default=300.0, gt=0, alias="maxRestartBackoffSeconds"
    )

    @model_validator(mode="after")
    def _heartbeat(self) -> TimingSpec:
        if self.heartbeat_interval_seconds * 2 > self.heartbeat_ttl_seconds:
            raise ValueError("heartbeatIntervalSeconds must be at most half of heartbeatTTLSeconds")
        return self

    def worker_env(self) -> dict[str, str]:
        """The worker settings this timing sets, as the environment `aq worker` reads them
        (`Settings.from_env`): the one place where a pool's timing becomes its workers'
        settings, for local processes and pods alike."""
        return {
            "AQ_HEARTBEAT_TTL": str(self.heartbeat_ttl_seconds),
            "AQ_HEARTBEAT_INTERVAL": str(self.heartbeat_interval_seconds),
            "AQ_IDLE_TIMEOUT": str(self.idle_timeout_seconds),
            "AQ_SHUTDOWN_GRACE": str(self.shutdown_grace_seconds),
        }


class PoolSpec(Model):
    entity_type: str = Field(alias="entityType", pattern=ENTITY_TYPE_RE.pattern)
    handlers: str = Field(pattern=HANDLERS_RE, description="MODULE:ATTRIBUTE of a Registry")
    image: str | None = Field(default=None, description="Worker image (Kubernetes only)")
    pod_template: dict[str, Any] | None = Field(
        default=None, alias="podTemplate", description="Merged into worker pods (Kubernetes only)"
    )
    redis: RedisSpec = RedisSpec()
    workers: WorkersSpec = WorkersSpec()
    placement: PlacementSpec = PlacementSpec()
    timing: TimingSpec = TimingSpec()


class Metadata(Model):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    namespace: str | None = None


class Pool(Model):
    """A whole EntityWorkerPool manifest."""

    api_version: Literal["atomicqueues.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["EntityWorkerPool"]
    metadata: Metadata
    spec: PoolSpec


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "manifest"


def parse_pool(data: Any, source: str = "manifest") -> Pool:
    """Validate a manifest; one error line that names the field on failure."""
    try:
        return Pool.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise InvalidInput(f"{source}: {_field_path(first['loc'])}: {first['msg']}{tail}") from None


def load_pool(path: str) -> Pool:
    """Read and validate a YAML manifest file."""
    import yaml  # the local extra; the reconciler and the operator do not need it

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InvalidInput(f"{path}:{where} invalid YAML") from None
    return parse_pool(data, path)
