"""`Client.enqueue_many` on a real 3-master Redis Cluster.

Why: enqueue_many sends its script calls (one per bucket, up to ENQUEUE_BATCH jobs each) in one
pipeline, which on the cluster is split by node. Jobs of entities on every master, and more
than one batch of one bucket, must all land, each entity's in the order given.
"""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from atomicqueues import Client, NewJob, Settings
from atomicqueues.client import ENQUEUE_BATCH
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import BUCKETS, bucket_of

pytestmark = pytest.mark.cluster

T = "user"
ENTITIES = [f"tenant-{i}" for i in range(200)] + ["a:b{c}", "üñí 😀", "x" * 1000]


async def test_enqueue_many_over_every_master(cluster_url: str) -> None:
    client = await Client.connect(Settings(redis_url=cluster_url))
    try:
        assert isinstance(client.redis, RedisCluster)
        buckets = {bucket_of(T, e) for e in ENTITIES}
        assert buckets == set(range(BUCKETS))
        masters = set()
        for b in buckets:
            node = client.redis.get_node_from_key(client.keys.bucket(T, b) + "pending")
            assert node is not None
            masters.add(node.name)
        assert len(masters) == 3
        # Five jobs per entity, interleaved; then more than a batch of one entity's jobs.
        jobs = [NewJob(T, e, "send", {"n": n}, job_id=f"j{n}") for n in range(5) for e in ENTITIES]
        jobs += [NewJob(T, "big", "send", {"n": n}) for n in range(ENQUEUE_BATCH * 2 + 100)]
        ids = await client.enqueue_many(jobs)
        assert len(ids) == len(jobs)

        for e in ENTITIES:
            key = client.keys.entity(T, e) + "wait"
            expected = [client.keys.job_slot(T, e, f"j{n}") for n in range(5)]
            assert await client.zrange(key) == expected
            job = await client.job("j4", entity=(T, e))
            assert (job.state, job.entity_id, job.payload) == ("waiting", e, {"n": 4})
        big = ids[5 * len(ENTITIES) :]
        assert await client.zrange(client.keys.entity(T, "big") + "wait") == big
        assert (await client.job(big[-1])).payload == {"n": len(big) - 1}
        assert await IndexReads(client).pending_entities(T) == {
            **dict.fromkeys(ENTITIES, 5),
            "big": len(big),
        }

        # Idempotent on the cluster too: the same jobs again add nothing.
        assert await client.enqueue_many(jobs[: 5 * len(ENTITIES)]) == ids[: 5 * len(ENTITIES)]
        assert (await IndexReads(client).counts(T))["waiting"] == len(jobs)
    finally:
        await client.close()
