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

Paused entities are not counted: pausing does not exist yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from ..client import Client, EntityIndex

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

_SERIES = (JOBS_WAITING, OLDEST_WAITING, ENTITIES_WITH_WORK, DEAD_LETTERS)


@dataclass(frozen=True)
class Health:
    jobs_waiting: int
    oldest_waiting_seconds: float
    entities_with_work: int
    dead_letters: int


async def observe(
    client: Client, entity_type: str, entities: Sequence[EntityIndex], now: float
) -> Health:
    """The pool's health from `entities` (the index a pass read, `Client.work_index`) and one
    pipeline of constant size; `now` is epoch seconds."""
    pipe = client.redis.pipeline(transaction=False)
    for bucket in client.keys.buckets(entity_type):
        pipe.zrange(f"{bucket}ready", 0, 0, withscores=True)
        pipe.zrange(f"{bucket}delayed", 0, 0, withscores=True)
        pipe.hget(f"{bucket}counts", "dead")
    replies: list[Any] = await client.call(pipe.execute)
    since = now * 1000.0
    dead = 0
    for i in range(0, len(replies), 3):
        ready, delayed, dead_count = replies[i : i + 3]
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
    )


def publish(namespace: str, pool: str, health: Health) -> None:
    JOBS_WAITING.labels(namespace, pool).set(health.jobs_waiting)
    OLDEST_WAITING.labels(namespace, pool).set(health.oldest_waiting_seconds)
    ENTITIES_WITH_WORK.labels(namespace, pool).set(health.entities_with_work)
    DEAD_LETTERS.labels(namespace, pool).set(health.dead_letters)


def forget(namespace: str, pool: str) -> None:
    """Drop the series of a pool no longer served."""
    for gauge in _SERIES:
        with contextlib.suppress(KeyError):  # never published
            gauge.remove(namespace, pool)
