"""Redis Cluster failover: a master killed with kill -9 under load until its replica takes over.

Why: on Cluster each master's replica takes over its slots after the node timeout (2 s here).
Workers and producers must go on through it without restarts (the cluster client reads the
slot map again), and the same things must hold as with Sentinel: runs of an entity never
overlap, fencing tokens never go down, jobs start in order; with `durable_replicas` (WAIT on
the node that owns the bucket) no acknowledged enqueue is lost. Figures are printed (-s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from atomicqueues import Client, Settings
from failover.conftest import make_fleet
from failover.load import Producer, load_runs, settle
from helpers import eventually
from redis_servers import RedisCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

FAILOVER = 60.0


@pytest.fixture
def cluster_with_replicas() -> Iterator[RedisCluster]:
    """3 masters with a replica each (a cluster of its own: this test kills one of them)."""
    with RedisCluster(replicas=1) as cluster:
        yield cluster


@pytest.mark.parametrize("wait", [False, True], ids=["async-replication", "wait-1-replica"])
async def test_workers_go_on_when_a_master_is_killed_and_its_replica_takes_over(
    cluster_with_replicas: RedisCluster,
    store: redis.Redis,
    tmp_path: Path,
    redis_url: str,
    wait: bool,
) -> None:
    cluster = cluster_with_replicas
    durable = {"durable_replicas": 1, "durable_timeout": 0.3} if wait else {}
    settings = Settings(
        redis_url=cluster.url,
        heartbeat_ttl=2.0,
        heartbeat_interval=0.5,
        **durable,  # type: ignore[arg-type]
    )
    client = await Client.connect(settings)
    fleet = make_fleet(cluster.url, redis_url, tmp_path, **durable)
    producer = Producer(client, [f"e{i}" for i in range(12)])
    stop = asyncio.Event()
    producing = asyncio.ensure_future(producer.run(stop))
    try:
        workers = [fleet.start(slots=6), fleet.start(slots=6)]

        def ended() -> int:
            return sum(1 for run in load_runs(store) if run.how == "end")

        await eventually(lambda: ended() >= 20, FAILOVER, "jobs to run before the failover")
        await eventually(fleet.all_running, FAILOVER, "every worker to start")
        # Not the URL's node: a client (re)connecting starts from it.
        old = cluster.kill_master(1)
        await asyncio.to_thread(cluster.wait_takeover, old)
        if wait:  # the new master needs a replica of its own to confirm writes
            await asyncio.to_thread(cluster.rejoin, old)
        mark = ended()
        await eventually(lambda: ended() >= mark + 30, FAILOVER, "jobs to run after the failover")
        stop.set()
        await producing
        await settle("Cluster", client, producer, fleet, workers, store, wait, FAILOVER * 2)
    finally:
        stop.set()
        await producing
        fleet.close()
        await client.close()
