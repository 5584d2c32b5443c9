"""Reads for people: the index page by page, a search by entity id, and one entity's queue.

Why a module of its own: `aq dashboard` (and anyone who looks at a deployment by hand) needs
views that stay cheap with many entities. `IndexReads.work_index` reads the whole index of a type
(what a scaler needs); these reads never do. A page of entities takes one pipeline of ranged
reads over the type's buckets (at most `limit` entries from each), a search scans the buckets
with ZSCAN MATCH (Redis filters, only matches travel), and one entity's queue is two pipelines,
whatever the size of the index. Like `Presence` and `Locks`, it wraps a `Client` and reads the
keys the scripts write (lua/include/keys.lua documents them); it never changes anything.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from typing import Any

from .base_client import BaseClient
from .controls import controls
from .jobs import Job
from .keys import (
    BUCKETS,
    check_entity_id,
    check_entity_type,
    decode_id,
    encode_id,
    in_bucket,
    job_key,
    of_entity,
)
from .summary import numbers

MAX_PAGE = 500
"""The most entities or jobs one read returns."""
SCAN_COUNT = 1000
"""How many index entries one ZSCAN step of a search looks at (a hint to Redis)."""
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class TypeSummary:
    """How big a type's index is, counted without reading it (ZCARD and HLEN per bucket)."""

    with_work: int
    """Entities with jobs waiting or in flight."""
    claimable: int
    """Entities with a job that could start now if a worker took a lease."""
    waiting_entities: int
    """Entities with jobs waiting to start."""
    dead_entities: int
    """Entities with dead-lettered jobs."""
    paused_entities: int = 0
    """Entities paused (themselves or by their type) that have a summary in Redis."""
    paused: bool = False
    """The whole type is paused."""


@dataclass(frozen=True)
class EntityRow:
    """One entity with work, as a page of the index shows it."""

    entity_id: str
    since: float
    """When it began to have work (epoch seconds, Redis clock)."""
    waiting: int
    concurrency: int
    claimable: bool
    dead: int


@dataclass(frozen=True)
class EntityPage:
    rows: list[EntityRow]
    total: int
    """Entities with work in the whole type."""
    start: int
    """How many entities come before this page (its first row is number start + 1)."""
    next_cursor: str | None
    """Give it to `entities_page` for the next page; None on the last page."""


@dataclass(frozen=True)
class ActiveJob:
    """A job running under a lease: who runs it and with which fencing token."""

    job: Job
    worker: str
    token: int
    lease_expires: float
    """Epoch seconds (Redis clock); the holder's heartbeat moves it on."""


@dataclass(frozen=True)
class EntityQueue:
    """One entity's jobs by state (at most `limit` of each) and its summary."""

    entity_type: str
    entity_id: str
    concurrency: int
    counts: dict[str, int]
    """Jobs per state in the entity (completed: those still kept)."""
    holders: list[tuple[str, int, float]]
    """Lease holders: worker, fencing token, lease expiry (epoch seconds)."""
    active: list[ActiveJob]
    waiting: list[Job]
    """In the order they will start."""
    delayed: list[Job]
    retrying: list[Job]
    completed: list[Job]
    """Most recent first."""
    dead: list[Job]
    """Oldest first."""
    due: dict[str, float] = field(default_factory=dict)
    """When each delayed or retrying job may start (epoch seconds), by job id."""
    paused: str = ""
    """Why it starts no job: "" (it may), "paused", "paused with its type", or both."""

    @property
    def exists(self) -> bool:
        return bool(sum(self.counts.values()) or self.holders)


def _cursor(text: str | None) -> list[int]:
    """Offsets into each bucket's index, from an `EntityPage.next_cursor` (invalid: start)."""
    if text:
        parts = text.split(".")
        if len(parts) == BUCKETS and all(p.isdigit() and len(p) < 10 for p in parts):
            return [int(p) for p in parts]
    return [0] * BUCKETS


def _glob(text: str) -> str:
    """A ZSCAN MATCH pattern for index entries that contain `text` (as encoded in keys)."""
    escaped = _GLOB_SPECIAL.sub(r"\\\1", encode_id(text))
    return f"*{escaped}*"


PAUSED_BY = ("", "paused", "paused with its type", "paused, and with its type")
"""What the `p` of an entity's summary means (lua/include/entity.lua)."""


class Queues:
    """Read-only views of the index and of entity queues under one client."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.keys = client.keys
        self.redis = client.redis

    async def summary(self, entity_type: str) -> TypeSummary:
        check_entity_type(entity_type)
        pipe = self.redis.pipeline(transaction=False)
        for bucket in self.keys.buckets(entity_type):
            pipe.zcard(in_bucket(bucket, "work"))
            pipe.zcard(in_bucket(bucket, "ready"))
            pipe.hlen(in_bucket(bucket, "pending"))
            pipe.hlen(in_bucket(bucket, "dead"))
            pipe.hlen(in_bucket(bucket, "paused"))
            pipe.hexists(in_bucket(bucket, "defaults"), "p")
        replies: list[int] = await self.client.call(pipe.execute)
        with_work, claimable, waiting, dead, paused = (sum(replies[i::6]) for i in range(5))
        return TypeSummary(with_work, claimable, waiting, dead, paused, all(replies[5::6]))

    async def entities_page(
        self, entity_type: str, cursor: str | None = None, limit: int = 50
    ) -> EntityPage:
        """Entities with work, the oldest first (the order they are served in), `limit` at a
        time. The cursor holds an offset per bucket: a page reads at most `limit` entries of
        each bucket and merges them. Entities that gain or lose work between two pages can
        shift the next page by as many places (it is a live index)."""
        check_entity_type(entity_type)
        limit = max(1, min(limit, MAX_PAGE))
        offsets = _cursor(cursor)
        buckets = self.keys.buckets(entity_type)
        pipe = self.redis.pipeline(transaction=False)
        for bucket, offset in zip(buckets, offsets, strict=True):
            pipe.zcard(in_bucket(bucket, "work"))
            pipe.zrange(in_bucket(bucket, "work"), offset, offset + limit - 1, withscores=True)
        replies: list[Any] = await self.client.call(pipe.execute)
        sizes: list[int] = replies[0::2]
        ranges: list[list[tuple[str, float]]] = replies[1::2]
        merged = heapq.merge(
            *([(score, b, str(member)) for member, score in part] for b, part in enumerate(ranges))
        )
        taken = [entry for _, entry in zip(range(limit), merged, strict=False)]
        after = list(offsets)
        for _, b, _ in taken:
            after[b] += 1
        more = any(a < n for a, n in zip(after, sizes, strict=True))
        rows = await self._rows(entity_type, [(b, e, score) for score, b, e in taken])
        return EntityPage(
            rows=rows,
            total=sum(sizes),
            start=sum(min(o, n) for o, n in zip(offsets, sizes, strict=True)),
            next_cursor=".".join(map(str, after)) if more else None,
        )

    async def search(self, entity_type: str, text: str, limit: int = 50) -> list[EntityRow]:
        """Entities with work whose id contains `text` (case-sensitive), the exact id first.
        Redis filters each bucket's index (ZSCAN MATCH); the scan stops at `limit` matches."""
        check_entity_type(entity_type)
        limit = max(1, min(limit, MAX_PAGE))
        if not text:
            return []
        buckets = self.keys.buckets(entity_type)
        pattern = _glob(text)
        found: dict[str, tuple[int, float]] = {}
        cursors = dict.fromkeys(range(len(buckets)), 0)
        while cursors and len(found) < limit:
            pipe = self.redis.pipeline(transaction=False)
            for b, cursor in cursors.items():
                pipe.zscan(in_bucket(buckets[b], "work"), cursor, match=pattern, count=SCAN_COUNT)
            replies: list[Any] = await self.client.call(pipe.execute)
            for b, (cursor, entries) in zip(list(cursors), replies, strict=True):
                for member, score in entries:
                    found.setdefault(str(member), (b, score))
                if int(cursor) == 0:
                    del cursors[b]
                else:
                    cursors[b] = int(cursor)
        exact = encode_id(text)
        ordered = sorted(found.items(), key=lambda kv: (kv[0] != exact, kv[1][1], kv[0]))
        rows = [(b, e, score) for e, (b, score) in ordered[:limit]]
        return await self._rows(entity_type, rows)

    async def _rows(
        self, entity_type: str, entries: list[tuple[int, str, float]]
    ) -> list[EntityRow]:
        """The index's facts about each (bucket, encoded id, since ms), in one pipeline."""
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for b, e, _ in entries:
            bucket = self.keys.bucket(entity_type, b)
            pipe.hget(in_bucket(bucket, "pending"), e)
            pipe.hget(in_bucket(bucket, "conc"), e)
            pipe.zscore(in_bucket(bucket, "ready"), e)
            pipe.hget(in_bucket(bucket, "dead"), e)
        replies: list[Any] = await self.client.call(pipe.execute)
        return [
            EntityRow(
                entity_id=decode_id(e),
                since=float(ms) / 1000.0,
                waiting=int(replies[4 * i] or 0),
                concurrency=int(replies[4 * i + 1] or 1),
                claimable=replies[4 * i + 2] is not None,
                dead=int(replies[4 * i + 3] or 0),
            )
            for i, (_, e, ms) in enumerate(entries)
        ]

    async def entity(self, entity_type: str, entity_id: str, limit: int = 50) -> EntityQueue:
        """One entity's queue: its summary, its leases with their running jobs, and at most
        `limit` jobs of each state (two pipelines)."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        limit = max(1, min(limit, MAX_PAGE))
        base = self.keys.entity(entity_type, entity_id)
        bucket = self.keys.entity_bucket(entity_type, entity_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(of_entity(base, "meta"))
        pipe.zcard(of_entity(base, "done"))
        pipe.zrange(of_entity(base, "wait"), 0, limit - 1)
        pipe.zrange(of_entity(base, "delayed"), 0, limit - 1, withscores=True)
        pipe.zrange(of_entity(base, "retry"), 0, limit - 1, withscores=True)
        pipe.zrevrange(of_entity(base, "done"), 0, limit - 1)
        pipe.zrange(of_entity(base, "dlq"), 0, limit - 1)
        pipe.zcard(of_entity(base, "delayed"))
        replies: list[Any] = await self.client.call(pipe.execute)
        meta: dict[str, str] = {str(k): str(v) for k, v in replies[0].items()}
        summary = numbers(meta)
        kept, waiting, delayed, retrying, done, dead, n_delayed = replies[1:]
        leases = []
        for name, value in meta.items():
            if name.startswith("l:"):
                token, exp, *running = value.split(" ", 3)
                leases.append((name[2:], int(token), float(exp) / 1000.0, running[1:]))
        due = {str(j): float(ms) / 1000.0 for j, ms in [*delayed, *retrying]}
        slots = [
            *(jslot for _, _, _, running in leases for jslot in running),
            *waiting,
            *due,
            *done,
            *dead,
        ]
        jobs = await self._jobs(entity_type, bucket, [str(s) for s in slots])

        def pick(jslots: list[Any]) -> list[Job]:
            return [jobs[str(s)] for s in jslots if str(s) in jobs]

        return EntityQueue(
            entity_type=entity_type,
            entity_id=entity_id,
            concurrency=summary["c"],
            counts={
                "waiting": summary["w"],
                "delayed": int(n_delayed),
                "active": summary["a"],
                "retrying": summary["r"],
                "completed": int(kept),
                "dead": summary["x"],
            },
            holders=[(owner, token, exp) for owner, token, exp, _ in leases],
            active=[
                ActiveJob(jobs[jslot], owner, token, exp)
                for owner, token, exp, running in leases
                for jslot in running
                if jslot in jobs
            ],
            waiting=pick(waiting),
            delayed=pick([j for j, _ in delayed]),
            retrying=pick([j for j, _ in retrying]),
            completed=pick(done),
            dead=pick(dead),
            due={jobs[s].id: t for s, t in due.items() if s in jobs},
            paused=PAUSED_BY[int(controls(meta)[0]) % 4],
        )

    async def dead_letters(self, entity_type: str, limit: int = 20) -> list[Job]:
        """Some dead-lettered jobs of the type (at most `limit`, oldest first per entity), found
        by scanning the dead index bucket by bucket until enough entities are seen: unlike
        `DeadLetters.list` without an entity, never the whole index of a type whose every entity
        has dead letters."""
        check_entity_type(entity_type)
        limit = max(1, min(limit, MAX_PAGE))
        entity_ids: list[str] = []
        for bucket in self.keys.buckets(entity_type):
            cursor = 0
            while len(entity_ids) < limit:
                cursor, found = await self._hscan(in_bucket(bucket, "dead"), cursor, limit)
                entity_ids += [decode_id(str(e)) for e in found]
                if cursor == 0:
                    break
        entity_ids = entity_ids[:limit]
        if not entity_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.zrange(of_entity(self.keys.entity(entity_type, entity_id), "dlq"), 0, limit - 1)
        slots: list[list[Any]] = await self.client.call(pipe.execute)
        wanted = [
            (self.keys.entity_bucket(entity_type, entity_id), str(jslot))
            for entity_id, part in zip(entity_ids, slots, strict=True)
            for jslot in part
        ][:limit]
        pipe = self.redis.pipeline(transaction=False)
        for bucket, jslot in wanted:
            pipe.hgetall(job_key(bucket, jslot))
        replies: list[dict[Any, Any]] = await self.client.call(pipe.execute)
        return [
            Job.from_fields(entity_type, {str(k): str(v) for k, v in fields.items()})
            for fields in replies
            if fields
        ]

    async def _hscan(self, key: str, cursor: int, count: int) -> tuple[int, list[Any]]:
        """One HSCAN step: the next cursor (0: done) and the fields seen."""
        found: tuple[Any, Any] = await self.client.call(
            lambda: self.redis.hscan(key, cursor, count=count)
        )
        return int(found[0]), list(found[1])

    async def _jobs(self, entity_type: str, bucket: str, jslots: list[str]) -> dict[str, Job]:
        """The records of jobs by slot, read in one pipeline (those gone meanwhile left out)."""
        if not jslots:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for jslot in jslots:
            pipe.hgetall(job_key(bucket, jslot))
        replies: list[dict[Any, Any]] = await self.client.call(pipe.execute)
        return {
            jslot: Job.from_fields(entity_type, {str(k): str(v) for k, v in fields.items()})
            for jslot, fields in zip(jslots, replies, strict=True)
            if fields
        }
