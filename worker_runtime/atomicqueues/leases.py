"""The worker's side of the scripts: claim jobs under a lease, finish them, renew, release.

A lease (owner, fencing token, expiry) entitles one worker to run one job of an entity at a
time; an entity has at most `concurrency` leases. Every call presents the token, and the script
refuses it when the lease has expired or passed to another worker (`LeaseLost`), so a paused or
cut-off worker can change nothing after the fact.

The worker also knows how long its lease lasts without asking Redis: a lease cannot expire
before the send time of the last call that renewed it (a claim or a renewal) plus the TTL, as
Redis sets the expiry when the script runs, never before the call was sent. `Lease.valid_until`
keeps that moment on this process's monotonic clock, so the worker can stop a job before anyone
else may start it, even when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import metrics
from .base_client import BaseClient
from .errors import LeaseLost, NotReplicated
from .jobs import Job
from .keys import decode_id, encode_id, in_bucket

Outcome = Literal["completed", "cancelled", "retry", "dead"]
Next = Literal["same", "any", "release", "none"]
"""What `Leases.finish` starts next (see there)."""
log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A worker's lease on one entity."""

    entity_type: str
    entity_id: str
    token: str
    valid_until: float = field(default=0.0, compare=False)
    """Until when (`time.monotonic()`) the lease holds for certain: the send time of the last
    call that renewed it, plus the TTL."""

    @property
    def fencing_token(self) -> int:
        return int(self.token)


@dataclass(frozen=True)
class Started:
    """A job the worker now runs under `lease`."""

    lease: Lease
    jslot: str
    job: Job


@dataclass(frozen=True)
class Idle:
    """Nothing may start now; `lease` is kept when the worker held one."""

    lease: Lease | None
    next_due: float | None
    """When (epoch seconds) a delayed job or retry of the entity falls due, if any."""


class Leases:
    """Lease operations of one worker (`owner`) through a `Client`."""

    def __init__(self, client: BaseClient, owner: str) -> None:
        if "|" in owner or not owner:
            raise ValueError(f"invalid worker name {owner!r}")
        self.client = client
        self.owner = owner
        self.keys = client.keys
        self.ttl_ms = client.settings.lease_ttl_ms
        self.ttl = self.ttl_ms / 1000.0

    def _started(self, lease: Lease, reply: list[str | None]) -> Started:
        jslot = reply[0] or ""
        return Started(lease, jslot, Job.from_reply(lease.entity_type, reply[1:]))

    async def claim(self, entity_type: str, entity_id: str, lease: Lease | None) -> Started | Idle:
        """Start the entity's next job, acquiring a lease if `lease` is None."""
        sent = time.monotonic()
        reply = await self.client.script(
            "claim",
            self.keys.entity_bucket(entity_type, entity_id),
            encode_id(entity_id),
            self.owner,
            lease.token if lease else "",
            self.ttl_ms,
            self.keys.events(entity_type),
        )
        if reply[0] == "lost":
            raise LeaseLost(entity_type, entity_id, lease.fencing_token if lease else None)
        token = reply[1]
        held: Lease | None = None
        if lease is not None and token == lease.token:  # the same lease, renewed
            held = lease
            held.valid_until = max(held.valid_until, sent + self.ttl)
        elif token:
            held = Lease(entity_type, entity_id, token, sent + self.ttl)
        if reply[0] == "job":
            assert held is not None
            return self._started(held, reply[2:])
        return Idle(held, float(reply[2]) / 1000.0 if reply[2] else None)

    async def busy_buckets(self, entity_type: str) -> list[str]:
        """Buckets with a claimable entity or a due delayed job: one pipelined read, so a packed
        worker calls `claim_any` only where it can succeed."""
        now_ms = round(time.time() * 1000)
        buckets = self.keys.buckets(entity_type)
        pipe = self.client.redis.pipeline(transaction=False)
        for bucket in buckets:
            pipe.zcard(in_bucket(bucket, "ready"))
            pipe.zcount(in_bucket(bucket, "delayed"), "-inf", now_ms)
        counts: list[int] = await self.client.call(pipe.execute)
        return [b for i, b in enumerate(buckets) if counts[2 * i] or counts[2 * i + 1]]

    async def claim_any(self, entity_type: str, bucket: str) -> Started | None:
        """Take the oldest claimable entity of one bucket (packed workers)."""
        sent = time.monotonic()
        reply = await self.client.script(
            "claim_any", bucket, self.owner, self.ttl_ms, self.keys.events(entity_type)
        )
        if reply[0] != "job":
            return None
        lease = Lease(entity_type, decode_id(reply[1]), reply[2], sent + self.ttl)
        return self._started(lease, reply[3:])

    async def finish(
        self,
        run: Started,
        outcome: Outcome,
        value: str,
        *,
        retry_delay: float = 0.0,
        claim_next: Next = "same",
    ) -> Started | None:
        """Record the outcome of `run` and, in the same call, start the next job: with
        `claim_next` "same" the entity's next job under the same lease (kept when there is
        none); with "any" (packed workers), when the entity has none, the head job of the oldest
        claimable entity of the same bucket under a new lease, the old one released; with
        "release" the entity's next job, else the lease released and nothing taken; with "none"
        nothing (the lease kept).

        The lease is not extended here (the heartbeat does that). With
        `Settings.durable_replicas`, the outcome waits for that many replicas. When fewer
        confirm it in time the outcome still holds on the primary and the next job has started:
        that is logged and counted (`aq_outcomes_not_replicated_total`), as a failover before
        the replicas catch up would undo it and the job would run again."""
        lease = run.lease
        sent = time.monotonic()
        try:
            reply = await self._finish(run, outcome, value, retry_delay, claim_next)
        except NotReplicated as exc:
            reply = exc.reply
            metrics.OUTCOMES_NOT_REPLICATED.labels(lease.entity_type).inc()
            log.warning(
                "job %s of %s/%r: outcome %s reached %d of %d replicas in time; a failover now "
                "would undo it and the job would run again",
                run.job.id,
                lease.entity_type,
                lease.entity_id,
                outcome,
                exc.acked,
                exc.wanted,
            )
        if reply[0] == "lost":
            raise LeaseLost(lease.entity_type, lease.entity_id, lease.fencing_token)
        if reply[1] == "job":
            return self._started(lease, reply[2:])
        if reply[1] == "other":
            other = Lease(lease.entity_type, decode_id(reply[2]), reply[3], sent + self.ttl)
            return self._started(other, reply[4:])
        return None

    async def _finish(
        self, run: Started, outcome: Outcome, value: str, retry_delay: float, claim_next: Next
    ) -> Any:
        lease, job = run.lease, run.job
        return await self.client.script(
            "finish",
            self.keys.entity_bucket(lease.entity_type, lease.entity_id),
            encode_id(lease.entity_id),
            self.owner,
            lease.token,
            run.jslot,
            outcome,
            value,
            round(retry_delay * 1000),
            claim_next,
            self.ttl_ms,
            self.keys.events(lease.entity_type),
            job.keep_ms,
            job.keep_count,
            durable=True,
        )

    async def renew(
        self, leases: list[Lease], to_cancel: Callable[[Lease], None] | None = None
    ) -> list[Lease]:
        """Extend every lease (one script call per bucket, all sent together: one round trip
        per Redis node); returns the ones that were lost. `to_cancel` is called with each lease
        whose running job is to be cancelled."""
        by_bucket: dict[tuple[str, str], list[Lease]] = {}
        for lease in leases:
            bucket = self.keys.entity_bucket(lease.entity_type, lease.entity_id)
            by_bucket.setdefault((bucket, lease.entity_type), []).append(lease)
        lost = await asyncio.gather(
            *(self._renew(b, t, group, to_cancel) for (b, t), group in by_bucket.items())
        )
        return [lease for part in lost for lease in part]

    async def _renew(
        self,
        bucket: str,
        entity_type: str,
        group: list[Lease],
        to_cancel: Callable[[Lease], None] | None,
    ) -> list[Lease]:
        pairs = [v for lease in group for v in (encode_id(lease.entity_id), lease.token)]
        sent = time.monotonic()
        renewed = await self.client.script(
            "renew", bucket, self.owner, self.ttl_ms, self.keys.events(entity_type), *pairs
        )
        lost: list[Lease] = []
        for lease, ok in zip(group, renewed, strict=True):
            if not ok:
                lost.append(lease)
                continue
            lease.valid_until = max(lease.valid_until, sent + self.ttl)
            if ok == 2 and to_cancel is not None:
                to_cancel(lease)
        return lost

    async def release(self, lease: Lease, mode: Literal["idle", "shutdown"]) -> str:
        """Give the lease up: 'released', 'busy' (idle mode, work arrived) or 'lost'."""
        result: str = await self.client.script(
            "release",
            self.keys.entity_bucket(lease.entity_type, lease.entity_id),
            encode_id(lease.entity_id),
            self.owner,
            lease.token,
            mode,
            self.keys.events(lease.entity_type),
        )
        return result


async def sweep(client: BaseClient, entity_type: str, limit: int = 500) -> tuple[int, int]:
    """Recover expired leases and promote due delayed jobs in every bucket of a type.

    Returns (leases recovered, entities whose delayed jobs were promoted). One process sweeps
    at a time (the worker takes a lock), so the buckets go one after another on one connection.
    """
    events = client.keys.events(entity_type)
    recovered = promoted = 0
    for bucket in client.keys.buckets(entity_type):
        r, p = await client.script("sweep", bucket, limit, events)
        recovered += int(r)
        promoted += int(p)
    return recovered, promoted
