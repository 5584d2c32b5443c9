"""Reads of a type's whole index: which entities have work, wait, could start; jobs per state.

What a scaler (`aq up`, the operator) and `aq status` read: `IndexReads.work_index` is what the
pools' reconciler plans from, `events` wakes them when an entity becomes claimable. The scripts
keep the index in the same calls that change the queues (lua/include/keys.lua documents its
keys), sharded by the buckets of a type; each read here takes one key of every bucket in one
pipeline. `queues.py` reads the same index page by page for people; this module reads it whole.
Like `Queues` and `Locks`, it wraps a client and never changes anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from .base_client import BaseClient
from .connection import pubsub_client
from .index import EntityIndex
from .jobs import STATES
from .keys import BucketKey, check_entity_type, decode_id, in_bucket


async def each_bucket(
    client: BaseClient, entity_type: str, name: BucketKey, scores: bool = False
) -> list[Any]:
    """One read of the same index key in every bucket of a type, in one pipeline (one round
    trip on a standalone server; one per node on Cluster) and on one connection."""
    check_entity_type(entity_type)
    pipe = client.redis.pipeline(transaction=False)
    for bucket in client.keys.buckets(entity_type):
        if scores:
            pipe.zrange(in_bucket(bucket, name), 0, -1, withscores=True)
        else:
            pipe.hgetall(in_bucket(bucket, name))
    replies: list[Any] = await client.call(pipe.execute)
    return replies


async def hash_index(client: BaseClient, entity_type: str, name: BucketKey) -> dict[str, int]:
    """A hash of the index (entity → a count) of every bucket of a type, as one dict."""
    parts = await each_bucket(client, entity_type, name)
    return {decode_id(str(e)): int(n) for part in parts for e, n in part.items()}


async def zset_index(client: BaseClient, entity_type: str, name: BucketKey) -> dict[str, float]:
    """A sorted set of the index (entity → epoch ms) of every bucket of a type, in seconds."""
    parts = await each_bucket(client, entity_type, name, scores=True)
    return {decode_id(str(e)): float(ms) / 1000.0 for part in parts for e, ms in part}


class IndexReads:
    """Reads of the index of entities with work, through one client."""

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.keys = client.keys

    async def pending_entities(self, entity_type: str) -> dict[str, int]:
        """Entities with jobs waiting to start, and how many each."""
        return await hash_index(self.client, entity_type, "pending")

    async def entities_with_work(self, entity_type: str) -> dict[str, float]:
        """Entities with jobs waiting or in flight, with when (epoch seconds) that began."""
        return await zset_index(self.client, entity_type, "work")

    async def claimable_entities(self, entity_type: str) -> dict[str, float]:
        """Entities with a job that could start now if a worker took a lease (scaler's view)."""
        return await zset_index(self.client, entity_type, "ready")

    async def work_index(self, entity_type: str) -> list[EntityIndex]:
        """Every entity with work that may start a job (a scaler starts no worker for one that
        is paused, or that its rate limit holds back), with what a scaler needs to know of it,
        in one pipeline."""
        check_entity_type(entity_type)
        pipe = self.client.redis.pipeline(transaction=False)
        for bucket in self.keys.buckets(entity_type):
            pipe.zrange(in_bucket(bucket, "work"), 0, -1, withscores=True)
            pipe.hgetall(in_bucket(bucket, "pending"))
            pipe.zrange(in_bucket(bucket, "ready"), 0, -1)
            pipe.hgetall(in_bucket(bucket, "conc"))
            pipe.hkeys(in_bucket(bucket, "paused"))
            pipe.zrange(in_bucket(bucket, "limited"), 0, -1)
        replies: list[Any] = await self.client.call(pipe.execute)
        found: list[EntityIndex] = []
        for i in range(0, len(replies), 6):
            work, pending, ready, conc, paused, limited = replies[i : i + 6]
            ready_set, held = set(ready), {*paused, *limited}
            for e, ms in work:
                if e in held:
                    continue
                found.append(
                    EntityIndex(
                        entity_id=decode_id(str(e)),
                        waiting=int(pending.get(e, 0)),
                        since=float(ms) / 1000.0,
                        concurrency=int(conc.get(e, 1)),
                        claimable=e in ready_set,
                    )
                )
        return sorted(found, key=lambda w: (w.since, w.entity_id))

    async def counts(self, entity_type: str) -> dict[str, int]:
        """Jobs per state across the type (`completed` counts every completion so far)."""
        check_entity_type(entity_type)
        pipe = self.client.redis.pipeline(transaction=False)
        for bucket in self.keys.buckets(entity_type):
            pipe.hgetall(in_bucket(bucket, "counts"))
            pipe.hvals(in_bucket(bucket, "pending"))
        replies: list[Any] = await self.client.call(pipe.execute)
        total: dict[str, int] = dict.fromkeys(STATES, 0)
        for counts, pending in zip(replies[::2], replies[1::2], strict=True):
            for state, n in counts.items():
                total[str(state)] = total.get(str(state), 0) + int(n)
            total["waiting"] += sum(int(n) for n in pending)
        return total

    async def entity_types(self) -> list[str]:
        """Entity types that ever had a job enqueued (or were paused or limited)."""
        return sorted(await self.client.smembers(self.keys.types()))

    async def events(self, entity_type: str) -> AsyncIterator[str]:
        """Entity ids as they become claimable (pub/sub; a missed message only delays)."""
        settings = self.client.settings
        redis = pubsub_client(settings.redis_url, settings.call_timeout)
        pubsub = redis.pubsub()
        try:
            await self.client.call(lambda: pubsub.subscribe(self.keys.events(entity_type)))
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield decode_id(str(message["data"]))
        finally:
            with suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.aclose()
