"""Pause, limits and cancel on a real 3-master Redis Cluster: a type's settings go to every
bucket (on every master), each script stays in one hash slot, and the shared rate's permits
live in a key of their own."""

from __future__ import annotations

import pytest

from atomicqueues import BacklogFull, Client, Settings
from atomicqueues.controls import Controls
from atomicqueues.index_reads import IndexReads
from atomicqueues.keys import BUCKETS
from atomicqueues.leases import Idle, Leases, Started
from runtime import recompute

pytestmark = pytest.mark.cluster

T = "acct"
ENTITIES = [f"tenant-{i}" for i in range(24)]


async def test_type_settings_reach_every_bucket_and_hold(cluster_url: str) -> None:
    client = await Client.connect(Settings(redis_url=cluster_url))
    leases = Leases(client, "w1")
    try:
        for e in ENTITIES:
            await client.enqueue(T, e, "x")
        assert len({client.keys.entity_bucket(T, e) for e in ENTITIES}) > BUCKETS // 3

        assert await client.pause(T) == len(ENTITIES)
        assert (await client.paused(T)).entity_type is True
        for e in ENTITIES:
            assert isinstance(await leases.claim(T, e, None), Idle)
        assert await IndexReads(client).work_index(T) == []
        await client.resume(T)

        await Controls(client).set_limits(T, max_backlog=1, rate=(1, 60))
        with pytest.raises(BacklogFull):
            await client.enqueue(T, ENTITIES[0], "x")
        run = await leases.claim(T, ENTITIES[0], None)
        assert isinstance(run, Started)
        assert await client.cancel(run.job.id) is True  # running: asked to stop
        await client.enqueue(T, ENTITIES[0], "x")  # room again: its job started
        assert await leases.finish(run, "retry", "stopped") is None  # held by its rate limit
        assert (await client.job(run.job.id)).state == "cancelled"
        await recompute.check_index(client, T)

        await Controls(client).set_limits(T, shared_rate=(2, 60))
        key = client.keys.permits(T)
        answers = [await client.script("permit", key, 2, 60_000) for _ in range(3)]
        assert answers[:2] == [0, 0]
        assert 0 < answers[2] <= 60_000
    finally:
        await client.close()
