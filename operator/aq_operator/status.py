"""A pool's status as `kubectl get ewp` shows it: counts and the Ready/Degraded conditions.

Pure: the pool loop says what it saw (`Observation`), this module turns it into the status
body, keeping each condition's `lastTransitionTime` while its status stays the same. The shape
is `crd.PoolStatus`'s; the body is validated against it before it is written.

Conditions:
- `Ready`: True when the last pass read Redis and carried its plan out; False with the reason
  of what stopped it (SecretNotFound, RedisUnreachable, RedisNotConfigured, InvalidSpec,
  ImageMissing).
- `Degraded`: True with a reason when anything is wrong, whether it stops the pool (the reasons
  above) or not (CrashLoop: an entity's workers fail and it backs off; ImagePullBackOff;
  PodCreateFailed); False with reason AsExpected otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .crd import PoolStatus

BLOCKING = frozenset({
    "SecretNotFound", "SecretUnreadable", "RedisUnreachable", "RedisNotConfigured",
    "InvalidSpec", "ImageMissing",
})  # fmt: skip
"""Reasons that stop a pool from reconciling at all."""


@dataclass(frozen=True)
class Problem:
    reason: str
    """One CamelCase word."""
    message: str


@dataclass(frozen=True)
class Observation:
    """What one pass of the pool loop saw. Counts are None when Redis could not be read."""

    generation: int | None
    problems: Sequence[Problem] = ()
    """Most important first: the first blocking one, else the first, names the conditions."""
    active_entities: int | None = None
    waiting_jobs: int | None = None
    workers_desired: int | None = None
    workers_ready: int | None = None
    paused_entities: int | None = None


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    old: Mapping[str, Mapping[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    value = "True" if status else "False"
    previous = old.get(kind) or {}
    since = previous.get("lastTransitionTime") if previous.get("status") == value else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or _stamp(now),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def conditions(
    seen: Observation, old: Sequence[Mapping[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """The Ready and Degraded conditions for what a pass saw (`old`: the current ones)."""
    previous = {str(c.get("type")): c for c in old if isinstance(c, Mapping)}
    blocking = [p for p in seen.problems if p.reason in BLOCKING]
    worst = blocking[0] if blocking else seen.problems[0] if seen.problems else None
    messages = "; ".join(p.message for p in seen.problems)
    ready = _condition(
        previous,
        "Ready",
        not blocking,
        blocking[0].reason if blocking else "Reconciled",
        blocking[0].message if blocking else "workers follow the entities with work",
        seen.generation,
        now,
    )
    degraded = _condition(
        previous,
        "Degraded",
        worst is not None,
        worst.reason if worst else "AsExpected",
        messages if worst else "nothing is wrong",
        seen.generation,
        now,
    )
    return [ready, degraded]


def pool_status(
    seen: Observation, old_status: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The status body to merge into the pool (counts left out when unknown)."""
    old = old_status or {}
    body: dict[str, Any] = {
        "conditions": conditions(seen, old.get("conditions") or [], now),
    }
    if seen.generation is not None:
        body["observedGeneration"] = seen.generation
    for key, value in (
        ("activeEntities", seen.active_entities),
        ("waitingJobs", seen.waiting_jobs),
        ("workersDesired", seen.workers_desired),
        ("workersReady", seen.workers_ready),
        ("pausedEntities", seen.paused_entities),
    ):
        if value is not None:
            body[key] = value
    PoolStatus.model_validate(body)  # the CRD's shape: a bug here fails loudly, not in the API
    return body


def changed(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether writing `new` would change what `old` (the pool's status) says."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
