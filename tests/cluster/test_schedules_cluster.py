"""Scheduled jobs on a real 3-master Redis Cluster: every schedule script touches one hash slot
(the bucket of the entity its jobs go to), so firing schedules whose entities live on every
master works, and the compare-and-set holds there too."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio.cluster import RedisCluster

from atomicqueues import Client, Settings
from atomicqueues.keys import schedule_key
from atomicqueues.schedules import Schedules, Ticker, job_id

pytestmark = pytest.mark.cluster

T = "report"
ENTITIES = [f"tenant-{i}" for i in range(12)] + ["a:b{c}", "üñí 😀"]


async def test_schedules_fire_once_on_every_master(cluster_url: str) -> None:
    client = await Client.connect(Settings(redis_url=cluster_url))
    assert isinstance(client.redis, RedisCluster)
    try:
        nodes = {
            client.redis.get_node_from_key(client.keys.entity_bucket(T, e) + "sched").name
            for e in ENTITIES
        }
        assert len(nodes) == 3
        for i, entity in enumerate(ENTITIES):
            await Schedules(client).add(T, f"s{i}", "ping", {"i": i}, entity_id=entity, every=0.2)
        await Schedules(client).add(T, "nightly", "build", cron="0 3 * * *", tz="Asia/Tokyo")
        await asyncio.sleep(0.3)
        # Two tickers race on the same ticks: each fires its share, none a tick twice.
        first, second = Ticker(client, T), Ticker(client, T)
        await asyncio.gather(first.tick(), second.tick())
        for i, entity in enumerate(ENTITIES):
            wait = await client.zrange(f"{client.keys.entity(T, entity)}wait")
            assert len(wait) == 1, (entity, wait)
            job = await client.job(wait[0].split(":", 1)[1], entity=(T, entity))
            assert (job.name, job.payload) == ("ping", {"i": i})
            assert job.id.startswith(f"s{i}@")
        listed = {s.name: s for s in await Schedules(client).list(T)}
        assert len(listed) == len(ENTITIES) + 1
        assert all(listed[f"s{i}"].fired == 1 for i in range(len(ENTITIES)))
        assert listed["nightly"].fired == 0
        # A read of a tick that has fired fires nothing, on any master.
        bucket = client.keys.entity_bucket(T, ENTITIES[0])
        last = listed["s0"].last_at
        assert last is not None
        sid, text = await client.redis.hmget(schedule_key(bucket, "s0"), "sid", "def")
        args = first._fire_args("s0", sid, round(last * 1000), text, int(time.time() * 1000))
        assert await client.cancel(job_id("s0", round(last * 1000)), entity=(T, ENTITIES[0]))
        again = await client.script("schedule_fire", bucket, client.keys.events(T), *args)
        assert again[1:] == []
        for i in range(len(ENTITIES)):
            assert await Schedules(client).remove(T, f"s{i}")
        assert [s.name for s in await Schedules(client).list(T)] == ["nightly"]
    finally:
        await client.close()
