"""The runtime on a real 3-master Redis Cluster.

Every script touches one hash slot: a script that reached a key of another slot would fail on
the cluster ("non local key"), so running every operation here is the proof. The index is read
across all buckets, which are spread over the three masters.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from redis.asyncio.cluster import RedisCluster

from atomicqueues import Client, JobContext, Registry, Settings, Worker
from atomicqueues.controls import Controls
from atomicqueues.dead_letters import DeadLetters
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import BUCKETS, bucket_of
from atomicqueues.leases import Leases, Started, sweep
from atomicqueues.presence import Presence, WorkerInfo

pytestmark = pytest.mark.cluster

ENTITIES = [f"tenant-{i}" for i in range(40)] + ["a:b{c}", "üñí 😀", "x" * 1000]


async def connect(url: str, **overrides: float) -> Client:
    client = await Client.connect(Settings(redis_url=url, **overrides))  # type: ignore[arg-type]
    assert isinstance(client.redis, RedisCluster)
    return client


async def test_buckets_spread_over_every_master(cluster_url: str) -> None:
    client = await connect(cluster_url)
    try:
        nodes = set()
        for b in range(BUCKETS):
            key = client.keys.bucket("user", b) + "pending"
            nodes.add(client.redis.get_node_from_key(key).name)
        assert len(nodes) == 3
        assert len({bucket_of("user", e) for e in ENTITIES}) > BUCKETS // 2
    finally:
        await client.close()


async def test_every_operation_runs_on_the_cluster(cluster_url: str) -> None:
    client = await connect(cluster_url)
    try:
        ids = {
            e: [await client.enqueue("user", e, "send", {"n": n}) for n in range(3)]
            for e in ENTITIES
        }
        assert await IndexReads(client).pending_entities("user") == dict.fromkeys(ENTITIES, 3)
        assert (await IndexReads(client).counts("user"))["waiting"] == 3 * len(ENTITIES)
        leases = Leases(client, "w1")
        for e in ENTITIES:
            started = await leases.claim("user", e, None)
            assert isinstance(started, Started)
            assert started.job.id == ids[e][0]
            nxt = await leases.finish(started, "completed", '"ok"')
            assert nxt is not None
            assert nxt.job.id == ids[e][1]
            await leases.finish(nxt, "dead", "boom", claim_next="none")
            assert await leases.renew([nxt.lease]) == []
            assert await leases.release(nxt.lease, "idle") == "busy"
        assert await client.result(ids[ENTITIES[0]][0], timeout=5) == "ok"
        assert len(await DeadLetters(client).list("user")) == len(ENTITIES)
        assert await DeadLetters(client).requeue("user") == len(ENTITIES)
        assert await client.cancel(ids[ENTITIES[1]][2])
        await Controls(client).set_concurrency("user", ENTITIES[2], 2)
        assert await Controls(client).concurrency("user", ENTITIES[2]) == 2
        assert await sweep(client, "user") == (0, 0)
    finally:
        await client.close()


async def test_expired_lease_recovered_on_cluster(cluster_url: str) -> None:
    client = await connect(cluster_url, heartbeat_ttl=0.3, heartbeat_interval=0.1)
    try:
        job_id = await client.enqueue("user", "a:b{c}", "send", {})
        started = await Leases(client, "paused").claim("user", "a:b{c}", None)
        assert isinstance(started, Started)
        await asyncio.sleep(0.4)
        assert await sweep(client, "user") == (1, 0)
        job = await client.job(job_id)
        assert (job.state, job.attempt) == ("waiting", 1)
        again = await Leases(client, "other").claim("user", "a:b{c}", None)
        assert isinstance(again, Started)
        assert again.lease.fencing_token > started.lease.fencing_token
    finally:
        await client.close()


async def test_packed_worker_drains_entities_in_order_on_cluster(cluster_url: str) -> None:
    client = await connect(cluster_url)
    seen: dict[str, list[int]] = defaultdict(list)
    registry = Registry()

    @registry.command("send")
    async def send(ctx: JobContext, payload: dict[str, int]) -> None:
        seen[ctx.entity_id].append(payload["n"])

    try:
        worker = Worker(client, registry, "user", slots=4)
        runner = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)  # the worker is now idle, waiting for the work event
        for n in range(5):
            for e in ENTITIES:
                await client.enqueue("user", e, "send", {"n": n})
        async with asyncio.timeout(30):
            while (await IndexReads(client).counts("user"))["completed"] < 5 * len(ENTITIES):
                await asyncio.sleep(0.05)
        worker.close("test done")
        await runner
        assert dict(seen) == {e: [0, 1, 2, 3, 4] for e in ENTITIES}
        assert await IndexReads(client).entities_with_work("user") == {}
    finally:
        await client.close()


async def test_worker_records_of_every_slot_are_read_together(cluster_url: str) -> None:
    # Worker records are not hash-tagged: their keys spread over the masters, and one pipeline
    # (split by node) reads them all.
    client = await connect(cluster_url)
    try:
        presence = Presence(client)
        names = sorted(f"w-{i}" for i in range(12))
        assert len({client.redis.get_node_from_key(client.keys.worker(n)).name for n in names}) > 1
        for n in names:
            info = WorkerInfo(n, "user", f"e-{n}", 1, "node-a", 1, 0.0, [])
            await presence.beat(info, ttl=30)
        assert sorted(w.name for w in await presence.all_workers()) == names
        assert sorted(w.name for w in await presence.node_workers("node-a")) == names
        [only] = await presence.entity_workers("user", "e-w-3")
        assert only.name == "w-3"
        await presence.leave(WorkerInfo("w-0", "user", "e-w-0", 1, "node-a", 1, 0.0, []))
        left = sorted(w.name for w in await presence.all_workers())
        assert left == [n for n in names if n != "w-0"]
    finally:
        await client.close()
