"""Resource locks on a real 3-master Redis Cluster.

Every lock script touches the keys of one resource type only, which share one hash tag: a
script that reached another slot would fail here ("non local key"), so running each operation
on the cluster is the proof. Several types are used so that their slots land on different
masters, and the pools include ids that would break a hash tag if they were not encoded.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster

from atomicqueues import Client, JobContext, LockNotOwned, Locks, Registry, Settings, Worker
from atomicqueues.lock_types import Spread

pytestmark = pytest.mark.cluster

TYPES = [f"res{i}" for i in range(6)]
POOL = ["a:b{c}", "{x}", "üñí 😀", "plain"]


@pytest.fixture
def client_settings(cluster_url: str) -> Settings:
    return Settings(
        redis_url=cluster_url, heartbeat_ttl=0.6, heartbeat_interval=0.2, idle_timeout=0.5
    )


async def test_lock_types_spread_over_masters(client: Client) -> None:
    assert isinstance(client.redis, RedisCluster)
    nodes = {client.redis.get_node_from_key(client.keys.lock_held(t)).name for t in TYPES}
    assert len(nodes) > 1
    for t in TYPES:
        slots = {
            client.redis.keyslot(k)
            for k in (
                client.keys.lock(t, POOL[0]),
                client.keys.lock_held(t),
                client.keys.lock_used(t),
            )
        }
        assert len(slots) == 1


@pytest.mark.parametrize("spread", ["first", "random", "lru"])
async def test_every_lock_operation_on_the_cluster(client: Client, spread: Spread) -> None:
    locks = Locks(client)
    for t in TYPES:
        lock = (await locks.acquire(t, "a:b{c}", "alice", "proc", 5.0)).lock
        assert lock is not None
        assert not (await locks.acquire(t, "a:b{c}", "bob", "proc", 5.0)).acquired
        await locks.extend(lock, 10.0)
        taken = []
        for _ in range(len(POOL) - 1):
            result = await locks.acquire_any(t, POOL, "bob", "proc", 5.0, spread)
            assert result.lock is not None
            taken.append(result.lock.resource_id)
        assert sorted(taken) == sorted(POOL[1:])
        full = await locks.acquire_any(t, POOL, "carol", "proc", 5.0, spread)
        assert {h.resource_id for h in full.holders} == set(POOL)
        await locks.release(lock)
        with pytest.raises(LockNotOwned):
            await locks.release(lock)
        released = await locks.force_release(t, "{x}")
        assert released is not None
        assert released.owner_id == "bob"
    held = await locks.held()
    assert {(x.resource_type, x.resource_id) for x in held} == {
        (t, r) for t in TYPES for r in POOL if r not in ("a:b{c}", "{x}")
    }
    assert await locks.types() == TYPES


async def test_hold_and_job_locks_on_the_cluster(client: Client) -> None:
    locks = Locks(client)
    async with locks.hold_any("res0", POOL, "a", "proc", 0.3) as lock:
        await asyncio.sleep(0.5)  # renewed meanwhile
        assert [x.token for x in await locks.held("res0")] == [lock.token]
    assert await locks.held("res0") == []

    registry = Registry()
    seen: list[str] = []

    @registry.command("use")
    async def use(ctx: JobContext, payload: None) -> None:
        got = await ctx.lock_any("res1", POOL)
        seen.append(got.resource_id)
        assert [x.owner_type for x in await locks.held("res1")] == ["job"]

    await client.enqueue("acct", "a:b{c}", "use", None)
    await asyncio.wait_for(Worker(client, registry, "acct", entity_id="a:b{c}").run(), 30)
    assert seen == [POOL[0]]
    assert await locks.held() == []
