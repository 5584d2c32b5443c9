"""Leader election through a coordination.k8s.io Lease: one active operator among its replicas.

The rules are those of client-go's leader election, so the Lease reads as any controller's:

- A candidate takes the Lease when it has no holder, or when the Lease has not changed for
  `leaseDurationSeconds` *as this process saw it*: expiry is judged on the local monotonic
  clock from the moment a record was first observed, so the clocks of different nodes never
  need to agree (`renewTime` is written for people, not compared).
- Every write is conditional on the `resourceVersion` read: of two candidates, one wins.
- The leader renews every `retry_period`. When it cannot renew for `renew_deadline`, or finds
  another holder, it has lost: `hold` raises `LeadershipLost`, the operator stops reconciling
  at once and `aq operator` exits non-zero, to come back (restarted by its Deployment) as a
  candidate. `renew_deadline` < `duration`, so a leader that is cut off stops before a
  candidate may take over.
- On a clean stop the leader releases the Lease (no holder, duration 1 s), so a candidate takes
  over at its next retry instead of after the full duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atomicqueues.aio import wait_any
from atomicqueues.errors import AtomicQueuesError, ConfigError

from .kube import Body, Conflict, Kube, KubeError

log = logging.getLogger(__name__)


class LeadershipLost(AtomicQueuesError):
    """Another replica holds the Lease now, or it could not be renewed in time."""


@dataclass(frozen=True)
class LeaseTiming:
    duration: float = 15.0
    """How long a Lease that stopped changing keeps candidates waiting (client-go's default)."""
    renew_deadline: float = 10.0
    """How long the leader keeps trying to renew before it steps down."""
    retry_period: float = 2.0
    """How often the leader renews and a candidate tries (with up to 20% jitter)."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ConfigError(
                "lease timing needs 0 < retry period < renew deadline < lease duration"
            )

    @classmethod
    def scaled(cls, duration: float) -> LeaseTiming:
        """client-go's proportions (15 s, 10 s, 2 s) for another lease duration."""
        if duration < 1:
            raise ConfigError("the lease duration must be at least 1 second")
        return cls(duration, duration * 2 / 3, duration * 2 / 15)


class LeaderElection:
    """Candidate for, and holder of, one Lease."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.is_leader = False
        self._renewed = 0.0  # monotonic time of the last successful take or renewal
        self._observed: tuple[str, float] | None = None  # (the Lease's spec, when first seen)

    def leading(self) -> bool:
        """True while this replica holds the Lease and renewed it within the renew deadline:
        asked before every change, so a replica that was paused past it changes nothing even
        before `hold` has noticed."""
        return self.is_leader and time.monotonic() - self._renewed < self.timing.renew_deadline

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try until this replica holds the Lease (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self.try_acquire():
                log.info("leader election: %s holds Lease %s", self.identity, self._where)
                return True
            if not announced:
                log.info("leader election: waiting for Lease %s", self._where)
                announced = True
            await wait_any([stop], self.timing.retry_period * random.uniform(1.0, 1.2))
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; raise `LeadershipLost` when the Lease is lost."""
        while not await wait_any([stop], self.timing.retry_period):
            if await self.try_acquire():
                continue
            if not self.is_leader:
                raise LeadershipLost(f"Lease {self._where} is held by another replica now")
            if time.monotonic() - self._renewed > self.timing.renew_deadline:
                self.is_leader = False
                raise LeadershipLost(
                    f"could not renew Lease {self._where} for {self.timing.renew_deadline:g}s"
                )

    async def release(self) -> None:
        """Give the Lease up, if held, so a candidate need not wait for it to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_now())
            await self.kube.replace_lease(self.namespace, lease)
            log.info("leader election: released Lease %s", self._where)
        except KubeError as exc:  # it expires on its own
            log.warning("leader election: could not release Lease %s: %s", self._where, exc)

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it after."""
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            written = (
                await self.kube.create_lease(self.namespace, self._new_lease())
                if lease is None
                else await self._take_over(lease)
            )
            if written is None:
                return False
        except Conflict:  # another replica wrote first: read again next time
            return False
        except KubeError as exc:
            log.warning("leader election: Lease %s: %s", self._where, exc)
            return False
        self._observed = (_fingerprint(written.get("spec") or {}), time.monotonic())
        self._renewed = time.monotonic()
        self.is_leader = True
        return True

    async def _take_over(self, lease: Body) -> Body | None:
        """Write this replica into an existing Lease; None when another holds it still."""
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        if holder != self.identity:
            self.is_leader = False
            if holder is not None and not self._expired(spec):
                return None
        spec = self._take(spec, renewing=holder == self.identity)
        return await self.kube.replace_lease(self.namespace, {**lease, "spec": spec})

    def _expired(self, spec: dict[str, Any]) -> bool:
        seen = _fingerprint(spec)
        now = time.monotonic()
        if self._observed is None or self._observed[0] != seen:
            self._observed = (seen, now)
        duration = spec.get("leaseDurationSeconds") or self.timing.duration
        return now - self._observed[1] >= float(duration)

    def _take(self, spec: dict[str, Any], *, renewing: bool) -> dict[str, Any]:
        now = _now()
        taken = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.duration)),
            "renewTime": now,
        }
        if not renewing:
            taken["acquireTime"] = now
            taken["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        return taken

    def _new_lease(self) -> Body:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {**self._take({}, renewing=False), "leaseTransitions": 0},
        }

    @property
    def _where(self) -> str:
        return f"{self.namespace}/{self.name}"


def _fingerprint(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def _now() -> str:
    """A MicroTime, as the API wants it: RFC 3339, microseconds, UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
