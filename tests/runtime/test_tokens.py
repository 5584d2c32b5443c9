"""Fencing tokens never repeat: not across grants, not across a Redis restart with AOF.

A crash can lose the last second of AOF writes (appendfsync everysec), including the counter a
token came from; the server-clock floor in the grant keeps the next token above every token
handed out before the crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from atomicqueues import Client, Settings
from atomicqueues.keys import of_entity
from atomicqueues.leases import Leases, Started, sweep
from redis_servers import RedisServer


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


SHORT = Settings(heartbeat_ttl=0.4, heartbeat_interval=0.1)


async def grant(url: str, owner: str) -> int:
    """Enqueue a job, take a lease (a new grant), run the entity dry; the lease's token."""
    client = await Client.connect(replace(SHORT, redis_url=url))
    try:
        await client.enqueue("user", "alice", "send", {})
        leases = Leases(client, owner)
        started = await leases.claim("user", "alice", None)
        assert isinstance(started, Started)
        run: Started | None = started
        while run is not None:
            run = await leases.finish(run, "completed", "null")
        assert await leases.release(started.lease, "idle") == "released"
        return started.lease.fencing_token
    finally:
        await client.close()


async def recover_after_crash(url: str) -> None:
    """A crash can lose the last second of AOF writes, and with them the end of the last
    grant: its lease comes back from the file. Let it expire and sweep it, as a live worker
    or `aq up` would."""
    await asyncio.sleep(SHORT.heartbeat_ttl + 0.1)
    client = await Client.connect(replace(SHORT, redis_url=url))
    try:
        await sweep(client, "user")
    finally:
        await client.close()


@pytest.mark.parametrize(
    "crash",
    [
        pytest.param(False, id="graceful-restart"),
        pytest.param(True, id="sigkill-restart"),
    ],
)
async def test_tokens_grow_across_restart(aof_server: RedisServer, crash: bool) -> None:
    tokens = [await grant(aof_server.url, f"w{i}") for i in range(5)]
    assert tokens == sorted(set(tokens))
    if crash:
        aof_server.kill()
        aof_server.start()
        await recover_after_crash(aof_server.url)
    else:
        aof_server.restart()
    after = [await grant(aof_server.url, f"v{i}") for i in range(5)]
    assert after == sorted(set(after))
    assert after[0] > tokens[-1]


async def test_tokens_grow_when_the_counter_is_lost(redis_url: str) -> None:
    """What a crash that lost the counter's last writes looks like: the counter is gone."""
    first = await grant(redis_url, "w1")
    client = await Client.connect(Settings(redis_url=redis_url))
    try:
        meta = of_entity(client.keys.entity("user", "alice"), "meta")
        await client.redis.delete(meta)
    finally:
        await client.close()
    assert await grant(redis_url, "w2") > first
