"""Is a pool healthy: its backlog as Prometheus gauges, per pool, never per entity.

Both pool backends (`aq up`'s `LocalPool`, the operator's `KubePool`) call `observe` once per
reconcile pass, with the index the pass has just read, and `publish` the result; a scrape reads
the gauges and never touches Redis. What the pass already holds gives the jobs waiting and the
entities with work. The rest costs one pipeline of three O(log N) reads per bucket, whatever the
number of entities:

- the oldest entry of the bucket's `ready` set: the entity that has had a job ready to start,
  with no lease holder to run it, for the longest time (its score is when that began);
- the earliest entry of the bucket's `delayed` set: a delayed job or a retry whose time has come
  but which no worker has yet moved back to the queue waits from its due time on;
- the bucket's count of dead letters.

So the *oldest waiting job* is measured from when a job could have started: a job queued
behind its own entity's running job is waiting for its turn, which per-entity order demands,
and the workers' `aq_job_wait_seconds` histogram covers that wait. The age says "work is ready
and nobody takes it" (no worker, a pool at its maximum, pods that do not start), which is what
an alert should wake someone for. The gauges are as old as the pool's last pass (at most its
resync interval).

Entities held back (paused, or waiting for their rate limit) are not in the index a pass reads
(`IndexReads.work_index`): they are counted apart, from the bucket's `paused` and `limited` index.

`announce` also keeps each pool's desired and ready workers in Redis (expiring unless the pool
announces again), for `aq dashboard` to show: `pools` reads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from ..client import Client
from ..index import EntityIndex
from ..keys import in_bucket

_POOL = ("namespace", "pool")

JOBS_WAITING = Gauge("aq_pool_jobs_waiting", "Jobs waiting to start", _POOL)
OLDEST_WAITING = Gauge(
    "aq_pool_oldest_waiting_seconds",
    "How long the job ready to start for the longest time has waited for a worker (0: none)",
    _POOL,
)
ENTITIES_WITH_WORK = Gauge(
    "aq_pool_entities_with_work", "Entities with jobs waiting or in flight", _POOL
)
DEAD_LETTERS = Gauge("aq_pool_dead_letters", "Jobs in the dead-letter lists", _POOL)
ENTITIES_PAUSED = Gauge(
    "aq_pool_entities_paused", "Entities paused, themselves or with their type", _POOL
)
ENTITIES_RATE_LIMITED = Gauge(
    "aq_pool_entities_rate_limited", "Entities whose rate limit holds their next job back", _POOL
)

_SERIES = (
    JOBS_WAITING,
    OLDEST_WAITING,
    ENTITIES_WITH_WORK,
    DEAD_LETTERS,
    ENTITIES_PAUSED,
    ENTITIES_RATE_LIMITED,
)


@dataclass(frozen=True)
class Health:
    jobs_waiting: int
    oldest_waiting_seconds: float
    entities_with_work: int
    dead_letters: int
    entities_paused: int = 0
    entities_rate_limited: int = 0


async def observe(
    client: Client, entity_type: str, entities: Sequence[EntityIndex], now: float
) -> Health:
    """The pool's health from `entities` (the index a pass read, `IndexReads.work_index`) and one
    pipeline of constant size; `now` is epoch seconds."""
    pipe = client.redis.pipeline(transaction=False)
    for bucket in client.keys.buckets(entity_type):
        pipe.zrange(in_bucket(bucket, "ready"), 0, 0, withscores=True)
        pipe.zrange(in_bucket(bucket, "delayed"), 0, 0, withscores=True)
        pipe.hget(in_bucket(bucket, "counts"), "dead")
        pipe.hlen(in_bucket(bucket, "paused"))
        pipe.zcard(in_bucket(bucket, "limited"))
    replies: list[Any] = await client.call(pipe.execute)
    since = now * 1000.0
    dead = paused = limited = 0
    for i in range(0, len(replies), 5):
        ready, delayed, dead_count, paused_count, limited_count = replies[i : i + 5]
        paused += int(paused_count)
        limited += int(limited_count)
        for _, ms in ready:
            since = min(since, float(ms))
        for _, ms in delayed:
            if float(ms) <= now * 1000.0:
                since = min(since, float(ms))
        dead += int(dead_count or 0)
    return Health(
        jobs_waiting=sum(e.waiting for e in entities),
        oldest_waiting_seconds=max(0.0, now - since / 1000.0),
        entities_with_work=len(entities),
        dead_letters=dead,
        entities_paused=paused,
        entities_rate_limited=limited,
    )


def publish(namespace: str, pool: str, health: Health) -> None:
    JOBS_WAITING.labels(namespace, pool).set(health.jobs_waiting)
    OLDEST_WAITING.labels(namespace, pool).set(health.oldest_waiting_seconds)
    ENTITIES_WITH_WORK.labels(namespace, pool).set(health.entities_with_work)
    DEAD_LETTERS.labels(namespace, pool).set(health.dead_letters)
    ENTITIES_PAUSED.labels(namespace, pool).set(health.entities_paused)
    ENTITIES_RATE_LIMITED.labels(namespace, pool).set(health.entities_rate_limited)


def forget(namespace: str, pool: str) -> None:
    """Drop the series of a pool no longer served."""
    for gauge in _SERIES:
        with contextlib.suppress(KeyError):  # never published
            gauge.remove(namespace, pool)


@dataclass(frozen=True)
class PoolInfo:
    """A pool as it last announced itself."""

    namespace: str
    name: str
    entity_type: str
    desired: int
    """Workers it wants."""
    ready: int
    """Workers of it running."""
    at: float
    """When it announced this (epoch seconds)."""


async def announce(client: Client, info: PoolInfo, resync_seconds: float) -> None:
    """Keep `info` in Redis for a few resync intervals (the pool announces again on every
    pass, and at least once a resync interval)."""
    key = client.keys.pool(info.namespace, info.name)
    until = round((info.at + max(15.0, 3 * resync_seconds)) * 1000)
    pipe = client.redis.pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "type": info.entity_type,
            "desired": info.desired,
            "ready": info.ready,
            "at": info.at,
        },
    )
    pipe.pexpireat(key, until)
    pipe.zadd(client.keys.pools(), {f"{info.namespace}/{info.name}": until})
    pipe.zremrangebyscore(client.keys.pools(), "-inf", round(info.at * 1000))  # gone pools
    await client.call(pipe.execute)


async def pools(client: Client, now: float) -> list[PoolInfo]:
    """The pools whose last announcement still holds, by namespace and name."""
    index = client.keys.pools()
    held = await client.call(lambda: client.redis.zrangebyscore(index, now * 1000, "+inf"))
    names = [str(n) for n in held]
    pipe = client.redis.pipeline(transaction=False)
    for full in names:
        pipe.hgetall(client.keys.pool(*full.split("/", 1)))
    found: list[PoolInfo] = []
    for full, f in zip(names, await client.call(pipe.execute), strict=True):
        if f:
            namespace, name = full.split("/", 1)
            found.append(
                PoolInfo(
                    namespace, name, f["type"], int(f["desired"]), int(f["ready"]), float(f["at"])
                )
            )
    return sorted(found, key=lambda p: (p.namespace, p.name))
