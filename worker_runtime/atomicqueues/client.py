"""The producer's side: enqueue jobs, cancel them, look them up, await their results; pause and
resume an entity or a type.

`Client` is the async core, built on the connection of `base_client.py`;
`atomicqueues.sync.SyncClient` wraps it for sync code. Every change goes through one Lua script
(one round trip). What else reads or changes a deployment wraps a client in a class of its own:
`IndexReads` (index_reads.py), `DeadLetters` (dead_letters.py), `Controls` (controls.py: limits
and concurrency), `Queues`, `Schedules`, `Locks`, `Presence`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import metrics, tracing
from .base_client import BaseClient
from .errors import (
    BacklogFull,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobNotFound,
    NotReplicated,
    RedisOutOfMemory,
    RedisUnavailable,
)
from .jobs import (
    DEFAULT_BACKOFF,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Backoff,
    Job,
    encode_payload,
    is_integer,
    is_seconds,
    job_header,
)
from .keys import (
    AUTO_JOB_ID_RE,
    check_entity_id,
    check_entity_type,
    decode_id,
    encode_id,
    in_bucket,
    job_key,
    job_waiters,
)

ENQUEUE_BATCH = 500
ENQUEUE_BATCH_BYTES = 1024 * 1024
"""Most jobs, and most bytes of their arguments, one enqueue script call of `enqueue_many`
adds: a script blocks Redis while it runs."""
Entity = tuple[str, str]


@dataclass(frozen=True)
class NewJob:
    """One job for `Client.enqueue_many`: the arguments of `Client.enqueue`."""

    entity_type: str
    entity_id: str
    name: str
    payload: Any = None
    job_id: str | None = None
    delay: float | None = None
    priority: int = 0
    attempts: int | None = None
    backoff: Backoff | dict[str, Any] | None = None
    keep_completed: float | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Prepared:
    """A checked job: the enqueue script's arguments for it, and where they go."""

    entity_type: str
    entity_id: str
    job_id: str
    bucket: str
    jslot: str
    channel: str
    args: tuple[str | int, ...]


@dataclass(frozen=True)
class Paused:
    """What is paused of an entity type (`Client.paused`)."""

    entity_type: bool
    """The whole type is paused."""
    entities: list[str]
    """Entities paused themselves (also while the type is)."""


@dataclass(frozen=True)
class JobLocation:
    bucket: str
    jslot: str
    entity_type: str


def _batches(jobs: list[Prepared]) -> Iterator[list[Prepared]]:
    """`jobs` cut into script calls of at most ENQUEUE_BATCH jobs and ENQUEUE_BATCH_BYTES."""
    batch: list[Prepared] = []
    size = 0
    for job in jobs:
        job_size = sum(len(str(a)) for a in job.args)
        if batch and (len(batch) == ENQUEUE_BATCH or size + job_size > ENQUEUE_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(job)
        size += job_size
    if batch:
        yield batch


class Client(BaseClient):
    """A producer's connection to one AtomicQueues deployment (one Redis, one key prefix)."""

    # --- enqueue and cancel ----------------------------------------------------------------
    async def enqueue(
        self,
        entity_type: str,
        entity_id: str,
        name: str,
        payload: Any = None,
        *,
        job_id: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        attempts: int | None = None,
        backoff: Backoff | dict[str, Any] | None = None,
        keep_completed: float | None = None,
        timeout: float | None = None,
    ) -> str:
        """Add a job to the entity's queue and return its id (one round trip).

        With `job_id`, enqueue is idempotent per entity: while a job with that id exists (until
        its retention passes), a second enqueue adds nothing and returns the same id.
        `timeout` is the job's time limit in seconds: past it the worker stops the handler and
        the attempt fails (default: the handler's limit, else the worker's `AQ_JOB_TIMEOUT`).
        """
        job = self.prepare(
            NewJob(
                entity_type,
                entity_id,
                name,
                payload,
                job_id=job_id,
                delay=delay,
                priority=priority,
                attempts=attempts,
                backoff=backoff,
                keep_completed=keep_completed,
                timeout=timeout,
            )
        )
        await self.remember_type(entity_type)
        try:
            added, _ = await self.script(
                "enqueue", job.bucket, job.channel, *job.args, durable=True
            )
        except RedisOutOfMemory:
            # The script's first write (the job) was refused, also for a job already there:
            # a producer that enqueues it again gets its answer, not a refusal.
            if await self.call(lambda: self.redis.hexists(job_key(job.bucket, job.jslot), "d")):
                return job.job_id
            raise
        except NotReplicated as exc:
            raise NotReplicated(
                f"job {job.job_id!r} of {entity_type}/{entity_id!r}",
                exc.acked,
                exc.wanted,
                exc.reply,
                hint=" (enqueue it again with the same job_id to be sure: that is idempotent)",
            ) from None
        if added == 2:
            metrics.ENQUEUE_REFUSED.labels(entity_type).inc()
            raise BacklogFull([(entity_type, entity_id, job.job_id)])
        return job.job_id

    async def enqueue_many(self, jobs: Iterable[NewJob]) -> list[str]:
        """Add many jobs in as few round trips as possible; returns their ids, in order.

        Every job is checked before anything is sent (one bad job: `InvalidInput`, nothing
        added). Jobs are grouped by bucket, a script call adds up to `ENQUEUE_BATCH` jobs of one
        bucket, and the calls go in one pipeline (one round trip per Redis node). Each job is
        idempotent on its `job_id` as with `enqueue`; jobs of one entity keep their order.
        When Redis's memory is full, a batch refused adds nothing, but batches before it stay:
        enqueue the same jobs again with their job ids to be sure.
        """
        prepared = [self.prepare(job) for job in jobs]
        for entity_type in {job.entity_type for job in prepared}:
            await self.remember_type(entity_type)
        by_bucket: dict[str, list[Prepared]] = {}
        for job in prepared:
            by_bucket.setdefault(job.bucket, []).append(job)
        batches = [batch for group in by_bucket.values() for batch in _batches(group)]
        calls = [(b[0].bucket, b[0].channel, [a for job in b for a in job.args]) for b in batches]
        try:
            if self.settings.durable_replicas > 0:
                replies = [
                    await self.script("enqueue", bucket, channel, *args, durable=True)
                    for bucket, channel, args in calls
                ]
            else:
                replies = await self.call(lambda: self.scripts.run_many("enqueue", calls))
        except RedisOutOfMemory as exc:
            raise RedisOutOfMemory(
                exc.where,
                written="some of the jobs may have been added (those of the batches sent before "
                "memory ran out): enqueue them again with their job ids to be sure",
            ) from None
        refused = [
            (job.entity_type, job.entity_id, job.job_id)
            for batch, reply in zip(batches, replies, strict=True)
            for job, added in zip(batch, reply[::2], strict=True)
            if added == 2
        ]
        if refused:
            for entity_type, _, _ in refused:
                metrics.ENQUEUE_REFUSED.labels(entity_type).inc()
            raise BacklogFull(refused, len(prepared) - len(refused))
        return [job.job_id for job in prepared]

    def prepare(self, job: NewJob) -> Prepared:
        """Check one job as `enqueue` does and turn it into the enqueue script's arguments;
        `InvalidInput` (or `PayloadTooLarge`) when it is not valid. Nothing is sent."""
        check_entity_type(job.entity_type)
        check_entity_id(job.entity_id)
        name, priority, delay = job.name, job.priority, job.delay
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InvalidInput("job name must be a non-empty string of at most 200 characters")
        if not is_integer(priority) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidInput(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
        if delay is not None and not is_seconds(delay):
            raise InvalidInput("delay must be a finite number of seconds, not negative")
        max_attempts = self.settings.max_attempts if job.attempts is None else job.attempts
        if not is_integer(max_attempts) or max_attempts < 1:
            raise InvalidInput("attempts must be an integer of at least 1")
        if job.keep_completed is not None and not is_seconds(job.keep_completed):
            raise InvalidInput("keep_completed must be a finite number of seconds, not negative")
        if job.timeout is not None and (not is_seconds(job.timeout) or job.timeout == 0):
            raise InvalidInput("timeout must be a finite, positive number of seconds")
        backoff = job.backoff
        if isinstance(backoff, dict):
            try:
                backoff = Backoff.model_validate(backoff)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'backoff'}: {e['msg']}" for e in exc.errors()
                )
                raise InvalidInput(f"invalid backoff: {problems}") from None
        body = encode_payload(job.payload, self.settings.max_payload_bytes)
        job_id = job.job_id
        if job_id is None:
            job_id = self.keys.new_job_id(job.entity_type, job.entity_id)
        elif not isinstance(job_id, str) or not job_id or len(job_id) > 512:
            raise InvalidInput("job id must be a non-empty string of at most 512 characters")
        elif AUTO_JOB_ID_RE.fullmatch(job_id):
            # Also with a bucket out of range: job_slot() would not scope such an id to its entity.
            raise InvalidInput(f"job id {job_id!r} has the reserved form TYPE.BUCKET.HEX32")
        keep = self.settings.keep_completed if job.keep_completed is None else job.keep_completed
        head = job_header(
            job_id,
            job.entity_id,
            name,
            priority,
            max_attempts,
            backoff or DEFAULT_BACKOFF,
            round(keep * 1000),
            self.settings.keep_completed_count,
            round(self.settings.keep_failed * 1000),
            job.timeout,
            trace=tracing.carrier() if self.settings.tracing else None,
        )
        jslot = self.keys.job_slot(job.entity_type, job.entity_id, job_id)
        args = (
            encode_id(job.entity_id),
            jslot,
            priority,
            round((delay or 0) * 1000),
            head,
            body,
        )
        return Prepared(
            job.entity_type,
            job.entity_id,
            job_id,
            self.keys.entity_bucket(job.entity_type, job.entity_id),
            jslot,
            self.keys.events(job.entity_type),
            args,
        )

    async def cancel(
        self, job_id: str, *, entity: Entity | None = None, why: str = "cancelled on request"
    ) -> bool:
        """Cancel a job. One that has not started (waiting, delayed, waiting for a retry)
        leaves its queue at once. A running one is asked to stop: the worker running it cancels
        its handler and the job ends `cancelled`, never retried, and its entity goes on with
        its next job (`result()` raises `JobCancelled`). False when the job has ended already
        or does not exist."""
        where = self._locate(job_id, entity)
        done, state = await self.script(
            "cancel", where.bucket, where.jslot, self.keys.events(where.entity_type), why
        )
        if state == "cancelling":  # the worker's next heartbeat hears of it too
            message = json.dumps({"cancel": job_id, "entity_type": where.entity_type})
            with suppress(RedisUnavailable):
                await self.call(lambda: self.redis.publish(self.keys.close_channel(), message))
        return bool(done)

    # --- jobs and results -----------------------------------------------------------------
    def _locate(self, job_id: str, entity: Entity | None) -> JobLocation:
        if entity is not None:
            entity_type, entity_id = entity
            check_entity_type(entity_type)
            check_entity_id(entity_id)
            return JobLocation(
                self.keys.entity_bucket(entity_type, entity_id),
                self.keys.job_slot(entity_type, entity_id, job_id),
                entity_type,
            )
        auto = self.keys.locate_auto_job(job_id)
        if auto is None:
            raise InvalidInput(
                f"job id {job_id!r} was given by the caller: ids like it are unique per entity, "
                "so pass the entity too"
            )
        bucket, jslot = auto
        return JobLocation(bucket, jslot, job_id.split(".", 1)[0])

    async def job(self, job_id: str, *, entity: Entity | None = None) -> Job:
        """The job's current record; `JobNotFound` when it does not exist (any more)."""
        where = self._locate(job_id, entity)
        fields = await self.hgetall(job_key(where.bucket, where.jslot))
        if not fields:
            raise JobNotFound(job_id)
        return Job.from_fields(where.entity_type, fields)

    async def result(
        self, job_id: str, *, timeout: float | None = None, entity: Entity | None = None
    ) -> Any:
        """Wait until the job has ended and return its result (what a query returned).

        Raises `JobFailed` when it was dead-lettered (`JobCancelled` when it was cancelled),
        `JobNotFound` when there is no such job, and `TimeoutError` when `timeout` seconds pass
        first. Blocks on Redis, no polling.
        """
        where = self._locate(job_id, entity)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            state, result, error = await self.script("watch_job", where.bucket, where.jslot)
            if state == "":
                raise JobNotFound(job_id)
            if state == "completed":
                return json.loads(result) if result else None
            if state == "dead":
                raise JobFailed(job_id, error)
            if state == "cancelled":
                raise JobCancelled(job_id, error)
            wait = 5.0 if deadline is None else deadline - loop.time()
            if wait <= 0:
                raise TimeoutError(f"job {job_id!r} has not ended after {timeout}s")
            await self.blpop([job_waiters(where.bucket, where.jslot)], min(wait, 5.0))

    # --- pause and resume ----------------------------------------------------------------------
    async def pause(self, entity_type: str, entity_id: str | None = None) -> int:
        """Start no more jobs of the entity, or (without `entity_id`) of every entity of the
        type, until `resume`. Enqueue goes on; running jobs finish; a worker bound to a paused
        entity exits when idle, and no pool starts one for it. Returns how many entities
        (with a summary in Redis) this paused; pausing what is paused changes nothing."""
        return await self._pause("pause", entity_type, entity_id)

    async def resume(self, entity_type: str, entity_id: str | None = None) -> int:
        """Undo `pause` of the entity, or of the type (an entity paused itself stays so)."""
        return await self._pause("resume", entity_type, entity_id)

    async def _pause(self, action: str, entity_type: str, entity_id: str | None) -> int:
        check_entity_type(entity_type)
        channel = self.keys.events(entity_type)
        if entity_id is not None:
            check_entity_id(entity_id)
            bucket = self.keys.entity_bucket(entity_type, entity_id)
            changed: int = await self.script("pause", bucket, action, encode_id(entity_id), channel)
            return changed
        await self.remember_type(entity_type)
        calls = [(b, action, ["", channel]) for b in self.keys.buckets(entity_type)]
        replies = await self.call(lambda: self.scripts.run_many("pause", calls))
        return sum(int(n) for n in replies)

    async def paused(self, entity_type: str) -> Paused:
        """Whether the type is paused, and the entities paused themselves."""
        check_entity_type(entity_type)
        pipe = self.redis.pipeline(transaction=False)
        for bucket in self.keys.buckets(entity_type):
            pipe.hexists(in_bucket(bucket, "defaults"), "p")
            pipe.hgetall(in_bucket(bucket, "paused"))
        replies: list[Any] = await self.call(pipe.execute)
        held = [bool(n) for n in replies[::2]]
        entities = sorted(
            decode_id(str(e)) for part in replies[1::2] for e, p in part.items() if int(p) % 2
        )
        return Paused(all(held), entities)
