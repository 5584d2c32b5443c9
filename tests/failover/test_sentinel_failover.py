"""Redis Sentinel failover: a primary killed with kill -9 while jobs run.

Why: with Sentinel, a crashed primary is replaced by its replica within seconds; workers and
producers must follow it without restarts, and what a failover can lose must be known, not
guessed. Replication is asynchronous: what the old primary acknowledged but had not yet sent to
the replica is gone after the failover. These tests measure that (printed: run with -s) and
check what must hold anyway: fencing tokens keep growing (the server-clock floor in
lua/include/lease.lua), no two runs of an entity overlap, jobs start in order, workers go on;
with `durable_replicas` (WAIT) no acknowledged enqueue is lost. Every wait is a poll with a
generous deadline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from atomicqueues import Client, JobNotFound, NotReplicated, RedisUnavailable, Settings, metrics
from atomicqueues.index_reads import IndexReads
from atomicqueues.leases import Leases, Started
from failover.conftest import make_fleet
from failover.load import (
    Producer,
    T,
    load_runs,
    settle,
)
from helpers import eventually
from redis_servers import SentinelGroup

pytestmark = pytest.mark.slow

FAILOVER = 60.0  # generous: a loaded 2-core machine may take long to elect and promote


async def settings_for(url: str, **extra: object) -> Settings:
    return Settings(redis_url=url, heartbeat_ttl=2.0, heartbeat_interval=0.5, **extra)  # type: ignore[arg-type]


async def until_served(client: Client, entity: str) -> str:
    """Enqueue (sent again until acknowledged) and return the job id: the new primary serves."""

    async def attempt() -> str | None:
        try:
            return await client.enqueue(T, entity, "record", {"seq": 0})
        except (RedisUnavailable, NotReplicated):
            return None

    job_id: str = await eventually(
        attempt, FAILOVER, "the new primary to take an enqueue", every=0.2
    )
    return job_id


async def test_what_the_primary_acknowledged_after_replication_stopped_is_lost_unless_waited_for(
    sentinel_group: SentinelGroup,
) -> None:
    group = sentinel_group
    plain = await Client.connect(await settings_for(group.url))
    durable = await Client.connect(
        await settings_for(group.url, durable_replicas=1, durable_timeout=0.2)
    )
    try:
        # Replicated: both kinds of enqueue are acknowledged and survive.
        before = [await plain.enqueue(T, "a", "record"), await durable.enqueue(T, "b", "record")]
        await plain.enqueue(T, "c", "record")
        leases = Leases(plain, "w1")
        first = await leases.claim(T, "c", None)
        assert isinstance(first, Started)
        await leases.release(first.lease, "shutdown")  # the job goes back to the queue
        await plain.enqueue(T, "f", "record")
        w3 = Leases(durable, "w3")
        unfinished = await w3.claim(T, "f", None)
        assert isinstance(unfinished, Started)
        # Acknowledged after WAIT: it and every write before it are on the replica.
        before.append(await durable.enqueue(T, "b", "record"))

        group.cut_replication()
        # Acknowledged by the primary alone: without WAIT, that is all the caller is told.
        unreplicated = [await plain.enqueue(T, "a", "record") for _ in range(5)]
        # With WAIT the caller learns that the enqueue may not survive.
        for _ in range(3):
            with pytest.raises(NotReplicated, match="may or may not survive a failover"):
                await durable.enqueue(T, "b", "record")
        # A durable finish that falls short still records the outcome on the primary (and
        # says so in the log and a metric): a failover now undoes it.
        shortfalls = metrics.OUTCOMES_NOT_REPLICATED.labels(T)._value.get()
        assert await w3.finish(unfinished, "completed", "null") is None
        assert metrics.OUTCOMES_NOT_REPLICATED.labels(T)._value.get() == shortfalls + 1
        # A lease granted now is lost in the failover too, yet tokens must keep growing.
        lost_grant = await leases.claim(T, "c", None)
        assert isinstance(lost_grant, Started)
        assert lost_grant.lease.fencing_token > first.lease.fencing_token

        old = group.kill_primary()
        await asyncio.to_thread(group.wait_failover, old)
        await until_served(plain, "d")

        for job_id in before:
            assert (await plain.job(job_id)).state == "waiting", job_id  # survived
        # The outcome the replica never got is gone: the job is still running as far as the
        # new primary knows (its lease expires and it runs again).
        assert (await plain.job(unfinished.job.id)).state == "active"
        missing = []
        for job_id in unreplicated:
            try:
                await plain.job(job_id)
            except JobNotFound:
                missing.append(job_id)
        print(f"\nreplication cut: {len(missing)} of {len(unreplicated)} acknowledged lost")
        assert missing == unreplicated, "acknowledged after the cut, so lost in the failover"

        # Fencing: the new primary grants a token above the one the old one gave and lost.
        after = await Leases(plain, "w2").claim(T, "c", None)
        assert isinstance(after, Started), "the job of c is back in its queue, not running"
        assert after.job.id == first.job.id
        assert after.lease.fencing_token > lost_grant.lease.fencing_token

        # Pub/sub through the Sentinel URL reaches the new primary.
        events = IndexReads(plain).events(T)
        listen = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.5)  # let the subscription reach the server
        await plain.enqueue(T, "e", "record")
        assert await asyncio.wait_for(listen, 30) == "e"
        await events.aclose()
    finally:
        await plain.close()
        await durable.close()


@pytest.mark.parametrize("wait", [False, True], ids=["async-replication", "wait-1-replica"])
async def test_workers_go_on_across_two_failovers_and_lose_only_what_is_measured(
    sentinel_group: SentinelGroup, store: redis.Redis, tmp_path: Path, redis_url: str, wait: bool
) -> None:
    group = sentinel_group
    durable = {"durable_replicas": 1, "durable_timeout": 0.3} if wait else {}
    client = await Client.connect(await settings_for(group.url, **durable))
    fleet = make_fleet(group.url, redis_url, tmp_path, **durable)
    producer = Producer(client, [f"e{i}" for i in range(8)])
    stop = asyncio.Event()
    producing = asyncio.ensure_future(producer.run(stop))
    try:
        workers = [fleet.start(slots=4), fleet.start(slots=4)]

        def ended() -> int:
            return sum(1 for run in load_runs(store) if run.how == "end")

        await eventually(lambda: ended() >= 20, FAILOVER, "jobs to run before the failover")
        await eventually(fleet.all_running, FAILOVER, "every worker to start")
        for _ in range(2):
            old = group.kill_primary()
            await asyncio.to_thread(group.wait_failover, old)
            await asyncio.to_thread(group.rejoin, old)  # a replica again, for the next one
            mark = ended()
            await eventually(lambda m=mark: ended() >= m + 20, FAILOVER, "jobs to run after it")
        stop.set()
        await producing
        await settle("Sentinel", client, producer, fleet, workers, store, wait, FAILOVER * 2)
    finally:
        stop.set()
        await producing
        fleet.close()
        await client.close()
