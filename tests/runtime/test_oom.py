"""Redis out of memory (maxmemory reached, policy noeviction), and eviction policies.

Why: a full Redis must cost producers a clear, retryable error and nothing half-written, while
the jobs already in Redis go on: a running job keeps its lease and its outcome is recorded, and
workers claim new work again once memory is free, without a restart. A policy that evicts keys
could silently drop jobs, leases and locks, so workers and `aq status` warn of it.

These tests run on a redis-server of their own (its memory limit is changed; never a server of
yours from AQ_TEST_REDIS_URL). "Full" is `maxmemory 1`: any data is over the limit, so a write
that needs memory is refused every time; one test fills memory with jobs instead. Run them on
another Redis version by pointing AQ_REDIS_SERVER at its binary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atomicqueues import (
    Client,
    Locks,
    RedisOutOfMemory,
    RedisUnavailable,
    Registry,
    Settings,
    SyncClient,
    Worker,
)
from atomicqueues.cli import main
from atomicqueues.dead_letters import DeadLetters
from atomicqueues.index_reads import IndexReads
from atomicqueues.jobs import Job
from atomicqueues.keys import Keys, encode_id, job_key
from atomicqueues.leases import Leases, Started
from atomicqueues.memory import eviction_warning
from helpers import wait_until
from redis_servers import RedisCluster, RedisServer
from runtime.workers import TTL, Workers

T = "acct"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def set_memory(redis_url: str, maxmemory: int, policy: str = "noeviction") -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.config_set("maxmemory-policy", policy)
        r.config_set("maxmemory", maxmemory)


def fill(redis_url: str) -> None:
    """Memory full from now on: every write that needs memory is refused."""
    set_memory(redis_url, 1)


def free(redis_url: str) -> None:
    set_memory(redis_url, 0)


@pytest.fixture
def redis_url(server: RedisServer) -> Iterator[str]:
    """This module's own server, emptied, its memory limit lifted (tests/runtime/conftest.py's
    `client` and `workers` use it too)."""
    free(server.url)
    with server.client() as r:
        r.flushall()
    yield server.url
    free(server.url)


def snapshot(redis_url: str) -> dict[str, Any]:
    """Every key with its serialized value and whether it has a TTL."""
    with redis.Redis.from_url(redis_url) as r:
        return {key: (r.dump(key), r.pttl(key) > 0) for key in r.scan_iter(count=1000)}


def job_state(redis_url: str, job_id: str) -> str | None:
    bucket, jslot = Keys("aq").locate_auto_job(job_id) or ("", "")
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        fields: dict[str, str] = r.hgetall(job_key(bucket, jslot))  # type: ignore[assignment]
        return Job.from_fields("acct", fields).state if fields else None


# --- enqueue is refused, whole ---------------------------------------------------------------
async def test_filling_memory_ends_in_one_refused_enqueue_and_nothing_half(
    client: Client, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_url) as r:
        set_memory(redis_url, int(r.info("memory")["used_memory"]) + 1_000_000)
    accepted, refused = 0, None
    for n in range(10_000):  # 10 KB each: about 100 fit
        try:
            await client.enqueue(T, f"e{n % 7}", "work", {"pad": "x" * 10_000}, job_id=f"j{n}")
        except RedisOutOfMemory as exc:
            refused = exc
            break
        accepted += 1
    assert refused is not None
    assert accepted > 0
    message = str(refused)
    assert "\n" not in message
    assert "out of memory" in message
    assert "maxmemory" in message
    assert isinstance(refused, RedisUnavailable)  # retryable, as an outage is
    counts = await IndexReads(client).counts(T)
    assert counts["waiting"] == accepted
    assert sum((await IndexReads(client).pending_entities(T)).values()) == accepted
    refused_id = f"j{accepted}"
    with redis.Redis.from_url(redis_url) as r:
        slot = Keys("aq").job_slot(T, f"e{accepted % 7}", refused_id)
        assert not r.exists(job_key(Keys("aq").entity_bucket(T, f"e{accepted % 7}"), slot))


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("new-type", id="first enqueue of a type"),
        pytest.param("queued", id="entity with a waiting job"),
        pytest.param("due-delayed", id="entity with a due delayed job"),
        pytest.param("delayed", id="a delayed job"),
    ],
)
async def test_enqueue_when_full_is_refused_and_writes_nothing(
    client: Client, redis_url: str, case: str
) -> None:
    if case != "new-type":
        delay = 0.05 if case == "due-delayed" else None
        await client.enqueue(T, "e1", "work", {"n": 0}, delay=delay)
        await asyncio.sleep(0.1)  # the delayed job falls due; only an enqueue or a sweep moves it
    before = snapshot(redis_url)
    fill(redis_url)
    with pytest.raises(RedisOutOfMemory):
        await client.enqueue(T, "e1", "work", {"n": 1}, delay=5.0 if case == "delayed" else None)
    assert snapshot(redis_url) == before


async def test_enqueue_of_an_existing_job_id_answers_when_full(
    client: Client, redis_url: str
) -> None:
    job_id = await client.enqueue(T, "e1", "work", job_id="order-7")
    before = snapshot(redis_url)
    fill(redis_url)
    assert await client.enqueue(T, "e1", "work", job_id="order-7") == job_id
    assert snapshot(redis_url) == before


def test_sync_client_enqueue_when_full(redis_url: str) -> None:
    fill(redis_url)
    sync = SyncClient(Settings(redis_url=redis_url))
    try:
        with pytest.raises(RedisOutOfMemory, match="out of memory"):
            sync.enqueue(T, "e1", "work", {"n": 1})
    finally:
        sync.close()
    free(redis_url)
    assert snapshot(redis_url) == {}


def test_aq_enqueue_when_full_prints_one_line(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(redis_url)
    code = main(["--redis-url", redis_url, "enqueue", T, "e1", "work", "--payload", '{"n": 1}'])
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("aq: Redis at ")
    assert "out of memory" in err
    free(redis_url)
    assert snapshot(redis_url) == {}


# --- what is already in Redis moves on ---------------------------------------------------------
async def test_work_already_in_redis_moves_on_when_full(client: Client, redis_url: str) -> None:
    """Claim, finish (and start the next job), renew, release, sweep, cancel, dead letters,
    results and resource locks all run over the limit; only new work is refused."""
    ids = [await client.enqueue(T, "e1", "work", {"n": n}) for n in range(4)]
    await client.enqueue(T, "e2", "work")
    leases = Leases(client, "w1")
    locks = Locks(client)
    first = await leases.claim(T, "e1", None)
    assert isinstance(first, Started)
    bucket = client.keys.entity_bucket(T, "e1")
    expiry_key, member = f"{bucket}leases", f"w1|{encode_id('e1')}"
    fill(redis_url)
    with pytest.raises(RedisOutOfMemory):  # memory really is full for everything below
        await client.enqueue(T, "e3", "work")

    was = await client.redis.zscore(expiry_key, member)
    await asyncio.sleep(0.01)
    assert await leases.renew([first.lease]) == []
    assert await client.redis.zscore(expiry_key, member) > was  # type: ignore[operator]

    second = await leases.finish(first, "completed", '"done"')
    assert isinstance(second, Started)
    assert second.job.id == ids[1]
    assert await client.result(ids[0], timeout=1) == "done"
    assert await leases.finish(second, "retry", "boom", retry_delay=60, claim_next="none") is None
    assert job_state(redis_url, ids[1]) == "retrying"
    assert await leases.release(second.lease, "shutdown") == "released"

    other = await leases.claim(T, "e2", None)  # a new lease, over the limit too
    assert isinstance(other, Started)
    assert await leases.finish(other, "dead", "no", claim_next="none") is None
    assert await DeadLetters(client).purge(T, "e2") == 1
    assert await client.cancel(ids[3])
    lock = (await locks.acquire("modem", "m1", "w1", "proc", 5)).lock
    assert lock is not None
    await locks.extend(lock, 5)
    await locks.release(lock)

    free(redis_url)
    assert (await IndexReads(client).counts(T))["completed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "packed", [pytest.param(False, id="entity-bound"), pytest.param(True, id="packed")]
)
async def test_running_job_finishes_when_full_and_worker_goes_on_after(
    client: Client, redis_url: str, tmp_path: Path, packed: bool
) -> None:
    pool = Workers(redis_url, tmp_path, entity_type=T)
    try:
        worker = pool.start(slots=2) if packed else pool.start("e1")
        gate = tmp_path / "gate"
        running = await client.enqueue(T, "e1", "wait_for_file", {"path": str(gate)})
        queued = await client.enqueue(T, "e1", "wait_for_file", {"path": str(gate)})
        wait_until(lambda: job_state(redis_url, running) == "active", 30, "the first job to start")
        bucket = client.keys.entity_bucket(T, "e1")
        expiry_key, member = f"{bucket}leases", f"{worker.name}|{encode_id('e1')}"
        expiry = await client.redis.zscore(expiry_key, member)
        assert expiry is not None

        fill(redis_url)
        with pytest.raises(RedisOutOfMemory):
            await client.enqueue(T, "e1", "wait_for_file", {"path": str(gate)})

        async def renewed_for(seconds: float) -> bool:
            now = await client.redis.zscore(expiry_key, member)
            return now is not None and now > expiry + seconds * 1000

        # Several lease lifetimes pass on renewals made over the limit; a lost lease would
        # cancel the job and end this wait.
        for _ in range(600):
            if await renewed_for(4 * TTL) or job_state(redis_url, running) != "active":
                break
            await asyncio.sleep(0.05)
        assert await renewed_for(4 * TTL), pool.logs()
        assert job_state(redis_url, running) == "active"

        gate.touch()
        for job_id in (running, queued):  # the queued job starts and ends over the limit too
            assert await client.result(job_id, timeout=30) == {
                "pid": worker.pid,
                "worker": worker.name,
            }, pool.logs()
        assert pool.job("e1", running).attempt == 1  # one attempt: the lease was never lost
        assert "lost its lease" not in worker.output()

        free(redis_url)
        later = await client.enqueue(T, "e1", "wait_for_file", {"path": str(gate)})
        assert await client.result(later, timeout=30) == {
            "pid": worker.pid,
            "worker": worker.name,
        }, pool.logs()
        assert worker.alive()
        assert (await IndexReads(client).counts(T))["completed"] == 3
    finally:
        pool.close()


# --- eviction policies -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "warned"),
    [
        pytest.param("allkeys-lru", True, id="allkeys-lru"),
        pytest.param("allkeys-random", True, id="allkeys-random"),
        pytest.param("volatile-ttl", True, id="volatile-ttl"),
        pytest.param("volatile-lfu", True, id="volatile-lfu"),
        pytest.param("noeviction", False, id="noeviction"),
    ],
)
async def test_eviction_warning(client: Client, redis_url: str, policy: str, warned: bool) -> None:
    set_memory(redis_url, 0, policy)
    warning = await eviction_warning(client.redis)
    if not warned:
        assert warning is None
        return
    assert warning is not None
    assert "\n" not in warning
    assert f"maxmemory-policy {policy}" in warning
    assert warning.endswith("set maxmemory-policy noeviction")


async def test_eviction_warning_on_cluster_names_the_node(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    node = redis_cluster.nodes[1]
    with node.client() as r:
        r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        c = await Client.connect(Settings(redis_url=cluster_url))
        try:
            warning = await eviction_warning(c.redis)
        finally:
            await c.close()
    finally:
        with node.client() as r:
            r.config_set("maxmemory-policy", "noeviction")
    assert warning is not None
    assert f"on 127.0.0.1:{node.port} has maxmemory-policy allkeys-lru" in warning


async def test_no_warning_when_config_is_not_permitted(server: RedisServer, redis_url: str) -> None:
    set_memory(redis_url, 0, "allkeys-lru")
    with server.client() as r:
        r.execute_command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", "-config")
    limited = redis_url.replace("redis://", "redis://limited:pw@")
    c = await Client.connect(Settings(redis_url=limited))
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await c.redis.config_get("maxmemory-policy")
        assert await eviction_warning(c.redis) is None
    finally:
        await c.close()
        with server.client() as r:
            r.acl_deluser("limited")


def test_aq_status_warns_of_eviction_in_one_line(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    set_memory(redis_url, 100_000_000, "volatile-lru")
    assert main(["--redis-url", redis_url, "status"]) == 0
    out, err = capsys.readouterr()
    assert "workers: 0" in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aq: warning: ")
    assert "volatile-lru" in lines[0]
    assert "noeviction" in lines[0]

    set_memory(redis_url, 100_000_000, "noeviction")
    assert main(["--redis-url", redis_url, "status"]) == 0
    assert capsys.readouterr().err == ""


async def test_worker_warns_of_eviction_at_start(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    set_memory(redis_url, 0, "allkeys-lfu")
    settings = Settings(
        redis_url=redis_url, heartbeat_ttl=0.6, heartbeat_interval=0.2, idle_timeout=0.2
    )
    c = await Client.connect(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="atomicqueues.worker"):
            assert await asyncio.wait_for(Worker(c, Registry(), T, entity_id="e1").run(), 30)
    finally:
        await c.close()
    warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "allkeys-lfu" in warnings[0]
    assert "noeviction" in warnings[0]
